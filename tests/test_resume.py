"""Exact resume (after an epoch and in the middle of one), Ctrl-C / SIGTERM, and a loss that
becomes NaN."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli, run_cli_batch
from safetensors.torch import load_file
from tinydata import TINY_ARGS, error_lines, fit_tiny, tiny_cifar  # noqa: F401  (fixture)

import vaezoo.trainer.loop
from vaezoo.api import show_recipe
from vaezoo.errors import Interrupted, RecipeError, RunFailed

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it in the inner loop; .ci/run runs everything


def assert_same_weights(a, b):
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(left) == set(right)
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"weights differ: {different[:3]}"


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight(tiny_cifar, tmp_path_factory):
    """Two epochs in one go."""
    return fit_tiny(tiny_cifar, tmp_path_factory.mktemp("straight") / "run", epochs=2).out_dir


def test_one_epoch_then_resume_equals_two_epochs(tiny_cifar, straight, tmp_path):
    """Also proves that one seed gives one model: both runs draw their own initial weights."""
    out = tmp_path / "run"
    fit_tiny(tiny_cifar, out, epochs=1)
    first = metrics(out)
    fit_tiny(tiny_cifar, None, epochs=2, resume=out)
    assert_same_weights(straight, out)
    resumed, expected = metrics(out), metrics(straight)
    assert [m["epoch"] for m in resumed] == [1, 2] and resumed[0] == first[0]
    for key in ("step", "train_loss", "test_loss"):
        assert resumed[1][key] == expected[1][key]
    state, expected_state = load_file(out / "state.safetensors"), load_file(straight / "state.safetensors")
    assert all(torch.equal(state[k], expected_state[k]) for k in expected_state if not k.startswith("rng.")) and set(
        state
    ) == set(expected_state)


def interrupt_at(epoch: int, batch: int, signum: int = signal.SIGINT):
    """A callback that signals this process after `batch` batches of epoch `epoch` (1-based)."""

    class Interrupt(vaezoo.trainer.loop.Callback):
        def on_step(self, run, done, loss, images_per_s):
            if run.epoch + 1 == epoch and done == batch:
                os.kill(os.getpid(), signum)

    return Interrupt()


@pytest.mark.parametrize(("epoch", "batch"), [(2, 3)])
def test_resume_after_an_interrupt_in_the_middle_of_an_epoch(tiny_cifar, straight, tmp_path, monkeypatch, epoch, batch):
    monkeypatch.setattr(vaezoo.trainer.loop, "LOG_EVERY", 1)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match=rf"epoch {epoch} after {batch} batches; state saved in {out}") as stopped:
        fit_tiny(tiny_cifar, out, epochs=2, callbacks=[interrupt_at(epoch, batch)])
    assert (stopped.value.out_dir, stopped.value.recipe, stopped.value.epochs) == (
        out,
        "cifar-vae",
        2,
    )  # the CLI prints the resume command from these
    assert len(metrics(out)) == epoch - 1 if epoch > 1 else not (out / "metrics.jsonl").exists()
    fit_tiny(tiny_cifar, None, epochs=2, resume=out)
    assert_same_weights(straight, out)
    assert [m["epoch"] for m in metrics(out)] == [1, 2]
    assert metrics(out)[1]["train_loss"] == pytest.approx(metrics(straight)[1]["train_loss"], rel=1e-12)


# The CLI's progress callback sends SIGTERM to its own process after the second batch of epoch 1.
SIGTERM_AT_BATCH_2 = """
import os, signal
import vaezoo.trainer.loop
from vaezoo.trainer.progress import RichProgress

def on_step(self, run, done, loss, images_per_s):
    if run.epoch == 0 and done == 2:
        os.kill(os.getpid(), signal.SIGTERM)

vaezoo.trainer.loop.LOG_EVERY = 1
RichProgress.on_step = on_step
"""


def test_sigterm_saves_the_state_and_exits_130(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    run = ["run", "cifar-vae", "--data-dir", str(tiny_cifar), "--epochs", "2", "--device", "cpu", "--out", str(out)]
    (stopped,) = run_cli_batch([[*run, *TINY_ARGS]], tmp_path, prelude=SIGTERM_AT_BATCH_2, fork=True)
    err = stopped.stderr
    assert stopped.returncode == 130, err[-2000:]
    assert f"stopped by SIGTERM in epoch 1 after 2 batches; state saved in {out / 'state.safetensors'}" in err
    assert f"resume with: vaezoo run cifar-vae --resume {out} --epochs 2 --data-dir {tiny_cifar} --device cpu" in err
    assert "Traceback" not in err
    assert load_file(out / "state.safetensors")["rng.data"].dtype == torch.uint8


def test_ctrl_c_in_a_fresh_process_then_the_printed_command_finishes_the_run(tiny_cifar, tmp_path):
    out = tmp_path / "run"
    args = [
        "run",
        "cifar-vae",
        "--data-dir",
        str(tiny_cifar),
        "--epochs",
        "2",
        "--out",
        str(out),
        *TINY_ARGS,
        "--set",
        "train.batch_size=8",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "vaezoo", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "model.safetensors").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert process.poll() is None, process.communicate()[1]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "resume with:" in line)
    command = line.split("resume with: ", 1)[1].strip()
    assert command == shlex.join(
        ["vaezoo", "run", "cifar-vae", "--resume", str(out), "--epochs", "2", "--data-dir", str(tiny_cifar)]
    )
    state = load_file(out / "state.safetensors")
    assert {"rng.torch", "rng.data"} <= set(state) and any(k.startswith("optimizer.") for k in state)
    argv = shlex.split(command)
    finished = run_cli(*argv[1:], timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert [m["epoch"] for m in metrics(out)] == [1, 2]
    # and it is the run that was never interrupted
    fit_tiny(tiny_cifar, tmp_path / "straight", epochs=2, sets=["train.batch_size=8"])
    assert_same_weights(tmp_path / "straight", out)


def test_resume_of_a_finished_run_asks_for_more_epochs(tiny_cifar, straight, tmp_path):
    resume = ["--resume", str(straight), "--epochs", "2", "--data-dir", str(tiny_cifar), "--out", str(tmp_path / "c")]
    refused = run_cli("run", "cifar-vae", *resume)
    lines = error_lines(refused.stderr)
    assert refused.returncode == 2 and "already trained to epoch 2" in lines[-1]


def test_fit_resumes_a_recipe_file_given_as_a_path_as_one_given_as_a_string(tmp_path):
    run, recipe = tmp_path / "run", tmp_path / "mine.toml"
    run.mkdir()
    (run / "recipe.toml").write_text(show_recipe("cifar-vae"))
    recipe.write_text(show_recipe("cifar-vae"))
    for given in (str(recipe), recipe):  # a Path was read as a table: TypeError, not iterable
        with pytest.raises(RecipeError, match="is a run of recipe 'cifar-vae', not"):
            vaezoo.fit(given, resume=run, device="cpu")


# The reconstruction term of the bce-kl loss is NaN from the first step on.
NAN_LOSS = """
from vaezoo_defaults.bce.loss import BCEKL

real_nll = BCEKL.nll
BCEKL.nll = lambda self, x, out: real_nll(self, x, out) * float("nan")
"""


def test_a_loss_that_becomes_nan_stops_the_run_and_keeps_the_last_good_model(tiny_cifar, tmp_path, monkeypatch):
    from vaezoo_defaults.bce.loss import BCEKL

    real_nll = BCEKL.nll
    state = {"epochs_done": 0, "model": None}

    def nll(self, x, out):
        value = real_nll(self, x, out)
        return value * float("nan") if state["epochs_done"] >= 1 else value

    class Watch(vaezoo.trainer.loop.Callback):
        def on_epoch_end(self, run, metrics):
            state["epochs_done"] = run.epoch
            state["model"] = (run.out_dir / "model.safetensors").read_bytes()

    monkeypatch.setattr(BCEKL, "nll", nll)
    out = tmp_path / "run"
    with pytest.raises(
        RunFailed, match="training diverged: the loss became nan in epoch 2.*last good checkpoint"
    ) as error:
        fit_tiny(tiny_cifar, out, epochs=2, callbacks=[Watch()])
    assert error.value.exit_code == 1
    assert (out / "model.safetensors").read_bytes() == state["model"]
    assert [m["epoch"] for m in metrics(out)] == [1]
    assert vaezoo.load(out / "model.safetensors").metadata["training"]["epochs"] == 1
    # through the command line (NaN from the first step): exit code 1 and the message as the last line
    run = ["run", "cifar-vae", "--data-dir", str(tiny_cifar), "--epochs", "3", "--out", str(tmp_path / "cli")]
    (failed,) = run_cli_batch([[*run, *TINY_ARGS]], tmp_path, prelude=NAN_LOSS, fork=True)
    lines = error_lines(failed.stderr)
    assert (
        failed.returncode == 1
        and lines[-1].startswith("vaezoo: error: training diverged")
        and "no epoch finished" in lines[-1]
    )
    assert not (tmp_path / "cli" / "model.safetensors").exists()
