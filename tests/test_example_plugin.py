"""The example third-party plugin (examples/vaezoo-example-plugin), installed the way a user installs
one (`pip install -e`; .ci/run does it): found through its entry point, listed with its distribution,
its recipe trains, and switching it off with VAEZOO_DISABLE_PLUGINS hides it and makes its checkpoints
fail with a message naming the distribution to install."""

from __future__ import annotations

import json

import pytest
from conftest import Command, run_cli, run_cli_batch

import vaezoo

PLUGIN, DISTRIBUTION, RECIPE = "example", "vaezoo-example-plugin", "example-dcgan-cifar"

if not any(info.name == PLUGIN for info in vaezoo.get_registry().plugins):
    pytest.skip(
        f"{DISTRIBUTION} is not installed: pip install -e examples/vaezoo-example-plugin", allow_module_level=True
    )

DISABLED = {"VAEZOO_DISABLE_PLUGINS": PLUGIN}
ENABLED = {"VAEZOO_DISABLE_PLUGINS": ""}


def test_plugins_lists_it_with_distribution_and_version():
    result = run_cli("plugins", "--json", env=ENABLED)
    assert result.returncode == 0, result.stderr
    plugins = {row["name"]: row for row in json.loads(result.stdout)}
    row = plugins[PLUGIN]
    assert row["distribution"] == DISTRIBUTION and row["version"] == "0.1.0" and row["error"] is None
    assert row["encoders"] == ["dcgan"] and row["decoders"] == ["dcgan"] and row["models"] == ["laplace"]
    assert row["recipes"] == sorted([RECIPE, "example-laplace-cifar"])


def test_disabling_hides_it_from_list():
    shown = run_cli("list", "--json", env=ENABLED)
    hidden = run_cli("list", "--json", env=DISABLED)
    assert shown.returncode == 0 and hidden.returncode == 0, shown.stderr + hidden.stderr
    assert {(e["kind"], e["name"]) for e in json.loads(shown.stdout) if e["plugin"] == PLUGIN} == {
        ("encoder", "dcgan"),
        ("decoder", "dcgan"),
        ("model", "laplace"),
        ("recipe", RECIPE),
        ("recipe", "example-laplace-cifar"),
    }
    assert not [
        e for e in json.loads(hidden.stdout) if e["plugin"] == PLUGIN or e["name"] in ("dcgan", "laplace", RECIPE)
    ]
    assert "cifar-vae" in hidden.stdout  # the other plugins are still there


@pytest.fixture(scope="module")
def checkpoint(cifar, tmp_path_factory):
    """A tiny run of the example recipe (one epoch, 200 images, narrow layers)."""
    out = tmp_path_factory.mktemp("example") / "run"
    result = run_cli(
        "run",
        RECIPE,
        "--data-dir",
        str(cifar),
        "--epochs",
        "1",
        "--limit",
        "200",
        "--batch-size",
        "50",
        "--latent-dim",
        "4",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--set",
        "train.test_limit=100",
        "--set",
        "encoder.hidden=[8, 8, 8]",
        "--set",
        "decoder.hidden=[8, 8, 8]",
        env=ENABLED,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "model.safetensors"


def test_checkpoint_needs_the_plugin_and_names_its_distribution(checkpoint, tmp_path):
    refused, picture = tmp_path / "refused.png", tmp_path / "samples.png"
    disabled, enabled = run_cli_batch(  # one fresh process
        [
            Command("sample", str(checkpoint), "-n", "4", "--out", str(refused), env=DISABLED),
            Command("sample", str(checkpoint), "-n", "4", "--out", str(picture), env=ENABLED),  # re-enabled
        ],
        tmp_path,
    )
    assert disabled.returncode == 2, disabled.stderr
    message = disabled.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert "dcgan" in message and f"pip install {DISTRIBUTION}" in message
    assert not refused.exists()

    assert enabled.returncode == 0, enabled.stderr[-3000:]
    assert picture.stat().st_size > 0
