"""What one training run works with (`Run`), where it is (`TrainState`), and how a failure inside the model
is reported (`blame`). The loop, the step and the callbacks all receive the `Run`."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import LRSchedule, Model
from vaezoo.errors import RunFailed, error_line
from vaezoo.trainer.devices import Precision
from vaezoo.trainer.settings import TrainSettings


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
    """Everything one training run works with; callbacks receive it. `settings`: the recipe's train table,
    typed (made from `recipe` when the run is)."""

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
    data_rng: torch.Generator = field(default_factory=torch.Generator)  # the data order's; prepare() seeds it
    step_mode: str = "eager"  # "CUDA graph", or "eager" and why: set by the run's step (vaezoo.trainer.step)
    val_images: Tensor | None = None  # held out of the training split by train.val_fraction
    val_labels: Tensor | None = None
    schedule: LRSchedule | None = None  # train.lr_schedule, built by prepare()
    lr_factor: float | None = None  # the schedule's factor at the last step (None: not applied yet)
    stopped_early: str | None = None  # why train.early_stop_patience ended the run before its epochs
    pictures: dict[str, Tensor] = field(default_factory=dict)  # the last epoch's grids (HWC uint8) by name, set
    # by the run files before the other callbacks hear of the epoch's end (samples, reconstructions, interpolations)
    settings: TrainSettings = field(init=False)

    def __post_init__(self) -> None:
        self.settings = TrainSettings.of(self.recipe)

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_images) / self.settings.batch_size)


@contextlib.contextmanager
def blame(run: Run, what: str) -> Iterator[None]:
    """An error raised inside the model (a plugin's shapes gone wrong) as one line naming the family
    and the plugin distribution that provides it."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        from vaezoo.plugins.kinds import MODEL_PARTS

        family = run.recipe["model"]["name"]
        entry = run.model.registry_entries.get("model")  # recorded by build_model; none for a model built by hand
        source = f"plugin {entry.plugin.name!r} from {entry.plugin.distribution}" if entry else "built by hand"
        parts = ", ".join(f"{key} {run.recipe[key]['name']!r}" for key in MODEL_PARTS if key in run.recipe)
        raise RunFailed(
            f"model {family!r} ({source}{'; ' + parts if parts else ''}) failed in {what}: {error_line(error)}"
        ) from error
