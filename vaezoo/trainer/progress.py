"""A rich progress bar for training runs (epoch, step, loss, images per second), with the start-up lines
(run folder, device, precision, threads, step mode; where a resume picks up) and one line per epoch."""

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
        self.resumed_at = 0  # the batch a resume picked the epoch up at (0: the epoch started here)

    @property
    def _bar(self) -> Progress:
        """The progress display, made by on_start."""
        if self.progress is None:
            raise RuntimeError("RichProgress is used before on_start")
        return self.progress

    def _new_bar(self, run: Run) -> None:
        epochs = run.settings.epochs
        self.task = self._bar.add_task(  # "-" until the first reading of the loss
            f"epoch {run.epoch + 1}/{epochs}", total=run.batches_per_epoch, loss="-", rate="-"
        )

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False)

    def on_start(self, run: Run) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[rate]} img/s"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        threads = run.settings.threads
        self._print(  # where the run writes, and what its speed depends on
            f"training on {run.device} in {run.precision.name} with {torch.get_num_threads()} CPU "
            f"thread(s) (train.threads {threads}) into {run.out_dir}"
        )
        self._print(f"training step: {run.step_mode}")  # whether the step replays a CUDA graph, or why not
        self.resumed_at = run.state.batch
        if run.step > 0 and run.epoch < run.settings.epochs:
            where = f"batch {run.state.batch} of {run.batches_per_epoch}" if run.state.batch else "its start"
            self._print(f"resuming at epoch {run.epoch + 1}, {where} (step {run.step})")
        self.progress.start()
        if run.epoch < run.settings.epochs:
            self._new_bar(run)

    def on_step(self, run: Run, batch: int, loss: float, images_per_s: float) -> None:
        self._bar.update(self.task, completed=batch, loss=f"{loss:.2f}", rate=f"{images_per_s:.0f}")

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        rate, loss = f"{metrics['images_per_s']:.0f}", f"{metrics['train_loss']:.2f}"
        self._bar.update(self.task, completed=run.batches_per_epoch, loss=loss, rate=rate)
        extra = f"  bits/dim {metrics['test_bits_per_dim']:.3f}" if "test_bits_per_dim" in metrics else ""
        timing = f"{rate} img/s, {metrics['seconds']:.1f} s"
        if self.resumed_at:  # the speed is that of the resumed part, the seconds are the whole epoch's
            timing = f"{rate} img/s after the resume at batch {self.resumed_at}, {metrics['seconds']:.1f} s in all"
            self.resumed_at = 0
        self._bar.console.print(
            f"epoch {metrics['epoch']}: train loss {loss}  test loss {metrics['test_loss']:.2f}{extra}  ({timing})"
        )
        if run.epoch < run.settings.epochs:
            self._new_bar(run)

    def on_end(self, run: Run) -> None:
        if self.progress is not None:
            self.progress.stop()

    def close(self) -> None:
        self.on_end(None)  # type: ignore[arg-type]
