"""The recipe's `train` table as one typed, frozen object: what the trainer reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TrainSettings:
    """A resolved recipe's `train` table (`vaezoo.recipes.resolve.resolve_recipe` validates it: the keys,
    their types and ranges, the schedule), one attribute per key; `TRAIN_DEFAULTS` there documents each."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str  # adam, adamw or sgd
    weight_decay: float
    grad_clip: float
    skip_grad_norm: float
    seed: int
    limit: int
    test_limit: int
    precision: str  # auto, fp32, bf16 or fp16 (a run resolves auto once: vaezoo.api.make_run)
    threads: int | str  # N or "auto"
    compile: bool
    cuda_graph: bool
    channels_last: bool
    eval_batch_size: int
    sample_count: int
    group_lr: Mapping[str, float]  # optimizer name -> learning rate
    lr_schedule: Mapping[str, Any]  # the schedule's table: name and keys
    val_fraction: float
    early_stop_patience: int
    loggers: tuple[Mapping[str, Any], ...]  # each logger's table: name and keys (vaezoo.trainer.loggers)

    @classmethod
    def of(cls, recipe: Mapping[str, Any]) -> TrainSettings:
        """The settings of a resolved recipe (validated there, once: not again here)."""
        table = recipe["train"]
        values = {field.name: table[field.name] for field in fields(cls)}
        return cls(**{**values, "loggers": tuple(values["loggers"])})

    def lr_of(self, optimizer: str) -> float:
        """The base learning rate of the named optimizer: train.group_lr.NAME, else train.lr."""
        return self.group_lr.get(optimizer, self.lr)
