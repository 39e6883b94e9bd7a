"""The CUDA fast paths: data resident on the GPU, no host synchronisation per step, bf16/fp16 and
compile on the GPU. Skipped without a CUDA device (these machines have none; run on a GPU box)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from vaezoo.recipes.build import build_model
from vaezoo.recipes.resolve import resolve_recipe
from vaezoo.trainer.devices import resolve_device, resolve_precision
from vaezoo.trainer.loop import LOG_EVERY, Run, train

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _run(tmp_path: Path, precision: str, steps: int = 2 * LOG_EVERY, compile_: bool = False) -> Run:
    device = resolve_device("cuda")
    recipe = resolve_recipe(
        "cifar-vae",
        ["encoder.hidden=[8,16]", "decoder.hidden=[16,8]"],
        {
            "train.epochs": 1,
            "train.batch_size": 32,
            "train.precision": precision,
            "train.sample_count": 4,
            "train.compile": compile_ or None,
        },
    )
    torch.manual_seed(0)
    images = torch.randint(0, 256, (steps * 32, 3, 32, 32), dtype=torch.uint8)
    model = build_model(recipe, (3, 32, 32)).to(device)
    return Run(
        model, recipe, images.to(device), images[:64].to(device), tmp_path, device, resolve_precision(precision, device)
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_no_host_sync_per_step(tmp_path: Path, precision: str) -> None:
    """Only the loss reads every LOG_EVERY steps (and the epoch's end) wait for the GPU."""
    run = _run(tmp_path, precision)
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(run)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    steps = run.step
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    # the epoch end (loss, evaluation, checkpoint, pictures) syncs a bounded number of times
    assert len(syncs) < steps // 2, f"{len(syncs)} synchronising calls in {steps} steps"


def test_fp16_scales_gradients_and_keeps_float32_weights(tmp_path: Path) -> None:
    run = _run(tmp_path, "fp16")
    train(run)
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert run.history[-1]["test_loss"] == run.history[-1]["test_loss"]  # finite


def test_compile_reports_compile_seconds(tmp_path: Path) -> None:
    run = _run(tmp_path, "bf16", compile_=True)
    train(run)
    assert run.history[0]["compile_seconds"] > 0
