"""A training run's state: `Run` (everything one run works with: model, data, optimizers, counters;
callbacks receive it) and `TrainState` (where the run is, saved for `--resume`). The loop
(vaezoo.trainer.loop) and the captured step (vaezoo.trainer.graph_step) both work on it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import LRSchedule, Model
from vaezoo.trainer.devices import Precision


@dataclass
class TrainState:
    """Where a run is: epochs completed, batches done in the current epoch (with their loss sum and
    seconds), optimizer steps taken, updates skipped. Saved in state.safetensors for `--resume`."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    skipped: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for key, value in saved.items():
            if hasattr(self, key):
                setattr(self, key, type(getattr(self, key))(value))


@dataclass
class Run:
    """Everything one training run works with; callbacks receive it."""

    model: Model
    recipe: dict[str, Any]
    train_images: Tensor
    test_images: Tensor
    out_dir: Path
    device: torch.device
    precision: Precision
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    state: TrainState = field(default_factory=TrainState)
    history: list[dict[str, Any]] = field(default_factory=list)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)  # by name (Model.parameter_groups)
    scaler: Any = None
    data_rng: torch.Generator | None = None
    step_mode: str = "eager"  # "CUDA graph", or "eager" and why (graph_step.graph_blocker), set by train()
    skips_on_device: Tensor | None = None  # updates skipped since last counted, when the device decides skips
    val_images: Tensor | None = None  # held out of the training split by train.val_fraction
    val_labels: Tensor | None = None
    schedule: LRSchedule | None = None  # train.lr_schedule, built by prepare()
    lr_factor: float | None = None  # the schedule's factor at the last step (None: not applied yet)
    stopped_early: str | None = None  # why train.early_stop_patience ended the run before its epochs
    pictures: dict[str, Tensor] = field(default_factory=dict)  # the last epoch's grids (HWC uint8) by name, set
    # by the run files before the other callbacks hear of the epoch's end (samples, reconstructions, interpolations)

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_images) / self.recipe["train"]["batch_size"])
