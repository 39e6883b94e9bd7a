"""Learning-rate schedules (a plugin kind), the validation split, best.safetensors and early stopping:
each schedule's curve, a scheduled run resumed mid-way ending bit for bit where the run never stopped
ends, and a run that stops when val_loss stops improving."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tinydata import TINY_SETS

import vaezoo
from vaezoo.data import hold_out
from vaezoo.errors import Interrupted, RecipeError
from vaezoo.trainer.loop import Callback
from vaezoo_defaults.schedules.schedules import Constant, Cosine, Plateau, Step


def test_each_schedule_follows_its_curve():
    steps = {"total_steps": 100, "steps_per_epoch": 10}
    assert [Constant(**steps, warmup_steps=4).factor(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert Constant(**steps).constant and not Constant(**steps, warmup_steps=1).constant
    cosine = Cosine(**steps, warmup_steps=10, min_factor=0.1)
    assert cosine.factor(10) == pytest.approx(1.0) and cosine.factor(100) == pytest.approx(0.1)
    assert cosine.factor(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: the cosine's mean
    assert all(cosine.factor(s) >= cosine.factor(s + 1) for s in range(10, 100))
    step = Step(**steps, step_epochs=2, gamma=0.5)
    assert [step.factor(s) for s in (0, 19, 20, 39, 40)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    plateau = Plateau(**steps, patience=2, gamma=0.5)
    history = [{"val_loss": v} for v in (10.0, 9.0, 9.0, 9.5, 8.0, 8.0, 8.0)]
    # epochs 3 and 4 do not improve on 9.0: halved after epoch 4; 6 and 7 not on 8.0: halved again
    assert [plateau.factor(0, history[:n]) for n in range(8)] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert Plateau(**steps, patience=1).factor(0, [{"train_loss": 3.0}, {"train_loss": 3.0}]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="gamma"):
        Step(**steps, gamma=2.0)


def test_schedule_keys_and_early_stopping_are_checked_in_the_recipe():
    resolved = vaezoo.resolve_recipe("cifar-vae", ['train.lr_schedule="cosine"'])
    assert resolved["train"]["lr_schedule"] == {"name": "cosine", "warmup_steps": 0, "min_factor": 0.0}
    for sets, words in (
        (['train.lr_schedule={name="cosine", nope=1}'], "unknown key train.lr_schedule.nope"),
        (['train.lr_schedule="linear"'], "unknown schedule 'linear'"),
        (["train.early_stop_patience=2"], "train.val_fraction"),
        (["train.val_fraction=0.95"], "val_fraction"),
    ):
        with pytest.raises(vaezoo.VaezooError, match=words):
            vaezoo.resolve_recipe("cifar-vae", sets)
    assert issubclass(RecipeError, vaezoo.VaezooError)


def test_the_validation_split_is_drawn_by_the_seed():
    images, labels = torch.arange(100).view(100, 1, 1, 1).to(torch.uint8), torch.arange(100)
    (train, train_labels), (val, val_labels) = hold_out(images, labels, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80 and set(train_labels.tolist()).isdisjoint(val_labels.tolist())
    assert torch.equal(hold_out(images, labels, 0.2, seed=3)[1][1], val_labels)
    assert not torch.equal(hold_out(images, labels, 0.2, seed=4)[1][1], val_labels)
    assert val_labels.tolist() == sorted(val_labels.tolist())  # each split keeps the original order


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class InterruptAfter(Callback):
    """Sends this process SIGINT at the end of epoch `epoch` (the loop then saves its state and stops)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, run, metrics) -> None:
        if metrics["epoch"] == self.epoch:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_scheduled_run_resumes_bit_exactly_and_keeps_its_best_model(cifar: Path, tmp_path: Path):
    sets = [*TINY_SETS, 'train.lr_schedule={name="cosine", warmup_steps=5, min_factor=0.1}', "train.val_fraction=0.25"]
    options = {"train.limit": 128, "train.test_limit": 32, "train.lr": 0.01}
    fit = dict(sets=sets, data_dir=cifar, device="cpu")
    options["train.epochs"] = 3
    vaezoo.fit("cifar-vae", options=options, out=tmp_path / "straight", **fit)
    with pytest.raises(Interrupted):  # a SIGINT after epoch 2: the run stops before its next step
        vaezoo.fit("cifar-vae", options=options, out=tmp_path / "halves", callbacks=[InterruptAfter(2)], **fit)
    vaezoo.fit("cifar-vae", options=options, out=tmp_path / "halves", resume=tmp_path / "halves", **fit)
    straight, halves = metrics(tmp_path / "straight"), metrics(tmp_path / "halves")
    for key in ("train_loss", "val_loss", "test_loss", "lr"):
        assert [row[key] for row in halves] == [row[key] for row in straight], key
    steps = 6  # 96 training images (32 held out) in batches of 16, per epoch
    schedule = Cosine(total_steps=3 * steps, steps_per_epoch=steps, warmup_steps=5, min_factor=0.1)
    assert [row["lr"] for row in straight] == pytest.approx([0.01 * schedule.factor(e * steps - 1) for e in (1, 2, 3)])
    a, b = load_file(tmp_path / "straight" / "model.safetensors"), load_file(tmp_path / "halves" / "model.safetensors")
    assert all(torch.equal(a[name], b[name]) for name in a)
    best_epoch = min(straight, key=lambda row: row["val_loss"])["epoch"]
    best = vaezoo.load(tmp_path / "straight" / "best.safetensors")
    assert best.metadata["training"]["epochs"] == best_epoch
    assert best.metadata["training"]["metrics"]["val_loss"] == min(row["val_loss"] for row in straight)


def test_early_stopping_ends_the_run_when_val_loss_stops_improving(cifar: Path, tmp_path: Path):
    options = {"train.limit": 64, "train.test_limit": 16, "train.epochs": 5, "train.lr": 1e-30}  # nothing learns
    sets = [*TINY_SETS, "train.val_fraction=0.25", "train.early_stop_patience=2"]
    result = vaezoo.fit("cifar-vae", sets=sets, options=options, out=tmp_path / "run", data_dir=cifar, device="cpu")
    rows = metrics(tmp_path / "run")
    assert [row["epoch"] for row in rows] == [1, 2, 3]  # epochs 2 and 3 are no lower than epoch 1
    assert result.stopped_early and "not improved for 2 epochs" in result.stopped_early
    assert all(math.isfinite(row["val_loss"]) for row in rows)
    assert vaezoo.load(tmp_path / "run" / "best.safetensors").metadata["training"]["epochs"] == 1
