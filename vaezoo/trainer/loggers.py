"""Experiment loggers (`train.loggers`, `vaezoo run --logger NAME`): built from the recipe before the run
loads anything, then driven by one training callback that tells each `vaezoo.Logger` of the run. A logger
that raises is dropped with one warning line and the run goes on: tracking never costs a run."""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from vaezoo.components import Logger, RunInfo
from vaezoo.errors import Interrupted, PluginError, VaezooError, error_line, printable
from vaezoo.trainer.loop import Callback
from vaezoo.trainer.run import Run


def build_loggers(recipe: Mapping[str, Any]) -> Loggers | None:
    """The loggers of the resolved recipe's `train.loggers` (None when it names none). A logger whose
    package is missing (its constructor raises ImportError) is one line, exit 2, before anything else."""
    from vaezoo.plugins.manager import get_registry
    from vaezoo.recipes.build import instantiate

    built = {}
    for table in recipe["train"]["loggers"]:
        entry = get_registry().get("loggers", table["name"])
        try:
            logger = instantiate(entry.load(), table, {}, "logger")
        except ImportError as error:
            raise VaezooError(
                f"logger {table['name']!r} ({entry.plugin.distribution}) cannot start: {error}; install what it needs"
            ) from error
        if not isinstance(logger, Logger):
            raise PluginError(f"logger {table['name']!r} ({entry.plugin.distribution}) does not build a vaezoo.Logger")
        built[table["name"]] = logger
    return Loggers(built) if built else None


class Loggers(Callback):
    """Tells each logger of the run (rank 0 only, as every callback), in the order of `train.loggers`.
    Runs after the run files (`RunFiles`): at an epoch's end its model file and pictures exist."""

    def __init__(self, loggers: Mapping[str, Logger]) -> None:
        self.active = dict(loggers)  # name -> logger, until it raises or the run ends
        self.started = False

    def _call(self, method: str, *args: Any) -> None:
        for name, logger in list(self.active.items()):
            try:
                line = getattr(logger, method)(*args)
            except Exception as error:  # a tracker's failure never stops the run
                del self.active[name]
                warning = (
                    f"vaezoo: warning: logger {name!r} failed in {method} ({error_line(error)}); it is dropped, "
                    "the run goes on"
                )
                print(printable(warning), file=sys.stderr)
                continue
            if method == "start" and isinstance(line, str) and line:
                print(printable(f"logger {name}: {line}"), file=sys.stderr)

    def on_start(self, run: Run) -> None:
        self.started = True
        info = RunInfo(
            out_dir=run.out_dir,
            recipe=copy.deepcopy(run.recipe),
            epoch=run.epoch,
            history=copy.deepcopy(run.history),
            device=str(run.device),
            precision=run.precision.name,
        )
        self._call("start", info)

    def on_step(self, run: Run, batch: int, loss: float, images_per_s: float) -> None:
        self._call("log_progress", run.step, loss, images_per_s)

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None:
        self._call("log_metrics", copy.deepcopy(metrics), metrics["epoch"])
        if run.pictures:  # this epoch's, made by the run files
            pictures = {name: picture.numpy() for name, picture in run.pictures.items()}
            self._call("log_images", pictures, metrics["epoch"])

    def on_interrupt(self, run: Run, epoch_rng: Tensor) -> None:
        self.finish("interrupted")

    def on_end(self, run: Run) -> None:
        self.finish("finished")

    def finish(self, status: str) -> None:
        """End every logger still active (once: a logger that has finished is not told again)."""
        if self.started:
            self._call("finish", status)
        self.active.clear()

    def ended_by(self, error: BaseException) -> None:
        """The run ended with `error` before `on_end`: "interrupted" for a stop, "failed" otherwise."""
        self.finish("interrupted" if isinstance(error, Interrupted | KeyboardInterrupt) else "failed")
