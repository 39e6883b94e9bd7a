"""`vaezoo` and `python -m vaezoo` (what torchrun starts). SIGTERM and SIGHUP are turned into an
interrupt when this module starts, before anything else is imported (the package's `__init__`
imports nothing), so that they exit 130 with one line at any moment, as Ctrl-C does."""

import signal
import sys

from vaezoo.trainer.signals import forget_interrupt, handle_stops, record_stop, stop_now, stop_received

# first thing (`signal` and `sys` are loaded already, vaezoo.trainer.signals is tiny): a stop is recorded,
# and acted on inside run()'s guard, so that no instant of this module's import can be interrupted
handle_stops(record_stop)


def run() -> None:
    """The console script: the CLI's main() with the stop signals handled from the first instant."""
    try:
        handle_stops(stop_now)  # from here a stop interrupts (a signal already recorded stays ignored)
        if stop_received():
            raise KeyboardInterrupt
        from vaezoo.cli import main
    except BaseException:
        if not stop_received():  # a broken install: Python's own report
            raise
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        forget_interrupt()
        print("vaezoo: interrupted", flush=True, file=sys.stderr)
        raise SystemExit(130) from None
    main(restore_signals=False)


if __name__ == "__main__":
    run()
