"""What `vaezoo run` prints on stderr (vaezoo/trainer/progress.py): the start-up lines, where a resume
picks up, a bar without a reading yet, and the epoch line of a resumed epoch; on tiny data, in this
process."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest
from rich.console import Console
from tinydata import fit_tiny, tiny_cifar  # noqa: F401  (fixture)

import vaezoo.trainer.loop
from vaezoo.errors import Interrupted
from vaezoo.trainer.progress import RichProgress


class BarAtStart(vaezoo.trainer.loop.Callback):
    """Renders the progress bar as it stands when training starts (before any step)."""

    def __init__(self, progress: RichProgress) -> None:
        self.progress, self.shown = progress, ""

    def on_start(self, run: vaezoo.trainer.loop.Run) -> None:
        console = Console(file=io.StringIO(), width=200)
        console.print(self.progress.progress.make_tasks_table(self.progress.progress.tasks))
        self.shown = console.file.getvalue()


class InterruptAt(vaezoo.trainer.loop.Callback):
    """Sends SIGINT to this process after `batch` batches of the first epoch."""

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def on_step(self, run: vaezoo.trainer.loop.Run, batch: int, loss: float, images_per_s: float) -> None:
        if run.epoch == 0 and batch == self.batch:
            os.kill(os.getpid(), signal.SIGINT)


def watched() -> tuple[io.StringIO, RichProgress, BarAtStart]:
    """RichProgress printing into a string, and a renderer of its bar at start (after it in the callbacks)."""
    text = io.StringIO()
    progress = RichProgress(Console(file=text, width=200))
    return text, progress, BarAtStart(progress)


def test_start_up_resume_and_resumed_epoch_lines(tiny_cifar: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr(vaezoo.trainer.loop, "LOG_EVERY", 1)
    out = tmp_path / "run"
    first, progress, bar = watched()
    with pytest.raises(Interrupted):
        fit_tiny(tiny_cifar, out, 1, callbacks=[progress, bar, InterruptAt(3)], precision="fp32", threads=1)
    progress.close()
    started = first.getvalue()
    assert f"training on cpu in fp32 with 1 CPU thread(s) (train.threads 1) into {out}" in started
    assert "training step: eager (the device is cpu, not CUDA)" in started
    assert "resuming" not in started
    assert "loss - - img/s" in bar.shown and "nan" not in bar.shown  # no reading yet: no "loss nan 0 img/s"

    second, progress, bar = watched()
    fit_tiny(tiny_cifar, None, 1, resume=out, callbacks=[progress, bar])
    progress.close()
    resumed = second.getvalue()
    assert "resuming at epoch 1, batch 3 of 5 (step 3)" in resumed
    # the speed is the resumed part's, the seconds the whole epoch's: the line says so
    assert "img/s after the resume at batch 3, " in resumed and " s in all)" in resumed
