"""The handler that makes SIGINT, SIGTERM and SIGHUP stop a vaezoo command at once (outside the
training loop, which saves its state first). Kept free of heavy imports: the console script and
`python -m vaezoo` install it first thing."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType  # loaded at start-up already (typing is not: this module imports first)

# Ctrl-C, `kill`, and a closed terminal (SIGHUP: there is none on Windows)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


_received: list[int] = []

# what signal.signal takes and gives back (None: a handler that was not installed from Python)
Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


def record_stop(signum: int, frame: object) -> None:
    """Note a stop signal without interrupting (the instants before the console script's guard, which
    then acts on it: `stop_received`); the signals that follow in a burst are ignored."""
    _received.append(signum)
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def stop_now(signum: int, frame: object) -> None:
    """Stop now, once: the signals that follow in a burst are ignored while vaezoo prints its one line
    and exits 130."""
    record_stop(signum, frame)
    raise KeyboardInterrupt


def stop_received() -> bool:
    """Whether a stop signal came. Python wraps the KeyboardInterrupt that `stop_now` raises when it
    lands inside some machinery (a class body's `__set_name__` during torch's imports becomes a
    RuntimeError), so the exit code goes by this rather than by the exception that surfaced."""
    return bool(_received)


def handle_stops(handler: Handler = stop_now) -> dict[int, Handler]:
    """Install `handler` for each stop signal and return the handlers it replaced. A signal that
    vaezoo's parent set to be ignored stays ignored: `nohup vaezoo run ...` keeps running when its
    terminal closes, and a background world of a script is not stopped by Ctrl-C."""
    previous: dict[int, Handler] = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    return previous


def forget_interrupt() -> None:
    """Call after catching a KeyboardInterrupt that vaezoo turns into exit 130. CPython marks one that
    left a string `exec`/`eval` as unhandled even once it is caught (torch's imports make hundreds of
    dataclass methods that way, so a signal during start-up often lands there), and under
    `python -m vaezoo` the interpreter then ends by SIGINT instead of the exit code. The mark is
    reset at the start of every string exec."""
    exec("pass", {})
