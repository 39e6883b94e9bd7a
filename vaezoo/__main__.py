"""`vaezoo` and `python -m vaezoo` (what torchrun starts). SIGTERM is turned into an interrupt before
anything heavy is imported, so that it exits 130 with one line at any moment, as Ctrl-C does."""

import signal
import sys

from vaezoo.signals import forget_interrupt, stop_now


def run() -> None:
    """The console script: the CLI's main() with SIGTERM handled from the first instant."""
    signal.signal(signal.SIGTERM, stop_now)
    try:
        from vaezoo.cli import main
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        forget_interrupt()
        print("vaezoo: interrupted", flush=True, file=sys.stderr)
        raise SystemExit(130) from None
    main(restore_signals=False)


if __name__ == "__main__":
    run()
