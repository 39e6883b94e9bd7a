"""The files of a run folder, written by a training callback: at each epoch end model.safetensors,
metrics.jsonl, samples.png, the pictures of vaezoo.pictures and state.safetensors; on an interrupt
the mid-epoch state.safetensors."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor

from vaezoo.checkpoint import save as save_model
from vaezoo.files import append_line_atomic
from vaezoo.images import save_grid
from vaezoo.pictures import sample_grid, write_epoch_pictures
from vaezoo.state import save_state
from vaezoo.train import Callback, Run

SAMPLE_SEED = 0  # samples.png of every epoch decodes the same noise


def training_summary(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"epochs": run.epoch, "steps": run.step, "precision": run.precision.name, "device": run.device.type, "train_images": len(run.train_images), "metrics": metrics}


class RunFiles(Callback):
    """Writes the run folder `run.out_dir` (see the module docstring)."""

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        save_model(run.model, run.out_dir / "model.safetensors", run.recipe, training_summary(run, metrics))
        append_line_atomic(run.out_dir / "metrics.jsonl", json.dumps(metrics))
        was_training = run.model.training
        run.model.eval()
        with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []), torch.no_grad():
            torch.manual_seed(SAMPLE_SEED)
            images, columns = sample_grid(run.model, run.recipe["train"]["sample_count"])
        run.model.train(was_training)
        save_grid(images, run.out_dir / "samples.png", nrow=columns)
        write_epoch_pictures(run.model, run.test_images, run.test_labels, run.history, run.out_dir)
        self._save_state(run, run.data_rng.get_state())

    def on_interrupt(self, run: Run, epoch_rng: Tensor) -> None:
        self._save_state(run, epoch_rng)

    @staticmethod
    def _save_state(run: Run, data_rng: Tensor) -> None:
        save_state(run.out_dir / "state.safetensors", run.model, run.optimizer, run.state.state_dict(), data_rng, run.scaler)
