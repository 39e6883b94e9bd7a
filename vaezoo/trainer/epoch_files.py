"""The files of a run folder, written by a training callback. At each epoch end, in this order:
state.safetensors (the commit: weights, optimizer, position, metrics history), model.safetensors,
metrics.jsonl (rewritten from the history), samples.png and the pictures of vaezoo.files.pictures. On an
interrupt, the mid-epoch state.safetensors. A crash between two of these writes loses nothing that a
resume does not rebuild (docs/reliability.md)."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from vaezoo.files.atomic import write_text_atomic
from vaezoo.files.model_file import save as save_model
from vaezoo.files.pictures import sample_grid, write_epoch_pictures
from vaezoo.files.png import save_grid
from vaezoo.files.train_state import save_state
from vaezoo.trainer.loop import Callback, Run

SAMPLE_SEED = 0  # samples.png of every epoch decodes the same noise


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


class RunFiles(Callback):
    """Writes the run folder `run.out_dir` (see the module docstring)."""

    def on_start(self, run: Run) -> None:
        """On resume: metrics.jsonl and model.safetensors as the state says, if a crash came between
        the state's commit and their writes."""
        self.catch_up(run)

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        self._save_state(run, run.data_rng.get_state())
        self._write_outputs(run, metrics)

    def on_interrupt(self, run: Run, epoch_rng: Tensor) -> None:
        self._save_state(run, epoch_rng)

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
        if behind:
            self._write_outputs(run, run.history[-1])
        elif metrics_behind:
            write_metrics(run)
        return behind or metrics_behind

    @staticmethod
    def _write_outputs(run: Run, metrics: dict[str, Any]) -> None:
        save_model(run.model, run.out_dir / "model.safetensors", run.recipe, training_summary(run, metrics))
        write_metrics(run)
        was_training = run.model.training
        run.model.eval()
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(SAMPLE_SEED)
            images, columns = sample_grid(run.model, run.recipe["train"]["sample_count"])
        run.model.train(was_training)
        save_grid(images, run.out_dir / "samples.png", nrow=columns)
        write_epoch_pictures(run.model, run.test_images, run.test_labels, run.history, run.out_dir)

    @staticmethod
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


def _saved_epochs(path: Any) -> int | None:
    """The epochs recorded in a model file of this run, or None if it is missing or unreadable."""
    from vaezoo.errors import VaezooError
    from vaezoo.files.model_header import read_metadata

    try:
        return read_metadata(path)[0].get("training", {}).get("epochs")
    except (VaezooError, OSError):
        return None
