"""A rich progress bar for training runs (epoch, step, loss, images per second)."""

from __future__ import annotations

from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from vaezoo.trainer.loop import Callback, Run


class RichProgress(Callback):
    """One bar per epoch with the running mean loss per image and the training speed."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None

    def _new_bar(self, run: Run) -> None:
        epochs = run.recipe["train"]["epochs"]
        self.task = self.progress.add_task(
            f"epoch {run.epoch + 1}/{epochs}", total=run.batches_per_epoch, loss=float("nan"), rate=0.0
        )

    def on_start(self, run: Run) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.2f}"),
            TextColumn("{task.fields[rate]:.0f} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        threads = run.recipe["train"]["threads"]
        self.console.print(  # what the run's speed depends on
            f"training on {run.device} in {run.precision.name} with {torch.get_num_threads()} CPU "
            f"thread(s) (train.threads {threads})",
            markup=False,
            highlight=False,
        )
        if run.device.type == "cuda":  # whether the step replays a CUDA graph, or why not
            self.console.print(f"training step: {run.step_mode}", markup=False, highlight=False)
        self.progress.start()
        if run.epoch < run.recipe["train"]["epochs"]:
            self._new_bar(run)

    def on_step(self, run: Run, batch: int, loss: float, images_per_s: float) -> None:
        self.progress.update(self.task, completed=batch, loss=loss, rate=images_per_s)

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        self.progress.update(
            self.task, completed=run.batches_per_epoch, loss=metrics["train_loss"], rate=metrics["images_per_s"]
        )
        extra = f"  bits/dim {metrics['test_bits_per_dim']:.3f}" if "test_bits_per_dim" in metrics else ""
        self.progress.console.print(
            f"epoch {metrics['epoch']}: train loss {metrics['train_loss']:.2f}  test loss "
            f"{metrics['test_loss']:.2f}{extra}"
            f"  ({metrics['images_per_s']:.0f} img/s, {metrics['seconds']:.1f} s)"
        )
        if run.epoch < run.recipe["train"]["epochs"]:
            self._new_bar(run)

    def on_end(self, run: Run) -> None:
        if self.progress is not None:
            self.progress.stop()

    def close(self) -> None:
        self.on_end(None)  # type: ignore[arg-type]
