"""The handler that makes SIGINT / SIGTERM stop a vaezoo command at once (outside the training loop,
which saves its state first). Kept free of heavy imports: the console script installs it first thing."""

import signal


def stop_now(signum: int, frame: object) -> None:
    """Stop now, once: the signals that follow in a burst are ignored while vaezoo prints its one line
    and exits 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def forget_interrupt() -> None:
    """Call after catching a KeyboardInterrupt that vaezoo turns into exit 130. CPython marks one that
    left a string `exec`/`eval` as unhandled even once it is caught (torch's imports make hundreds of
    dataclass methods that way, so a signal during start-up often lands there), and under
    `python -m vaezoo` the interpreter then ends by SIGINT instead of the exit code. The mark is
    reset at the start of every string exec."""
    exec("pass", {})
