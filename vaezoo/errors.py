"""Errors a user can cause. The CLI prints their message as one line and exits with `exit_code`.
`printable` makes text from files and plugins safe to print on a terminal; `first_line` and
`error_line` quote another error in one line."""

from __future__ import annotations

import os
import re

# C0 and C1 controls, DEL, line and paragraph separators, bidirectional overrides and isolates
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, lines: bool = False) -> str:
    """`text` as a string whose terminal control characters (ESC, CSI, OSC, BEL, CR, backspace, the
    other C0 and C1 controls, bidirectional overrides) are shown as `\\x1b`-style escapes, so that a
    file or a plugin cannot move the cursor, clear the screen or retitle the terminal. `lines` keeps
    newlines and tabs (for multi-line output such as a model card). Rich markup is not escaped here."""
    return (_CONTROLS_BUT_LINES if lines else _CONTROLS).sub(_visible, str(text))


def first_line(message: object, limit: int | None = 300) -> str:
    """The first line of `message` (an exception or a text) that is not blank, stripped and cut to `limit`
    characters (it may quote a file's values; None: the whole line). An exception whose message is empty
    (or whose `__str__` fails) gives its type's name: the line still says something. An error quoted this
    way stays the `__cause__` of the one that quotes it (`raise ... from error`), which `--debug` shows."""
    line = _first(message, limit)
    return line or (type(message).__name__ if isinstance(message, BaseException) else "")


def error_line(error: BaseException, limit: int | None = 300) -> str:
    """`Type: first line of the message` (as `first_line`), or the type's name alone for an empty message."""
    line = _first(error, limit)
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _first(message: object, limit: int | None) -> str:
    try:
        text = str(message)
    except Exception:  # a plugin's exception whose __str__ raises
        return ""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if limit is None or len(line) <= limit else line[:limit] + "..."


class VaezooError(Exception):
    """A problem with the user's input: message says what, where and what to do next."""

    exit_code = 2


def checked_path(value: str | os.PathLike[str], where: str) -> str:
    """`value` as a string, unless it is empty or only whitespace (which would name the current folder, or a
    folder named by spaces in it): then a VaezooError naming `where` (an option, setting or variable)."""
    text = os.fspath(value)
    if not text.strip():
        what = "empty" if not text else "only whitespace"
        raise VaezooError(f"{where} is {what}: give a path ('.' for the current folder)")
    return text


class UnknownName(VaezooError):
    """A recipe or component name that no plugin registers."""


class AmbiguousName(UnknownName):
    """A short name that plugins of several distributions register, used where no rule picks one."""


class RecipeError(VaezooError):
    """A recipe or an override that does not validate."""


class PluginError(VaezooError):
    """Plugins that conflict or a component a checkpoint needs that is not installed."""


class DuplicateName(PluginError):
    """One distribution registers one name twice in one kind (its second registration fails)."""


class BadRegistration(PluginError):
    """A plugin calls `register` with a name, object or summary vaezoo cannot use."""


class DataError(VaezooError):
    """Data that cannot be found, downloaded or read."""


class CheckpointError(VaezooError):
    """A file that is not a readable vaezoo checkpoint."""


class MissingPlugin(PluginError, CheckpointError):
    """A checkpoint needs a component whose plugin is not installed (or is disabled)."""


class RunFailed(VaezooError):
    """A run that failed on its own (e.g. the loss diverged)."""

    exit_code = 1


class PluginFailed(RunFailed):
    """A plugin's code raised while vaezoo ran it: a bug in the plugin, not in the user's input or files
    (exit 1, as a run that failed on its own). The plugin's exception is the `__cause__`."""


class Interrupted(VaezooError):
    """Ctrl-C or SIGTERM during a run; the state was saved in `out_dir`, from which `recipe` resumes
    up to `epochs` (the CLI prints the command)."""

    exit_code = 130

    def __init__(self, message: str, out_dir: object = None, recipe: str = "", epochs: int = 0) -> None:
        super().__init__(message)
        self.out_dir, self.recipe, self.epochs = out_dir, recipe, epochs
