"""The handler that makes SIGINT / SIGTERM stop a vaezoo command at once (outside the training loop,
which saves its state first). Kept free of heavy imports: the console script installs it first thing."""

import signal


def stop_now(signum: int, frame: object) -> None:
    """Stop now, once: the signals that follow in a burst are ignored while vaezoo prints its one line
    and exits 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt
