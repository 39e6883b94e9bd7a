"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`."""

from __future__ import annotations


class VaezooError(Exception):
    """A problem with the user's input: message says what, where and what to do next."""

    exit_code = 2


class UnknownName(VaezooError):
    """A recipe or component name that no plugin registers."""


class RecipeError(VaezooError):
    """A recipe or an override that does not validate."""


class PluginError(VaezooError):
    """Plugins that conflict or a component a checkpoint needs that is not installed."""


class DataError(VaezooError):
    """Data that cannot be found, downloaded or read."""


class CheckpointError(VaezooError):
    """A file that is not a readable vaezoo checkpoint."""


class MissingPlugin(PluginError, CheckpointError):
    """A checkpoint needs a component whose plugin is not installed (or is disabled)."""


class RunFailed(VaezooError):
    """A run that failed on its own (e.g. the loss diverged)."""

    exit_code = 1


class Interrupted(VaezooError):
    """Ctrl-C or SIGTERM during a run; the state was saved in `out_dir`, from which `recipe` resumes
    up to `epochs` (the CLI prints the command)."""

    exit_code = 130

    def __init__(self, message: str, out_dir: object = None, recipe: str = "", epochs: int = 0) -> None:
        super().__init__(message)
        self.out_dir, self.recipe, self.epochs = out_dir, recipe, epochs
