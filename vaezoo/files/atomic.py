"""Atomic file writes: a temporary file in the same folder, flushed and fsynced, then renamed, so a
reader (or a crash) never sees half a file. vaezoo writes only regular files: a target that exists
as anything else (a symlink, FIFO, device, socket or folder) is refused, never replaced.

The temporary file of `NAME` is `.NAME.PID.XXXXXXXX.tmp` (PID: the writer's); each write of `NAME`
first removes those that writers killed before their rename left (their process is gone)."""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from vaezoo.errors import VaezooError
from vaezoo.files.run_folder import pid_alive, remove_files

_KINDS = (
    (stat.S_ISLNK, "a symbolic link"),
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable_target(path: str | os.PathLike) -> None:
    """A VaezooError if `path` exists and is not a regular file (symbolic links included, whatever
    they point at): vaezoo would replace it."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError:  # e.g. a parent that is not a folder: the write itself says so
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise VaezooError(
            f"will not write {path}: it is {kind}, and vaezoo writes only regular files (remove it or choose "
            "another path)"
        )


def remove_abandoned_temp_files(path: Path) -> list[str]:
    """Remove the temporary files of `path` (`.NAME.PID.XXXXXXXX.tmp`) whose writer process is gone;
    a live writer's stay. Returns the names removed."""
    own = re.compile(rf"\.{re.escape(path.name)}\.([0-9]{{1,10}})\.[a-z0-9_]{{8}}\.tmp")

    def abandoned(entry: os.DirEntry[str]) -> bool:
        match = own.fullmatch(entry.name)
        return bool(match and not pid_alive(int(match[1])))

    return remove_files(path.parent, abandoned)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace the regular file `path` (or create it) with `data` in one step."""
    path = Path(path)
    check_writable_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        check_writable_target(path)  # once more, just before the rename: it may have appeared meanwhile
        os.replace(tmp, path)
    except OSError as error:  # a full disk: say which file could not be written
        Path(tmp).unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def read_regular_bytes(path: str | os.PathLike, max_bytes: int) -> bytes | None:
    """The bytes of the regular file `path`, None where nothing is there; a VaezooError where it is a
    symbolic link (whatever it points at) or anything but a regular file, or holds more than
    `max_bytes`. The file is opened without following links and checked again once open."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as error:  # a link that replaced the file meanwhile (ELOOP), a file we may not read
        raise VaezooError(f"cannot read {path}: {error.strerror}") from error
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise VaezooError(f"will not read {path}: it is {kind}, not a regular file")
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            raise VaezooError(f"will not read {path}: it holds {info.st_size:,} bytes, at most {max_bytes:,} expected")
        return handle.read(max_bytes + 1)[:max_bytes]
