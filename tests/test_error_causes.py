"""Errors keep their causes: the one line quotes another error's first line (`vaezoo.errors.first_line`,
whatever its message), `--debug` shows the error it came from, and an exception raised inside a plugin's
code while a model file is rebuilt names that code, never the file."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import Command, run_cli_batch
from tinydata import error_lines

from vaezoo.errors import CheckpointError, error_line, first_line

DISTRIBUTION = "buggy-plugin"
# a model family that builds, and trains, until BUGGY_FAMILY is set: then its constructor reads an
# attribute it never set (a plugin's bug that vaezoo 0.3 reported as "the file is damaged")
BUGGY = """
    import os

    import vaezoo
    from vaezoo_defaults.vae.model import VAE


    class BuggyVAE(VAE):
        '''A classic VAE whose constructor fails when BUGGY_FAMILY is set.'''

        def __init__(self, *, encoder, decoder, prior, loss, in_shape, latent_dim):
            super().__init__(
                encoder=encoder, decoder=decoder, prior=prior, loss=loss, in_shape=in_shape, latent_dim=latent_dim
            )
            if os.environ.get("BUGGY_FAMILY"):
                self.settings_it_never_set.size


    @vaezoo.hookimpl
    def register_models(register):
        register("buggy-vae", BuggyVAE)
"""
RECIPE = """
latent_dim = 4
model = { name = "buggy-vae" }
dataset = { name = "cifar10" }
encoder = { name = "conv", hidden = [4, 8, 8] }
decoder = { name = "conv", hidden = [8, 8, 4] }
prior = { name = "normal" }
loss = { name = "bce-kl" }

[train]
limit = 64
test_limit = 32
epochs = 1
batch_size = 16
sample_count = 4
"""


def test_first_line_of_any_message() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert first_line(ValueError()) == "ValueError"  # an empty message (an IndexError in 0.3)
    assert first_line(ValueError(" \n\n  the reason \nmore")) == "the reason"
    assert first_line(Unprintable()) == "Unprintable"
    assert first_line("x" * 400) == "x" * 300 + "..."
    assert first_line("x" * 400, limit=None) == "x" * 400
    assert first_line("") == ""
    assert error_line(KeyError()) == "KeyError"
    assert error_line(OSError("disk full\ndetails")) == "OSError: disk full"


def test_a_state_file_that_fails_with_an_empty_message_is_one_line(
    small_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors failing with an exception of no message: one CheckpointError naming the file (0.3
    raised IndexError on the empty message), whose cause is that exception."""
    import vaezoo
    import vaezoo.files.train_state as train_state
    from vaezoo.trainer.settings import TrainSettings
    from vaezoo.trainer.step import make_optimizers

    model = vaezoo.load(small_run / "model.safetensors")
    optimizers = make_optimizers(model, TrainSettings.of(model.recipe))

    def no_message(data: bytes) -> dict[str, torch.Tensor]:
        raise RuntimeError()

    monkeypatch.setattr(train_state, "load_tensors", no_message)
    with pytest.raises(CheckpointError, match="truncated or corrupt: RuntimeError$") as raised:
        train_state.load_state(small_run / "state.safetensors", model, optimizers)
    assert isinstance(raised.value.__cause__, RuntimeError)


@pytest.fixture(scope="module")
def buggy(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model file of the buggy-plugin family, then the commands that load it with the bug switched
    on (and others with --debug), all in one process."""
    tmp = tmp_path_factory.mktemp("buggy")
    site = tmp / "site"
    info = site / "buggy_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {DISTRIBUTION}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[vaezoo]\nbuggy = buggy_plugin\n", encoding="utf-8")
    (site / "buggy_plugin.py").write_text(textwrap.dedent(BUGGY), encoding="utf-8")
    (tmp / "buggy.toml").write_text(RECIPE, encoding="utf-8")
    (tmp / "broken.toml").write_text("latent_dim = = 4\n", encoding="utf-8")
    model = tmp / "run" / "model.safetensors"
    bug = {"BUGGY_FAMILY": "1"}
    commands = {
        "train": ["run", str(tmp / "buggy.toml"), "--device", "cpu", "--out", str(tmp / "run")],
        "sample": Command("sample", str(model), "-n", "4", "--out", str(tmp / "s.png"), env=bug),
        "sample debug": Command("--debug", "sample", str(model), "-n", "4", "--out", str(tmp / "s.png"), env=bug),
        "not toml debug": ["--debug", "run", str(tmp / "broken.toml"), "--out", str(tmp / "no")],
    }
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    results = run_cli_batch(list(commands.values()), tmp, env={"PYTHONPATH": path, "VAEZOO_DATA_DIR": str(cifar)})
    return dict(zip(commands, results))


def test_a_plugins_bug_while_loading_names_the_plugin_not_the_file(buggy: dict) -> None:
    assert buggy["train"].returncode == 0, buggy["train"].stderr[-2000:]
    done = buggy["sample"]
    assert done.returncode == 1, done.stderr  # a bug, not the user's input
    (line,) = [line for line in error_lines(done.stderr) if not line.startswith("vaezoo: warning:")]
    assert "BuggyVAE.__init__ (buggy_plugin.py:" in line and f"of plugin distribution {DISTRIBUTION}" in line
    assert "AttributeError" in line and "settings_it_never_set" in line
    assert "damaged" not in line and "a bug in the plugin, not in the file" in line
    assert "Traceback" not in done.stderr


def test_debug_shows_the_error_a_line_came_from(buggy: dict) -> None:
    """--debug prints the whole chain: the plugin's AttributeError, then the error it became; a recipe
    file that is not TOML shows the TOML parser's error (both were raised `from None` in 0.3)."""
    plugin = buggy["sample debug"]
    assert plugin.returncode == 1
    assert "The above exception was the direct cause of the following exception" in plugin.stderr
    assert "self.settings_it_never_set.size" in plugin.stderr  # the plugin's own line of code
    assert "AttributeError" in plugin.stderr and "vaezoo.errors.PluginFailed" in plugin.stderr
    toml = buggy["not toml debug"]
    assert toml.returncode == 2
    assert "tomllib.TOMLDecodeError" in toml.stderr and "The above exception was the direct cause" in toml.stderr
    assert toml.stderr.rstrip().splitlines()[-1].startswith("vaezoo: error: ")  # the one line still ends it
