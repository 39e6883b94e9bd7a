"""A run folder as a small database: one writer at a time (a lock file holding the owner's pid), nothing
changed until a run or a resume is accepted, and on resume only the options that can take effect.

What a crash can cost is in docs/reliability.md: state.safetensors is the commit (it holds the weights,
the optimizer, the position and the metrics history); model.safetensors and metrics.jsonl are written
after it and rebuilt from it on resume."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from vaezoo.errors import RecipeError, VaezooError

LOCK_NAME = ".vaezoo.lock"
RUN_FILES = ("model.safetensors", "state.safetensors")
# train keys a resume may change: they take effect from the next step. Anything else must stay as saved.
RESUMABLE_CHANGES = {"epochs", "lr", "weight_decay", "grad_clip", "skip_grad_norm", "precision", "compile", "channels_last", "eval_batch_size", "sample_count"}


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class RunLock:
    """`OUT/.vaezoo.lock`, created exclusively with this process's pid; a second writer gets a clear
    error, a lock whose process is gone is taken over."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise VaezooError(f"--out {folder} is a file, not a folder: choose another --out")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VaezooError(f"cannot create the run folder {folder}: {error.strerror or error}") from None
        mine = folder / f"{LOCK_NAME}.{os.getpid()}"  # written whole first, then linked: a lock is never seen empty
        for _ in range(2):
            try:
                mine.write_text(f"{os.getpid()}\n")
                os.link(mine, self.path)  # atomic, and fails if the lock exists
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _pid_alive(owner):
                    raise VaezooError(f"{folder} is in use by another vaezoo run (pid {owner}): wait for it to finish, or choose another --out") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as error:
                reason = "read-only or not writable" if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else error.strerror
                raise VaezooError(f"cannot write into the run folder {folder}: {reason}") from None
            finally:
                mine.unlink(missing_ok=True)
            self.held = True
            return self
        raise VaezooError(f"cannot lock the run folder {folder}: its lock file {self.path} keeps coming back")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held and self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def check_resume_changes(saved: dict[str, Any], wanted: dict[str, Any], folder: Path) -> None:
    """Refuse a resume whose recipe differs from the saved run's anywhere but RESUMABLE_CHANGES."""
    for key in sorted(set(saved) | set(wanted)):
        if key == "train":
            for name in sorted(set(saved["train"]) | set(wanted["train"])):
                old, new = saved["train"].get(name), wanted["train"].get(name)
                if old != new and name not in RESUMABLE_CHANGES:
                    raise RecipeError(f"cannot change train.{name} when resuming {folder} (it was {old!r}, now {new!r}): only {', '.join(sorted(RESUMABLE_CHANGES))} can change; start a new run for the rest")
        elif key != "summary" and saved.get(key) != wanted.get(key):
            raise RecipeError(f"cannot change {key} when resuming {folder} (it was {saved.get(key)!r}, now {wanted.get(key)!r}): the saved weights are for the saved model; start a new run with --out")
