"""The `tensorboard` logger: event files in OUT/tensorboard (`tensorboard --logdir OUT/tensorboard`).
Needs the optional extra `tensorboard`."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

import vaezoo

PICTURES = ("samples", "reconstructions", "interpolations")


class TensorBoardLogger(vaezoo.Logger):
    """Scalars (the running train loss and speed every 20 steps, every numeric metric per epoch) and the
    epoch's picture grids (samples, reconstructions, interpolations: those of the PNGs the run writes)
    into OUT/tensorboard. A resumed run adds an event file to the same folder."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise vaezoo.VaezooError(
                "logger 'tensorboard' needs the tensorboard package: pip install 'vaezoo[tensorboard]'"
            ) from error
        self._writer_class = SummaryWriter
        self.writer: Any = None

    def start(self, run: vaezoo.RunInfo) -> str:
        folder = run.out_dir / "tensorboard"
        self.writer = self._writer_class(log_dir=str(folder))
        return f"see it with: tensorboard --logdir {folder}"

    def log_progress(self, step: int, loss: float, images_per_s: float) -> None:
        self.writer.add_scalar("train/running_loss", loss, step)
        self.writer.add_scalar("train/images_per_s", images_per_s, step)

    def log_metrics(self, metrics: Mapping[str, Any], epoch: int) -> None:
        for key, value in metrics.items():
            if key not in ("epoch", "step") and isinstance(value, Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def log_images(self, images: Mapping[str, Any], epoch: int) -> None:
        for name, picture in images.items():
            if name in PICTURES:
                self.writer.add_image(name, picture, epoch, dataformats="HWC")
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
