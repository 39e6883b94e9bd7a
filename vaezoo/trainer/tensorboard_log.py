"""TensorBoard logging for `vaezoo run --tensorboard`: a training callback that writes scalars and the
epoch's picture grids into OUT/tensorboard. Needs the optional extra `tensorboard`."""

from __future__ import annotations

from numbers import Real
from typing import Any

from vaezoo.errors import VaezooError
from vaezoo.trainer.loop import Callback, Run

PICTURES = ("samples", "reconstructions", "interpolations")


class TensorBoardLogger(Callback):
    """Scalars (running train loss per step, every numeric metric per epoch) and the epoch's picture
    grids (samples, reconstructions, interpolations: those of the PNGs the run writes) per epoch.
    Constructing it checks that tensorboard is installed, so a missing package fails before training
    starts."""

    def __init__(self, subdir: str = "tensorboard") -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise VaezooError(
                "--tensorboard needs the tensorboard package: pip install 'vaezoo[tensorboard]'"
            ) from error
        self._writer_class = SummaryWriter
        self.subdir = subdir
        self.writer: Any = None

    def on_start(self, run: Run) -> None:
        self.writer = self._writer_class(log_dir=str(run.out_dir / self.subdir))

    def on_step(self, run: Run, batch: int, loss: float, images_per_s: float) -> None:
        self.writer.add_scalar("train/running_loss", loss, run.step)
        self.writer.add_scalar("train/images_per_s", images_per_s, run.step)

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        epoch = metrics["epoch"]
        for key, value in metrics.items():
            if key not in ("epoch", "step") and isinstance(value, Real):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        for name, picture in run.pictures.items():  # this epoch's, made by the run files
            if name in PICTURES:
                self.writer.add_image(name, picture.numpy(), epoch, dataformats="HWC")
        self.writer.flush()

    def on_end(self, run: Run) -> None:
        if self.writer is not None:
            self.writer.close()
