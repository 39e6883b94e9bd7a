"""The files of a run folder, written by a training callback. At each epoch end, in this order:
state.safetensors (the commit: weights, optimizer, position, metrics history), model.safetensors and
metrics.jsonl (rewritten from the history), written before the next callback runs; then samples.png,
reconstructions.png, interpolations.png and loss.png: their forward passes run at the epoch end, their
encoding and writing in a background thread while the next epoch trains. On an interrupt, the mid-epoch
state.safetensors, after the pictures of the last epoch. A crash between two of these writes loses
nothing that a resume does not rebuild (docs/reliability.md)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from vaezoo.files.atomic import write_bytes_atomic, write_text_atomic
from vaezoo.files.model_file import save as save_model
from vaezoo.files.png import grid, save_png
from vaezoo.files.train_state import save_state
from vaezoo.trainer.loop import Callback, Run
from vaezoo.trainer.pictures import (
    INTERP_PAIRS,
    RECON_COUNT,
    can_interpolate,
    interpolations,
    pick,
    reconstructions,
    sample_grid,
    save_loss_plot,
)

SAMPLE_SEED = 0  # samples.png of every epoch decodes the same noise
Write = Callable[[], Any]


def training_summary(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "epochs": run.epoch,
        "steps": run.step,
        "precision": run.precision.name,
        "device": run.device.type,
        "train_images": len(run.train_images),
        "test_images": len(run.test_images),
        "metrics": metrics,
    }


def write_metrics(run: Run) -> None:
    """metrics.jsonl: one line per epoch of `run.history`."""
    write_text_atomic(run.out_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in run.history))


class FileWriter:
    """Writes files in a background thread while training goes on: the writes of one `submit` in order,
    after those of the previous one. `wait()` returns when everything is written and raises what a
    write raised. The thread is not a daemon: a process that ends, by an exception too, first finishes
    writing the files of its last epoch."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, writes: Sequence[Write]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(list(writes),), name="vaezoo-run-files")
        self._thread.start()

    def _write(self, writes: list[Write]) -> None:
        try:
            for write in writes:
                write()
        except BaseException as error:  # raised again in the training thread by wait()
            self._error = error

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class RunFiles(Callback):
    """Writes the run folder `run.out_dir` (see the module docstring). `close()` waits for the files
    still being written (the caller holds the run folder's lock until then)."""

    def __init__(self) -> None:
        self.writer = FileWriter()

    def on_start(self, run: Run) -> None:
        """On resume: metrics.jsonl and model.safetensors as the state says, if a crash came between
        the state's commit and their writes."""
        self.catch_up(run)

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        self.writer.wait()  # the pictures of the epoch before
        _save_state(run, run.data_rng.get_state())
        self.writer.submit(_write_outputs(run, metrics))

    def on_interrupt(self, run: Run, epoch_rng: Tensor) -> None:
        self.writer.wait()
        _save_state(run, epoch_rng)

    def on_end(self, run: Run) -> None:
        self.writer.wait()

    def close(self) -> None:
        self.writer.wait()

    def catch_up(self, run: Run) -> bool:
        """Rewrite the outputs of the last epoch the state holds if they are behind it; whether they were."""
        if run.state.epoch == 0 or not run.history:
            return False
        metrics_file = run.out_dir / "metrics.jsonl"
        lines = (
            metrics_file.read_text(encoding="utf-8", errors="replace").splitlines() if metrics_file.is_file() else []
        )
        behind = _saved_epochs(run.out_dir / "model.safetensors") != run.state.epoch and run.state.batch == 0
        metrics_behind = len(lines) != len(run.history)
        last = run.history[-1]
        best_behind = (
            run.state.batch == 0
            and is_best(run, last)
            and _saved_epochs(run.out_dir / "best.safetensors") != run.state.epoch
        )
        if behind or best_behind:
            self.writer.submit(_write_outputs(run, last))
            self.writer.wait()
        elif metrics_behind:
            write_metrics(run)
        return behind or metrics_behind or best_behind


def is_best(run: Run, metrics: dict[str, Any]) -> bool:
    """Whether `metrics` (an epoch of `run.history`) has a lower val_loss than every epoch before it."""
    earlier = [
        row["val_loss"]
        for row in run.history
        if isinstance(row.get("val_loss"), int | float) and row.get("epoch", 0) < metrics.get("epoch", 0)
    ]
    return isinstance(metrics.get("val_loss"), int | float) and metrics["val_loss"] < min(earlier, default=math.inf)


def _save_state(run: Run, data_rng: Tensor) -> None:
    save_state(
        run.out_dir / "state.safetensors",
        run.model,
        run.optimizers,
        run.state.state_dict(),
        data_rng,
        run.scaler,
        run.history,
    )


def _write_outputs(run: Run, metrics: dict[str, Any]) -> list[Write]:
    """Write model.safetensors and metrics.jsonl; return the writes of the pictures of the model as it
    is now (their forward passes run here, in eval mode: normalization statistics are used, not
    updated)."""
    out, model = run.out_dir, run.model
    save_model(model, out / "model.safetensors", run.recipe, training_summary(run, metrics))
    if is_best(run, metrics):  # the epoch with the lowest validation loss so far
        write_bytes_atomic(out / "best.safetensors", (out / "model.safetensors").read_bytes())
    write_metrics(run)
    history = [dict(row) for row in run.history]
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(SAMPLE_SEED)
            tiles = {"samples.png": sample_grid(model, run.settings.sample_count)}
        shown = pick(run.test_images, RECON_COUNT, 0, run.test_labels)
        tiles["reconstructions.png"] = reconstructions(model, *shown)
        if can_interpolate(model):
            pairs = pick(run.test_images, 2 * INTERP_PAIRS, 0, run.test_labels)
            tiles["interpolations.png"] = interpolations(model, *pairs)
    finally:
        model.train(was_training)
    run.pictures = {name.removesuffix(".png"): grid(t.cpu(), c) for name, (t, c) in tiles.items()}
    return [
        *(lambda name=name, p=p: save_png(p, out / f"{name}.png") for name, p in run.pictures.items()),
        lambda: save_loss_plot(history, out / "loss.png"),
    ]


def _saved_epochs(path: Any) -> int | None:
    """The epochs recorded in a model file of this run, or None if it is missing or unreadable."""
    from vaezoo.errors import VaezooError
    from vaezoo.files.model_header import read_metadata

    try:
        return read_metadata(path)[0].get("training", {}).get("epochs")
    except (VaezooError, OSError):
        return None
