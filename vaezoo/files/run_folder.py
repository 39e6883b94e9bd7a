"""A run folder as a small database: one writer at a time (a lock file naming the owner process),
nothing changed until a run or a resume is accepted, and on resume only the options that can take
effect.

The lock `OUT/.vaezoo.lock` is created exclusively and records the owner's pid, the process's start
time (/proc/PID/stat field 22) and the boot id, so that a lock whose pid now belongs to another process
(recycled, or after a reboot) is recognised as stale. Where /proc is missing only the pid is recorded.
Taking over a stale lock is atomic: takers lock the stale file (flock) and only the one that finds it
still in place removes it; then all race on the exclusive create again and exactly one wins.

What a crash can cost is in docs/reliability.md: state.safetensors is the commit (it holds the weights,
the optimizer, the position and the metrics history); model.safetensors and metrics.jsonl are written
after it and rebuilt from it on resume. The lock's holder removes the temporary files that a killed
writer left in the folder (`.NAME.PID.XXXXXXXX.tmp`, `.NAME.XXXXXXXX.tmp` before vaezoo 0.4; see
vaezoo.files.atomic)."""

from __future__ import annotations

import errno
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaezoo.errors import RecipeError, VaezooError

try:
    import fcntl
except ImportError:  # not on Windows: the takeover of a stale lock is then not atomic
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".vaezoo.lock"
RUN_FILES = ("model.safetensors", "state.safetensors")
# train keys a resume may change: they take effect from the next step. Anything else must stay as saved.
RESUMABLE_CHANGES = {
    "epochs",
    "lr",
    "group_lr",
    "weight_decay",
    "grad_clip",
    "skip_grad_norm",
    "precision",
    "threads",
    "compile",
    "cuda_graph",
    "channels_last",
    "eval_batch_size",
    "sample_count",
    "loggers",
}
# vaezoo.files.atomic.write_bytes_atomic's temporary files: mkstemp(prefix=".NAME.PID.", suffix=".tmp")
TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
LOCK_DRAFT = re.compile(r"^\.vaezoo\.lock\.(\d+)\.\d+$")


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_FILES)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (it may be another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except (OverflowError, ValueError):
        return False
    return True


def process_start(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks after boot (/proc/PID/stat field 22), or None
    where /proc cannot tell."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[19])  # fields after "(comm)" start at field 3
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """What a lock records of a process: its pid, and its start time and boot id where /proc has them."""
    pid = os.getpid() if pid is None else pid
    identity: dict[str, Any] = {"pid": pid}
    start, boot = process_start(pid), boot_id()
    if start is not None:
        identity["start"] = start
    if boot is not None:
        identity["boot"] = boot
    return identity


def identity_alive(owner: dict[str, Any]) -> bool:
    """Whether the process a lock records still runs: its pid exists and, where recorded, with the same
    start time in the same boot (else the pid was recycled). A lock of this pid without a start time
    is stale (it cannot be this process's: it records its start time where /proc has it)."""
    pid, boot = owner["pid"], boot_id()
    if "start" not in owner and pid == os.getpid():
        return False
    if not pid_alive(pid):
        return False
    if "boot" in owner and boot is not None and owner["boot"] != boot:
        return False  # written before a reboot
    start = process_start(pid)
    if "start" in owner and start is not None and owner["start"] != start:
        return False  # the pid now belongs to another process
    return True  # alive, or /proc cannot tell (hidden): assume so


def _parse_owner(data: bytes) -> dict[str, Any] | None:
    """A lock's contents: {"pid", "start"?, "boot"?} as JSON, or a bare pid (vaezoo 0.2); None if garbage."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = {"pid": value}
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("pid"), int)
        or isinstance(value.get("pid"), bool)
        or value["pid"] <= 0
    ):
        return None
    if "start" in value and not isinstance(value["start"], int):
        return None
    return {key: value[key] for key in ("pid", "start", "boot") if key in value}


def remove_files(folder: Path, doomed: Callable[[os.DirEntry[str]], bool]) -> list[str]:
    """Remove the regular files of `folder` (never a link or a folder) for which `doomed(entry)` holds; one
    gone meanwhile, or not ours to remove, stays unmentioned. Returns the names removed."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and doomed(entry):
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed


def remove_temp_files(folder: Path) -> list[str]:
    """Remove the temporary files of atomic writes (`.NAME.XXXXXXXX.tmp`) and the lock drafts of dead
    processes that a killed writer left in `folder`; only call this while holding the folder's lock.
    Returns the names removed."""

    def left_behind(entry: os.DirEntry) -> bool:
        lock_draft = LOCK_DRAFT.match(entry.name)  # RunLock.acquire's, left by a writer killed in that instant
        return bool(TEMP_FILE.match(entry.name) or (lock_draft and not pid_alive(int(lock_draft[1]))))

    return remove_files(folder, left_behind)


class RunLock:
    """`OUT/.vaezoo.lock`, created exclusively with this process's identity (`process_identity`); a
    second writer gets a clear error naming the lock file, a lock whose process is gone is taken over.
    `created` lists the folders `acquire` made (deepest first): `remove_created` removes them again if
    a refused run left them empty."""

    ATTEMPTS = 20

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self.held = False
        self.record = b""
        self.created: list[Path] = []

    def acquire(self) -> RunLock:
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise VaezooError(f"--out {folder} is a file, not a folder: choose another --out")
        self.record = (json.dumps(process_identity()) + "\n").encode()
        mine = (
            folder / f"{LOCK_NAME}.{os.getpid()}.{threading.get_ident()}"
        )  # written whole first, then linked: a lock is never seen half-written
        for _ in range(self.ATTEMPTS):
            self._make_folder()
            try:
                mine.write_bytes(self.record)
                os.link(mine, self.path)  # atomic, and fails if the lock exists
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except FileNotFoundError:  # the folder was removed meanwhile (a refused run's, see remove_created)
                continue
            except OSError as error:
                reason = (
                    "read-only or not writable"
                    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
                    else error.strerror
                )
                raise VaezooError(f"cannot write into the run folder {folder}: {reason}") from error
            finally:
                mine.unlink(missing_ok=True)
            self.held = True
            remove_temp_files(folder)  # ours now: what a killed writer left behind goes
            return self
        raise VaezooError(
            f"cannot lock the run folder {folder}: its lock file {self.path} keeps coming back; if no vaezoo "
            "run uses the folder, delete it"
        )

    def _make_folder(self) -> None:
        """Create the run folder (and missing parents), remembering which ones were made here."""
        folder = self.path.parent
        missing = []
        for parent in (folder, *folder.parents):
            if parent.exists() or parent.is_symlink():
                break
            missing.append(parent)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VaezooError(f"cannot create the run folder {folder}: {error.strerror or error}") from error
        self.created += [path for path in missing if path not in self.created]

    def _take_over_if_stale(self) -> None:
        """Raise if the lock's process still runs; remove the lock if it is stale. Several takers may
        judge one lock stale at once: each locks the stale file (flock) and removes it only while it is
        still the one in place, so a lock that a faster taker has since created is never removed."""
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError:
            return  # gone meanwhile: try again
        except OSError as error:
            raise VaezooError(
                f"cannot read the lock file {self.path} of the run folder {self.path.parent}: "
                f"{error.strerror}; if no vaezoo run uses the folder, delete it"
            ) from error
        with handle:
            owner = _parse_owner(handle.read(4096))
            if owner is not None and identity_alive(owner):
                raise VaezooError(
                    f"{self.path.parent} is in use by another vaezoo run (pid {owner['pid']}): wait for it "
                    "to finish, or choose another --out; "
                    f"if no vaezoo run uses the folder, delete its lock file {self.path}"
                )
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file is closed
            try:
                if os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path)):
                    os.unlink(self.path)  # stale: its process is gone
            except FileNotFoundError:
                pass

    def release(self) -> None:
        try:
            ours = self.held and self.path.read_bytes() == self.record
        except OSError:
            ours = False
        if ours:
            self.path.unlink(missing_ok=True)
        self.held = False

    def remove_created(self) -> None:
        """Remove the folders `acquire` created, deepest first, as long as they are empty (a refused run
        leaves nothing behind). Call it after `release`."""
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): leave it and its parents
                break
        self.created = []

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
                    raise RecipeError(
                        f"cannot change train.{name} when resuming {folder} (it was {old!r}, now {new!r}): "
                        f"only {', '.join(sorted(RESUMABLE_CHANGES))} can change; start a new run for the "
                        "rest"
                    )
        elif key != "summary" and saved.get(key) != wanted.get(key):
            raise RecipeError(
                f"cannot change {key} when resuming {folder} (it was {saved.get(key)!r}, now "
                f"{wanted.get(key)!r}): the saved weights are for the saved model; start a new run with --out"
            )
