"""The learning-rate schedules vaezoo ships. Each is a pure function of the optimizer step and the
finished epochs' metrics (vaezoo.LRSchedule), so a resumed run follows it exactly."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from vaezoo.components import LRSchedule


def _fraction(name: str, key: str, value: object, low: float = 0.0, high: float = 1.0) -> float:
    if not (isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high):
        raise ValueError(f"schedule {name}: {key} must be a number from {low} to {high}, got {value!r}")
    return float(value)


def _whole(name: str, key: str, value: object, low: int = 1) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= 10**9):
        raise ValueError(f"schedule {name}: {key} must be a whole number from {low} to 10**9, got {value!r}")
    return value


class Constant(LRSchedule):
    """The learning rate as set (after an optional warm-up)."""


class Cosine(LRSchedule):
    """Cosine decay from the learning rate to `min_factor` times it, from the end of the warm-up to the
    run's last step (Loshchilov & Hutter 2017, without restarts)."""

    def __init__(self, *, total_steps: int, steps_per_epoch: int, warmup_steps: int = 0, min_factor: float = 0.0):
        super().__init__(total_steps=total_steps, steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps)
        self.min_factor = _fraction("cosine", "min_factor", min_factor)

    def decay(self, step: int, history: Sequence[Mapping[str, Any]]) -> float:
        span = max(1, self.total_steps - self.warmup_steps)
        done = min(1.0, max(0, step - self.warmup_steps) / span)
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * done))


class Step(LRSchedule):
    """Multiplied by `gamma` every `step_epochs` epochs."""

    def __init__(
        self,
        *,
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        step_epochs: int = 10,
        gamma: float = 0.1,
    ):
        super().__init__(total_steps=total_steps, steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps)
        self.step_epochs, self.gamma = _whole("step", "step_epochs", step_epochs), _fraction("step", "gamma", gamma)

    def decay(self, step: int, history: Sequence[Mapping[str, Any]]) -> float:
        return self.gamma ** ((step // self.steps_per_epoch) // self.step_epochs)


class Plateau(LRSchedule):
    """Multiplied by `gamma` each time the monitored loss (`val_loss` with train.val_fraction, else
    `train_loss`) has not improved by a fraction `threshold` on its best for `patience` epochs, as
    torch's ReduceLROnPlateau does, down to `min_factor`. Decided at epoch ends, from the history."""

    def __init__(
        self,
        *,
        total_steps: int,
        steps_per_epoch: int,
        warmup_steps: int = 0,
        patience: int = 3,
        gamma: float = 0.1,
        threshold: float = 1e-4,
        min_factor: float = 0.0,
    ):
        super().__init__(total_steps=total_steps, steps_per_epoch=steps_per_epoch, warmup_steps=warmup_steps)
        self.patience = _whole("plateau", "patience", patience)
        self.gamma, self.threshold = _fraction("plateau", "gamma", gamma), _fraction("plateau", "threshold", threshold)
        self.min_factor = _fraction("plateau", "min_factor", min_factor)

    def decay(self, step: int, history: Sequence[Mapping[str, Any]]) -> float:
        factor, best, waited = 1.0, math.inf, 0
        for row in history:
            value = row.get("val_loss", row.get("train_loss"))
            if not isinstance(value, int | float):
                continue
            if value < best * (1 - self.threshold) if best > 0 else value < best:
                best, waited = value, 0
                continue
            waited += 1
            if waited >= self.patience:
                factor, waited = max(self.min_factor, factor * self.gamma), 0
        return factor
