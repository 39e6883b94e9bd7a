"""Models by name and models on the Hugging Face Hub.

`local_model_path` is the one door: it turns `hf://ORG/NAME[@REVISION]` (through `huggingface_hub`:
its cache, offline mode and token) and `https://...[#sha256=HEX]` (a bounded, streamed download into
vaezoo's cache, hash checked before use) into a local file, and leaves paths alone. Publishing
(`push`) is vaezoo.sharing.publish. `huggingface_hub` is the optional extra `vaezoo[hub]`, imported only here
and only when a hub name or `push` is used. See docs/sharing.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import ipaddress
import logging
import math
import os
import re
import shutil
import socket
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from vaezoo.errors import VaezooError, first_line
from vaezoo.files.model_header import file_sha256

MODEL_FILE = "model.safetensors"
HUB_INSTALL = "pip install 'vaezoo[hub]'"
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9][A-Za-z0-9._-]*)*")  # a branch, tag or commit
MAX_REVISION = 200
_ETAG = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")  # what the Hub sends: a sha256 or git blob hash
_COMMIT = re.compile(r"[0-9a-f]{40}")
_HOST_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_URL_FORBIDDEN = re.compile(r"[\x00-\x20\x7f]")  # spaces and control characters (CR, LF) in a URL
_PARTIAL = re.compile(r"\..+\.pid([0-9]{1,10})-\w+\.incomplete")  # a download in progress, by its pid
DEFAULT_TIMEOUT_S = 600.0  # the whole download
MAX_TIMEOUT_S = 1_000_000.0  # about 11 days: a longer deadline overflows the timer thread that keeps it
STALL_S = 60.0  # at most this long without data
DEFAULT_LIMIT_MB = 2048.0
CHUNK = 1 << 20


class HubError(VaezooError):
    """A model name, download or upload that failed: the message says which and what to do."""


class MissingExtra(HubError):
    """`huggingface_hub` is needed but not installed."""


class HashMismatch(HubError):
    """A download whose sha256 is not the one the URL asked for."""


def is_remote(name: str | os.PathLike[str]) -> bool:
    """Whether `name` is a hub name or URL rather than a path."""
    return not isinstance(name, os.PathLike) and str(name).startswith(("hf:", "https://", "http://"))


def local_model_path(name: str | os.PathLike[str]) -> Path:
    """A local model file for `name`: a path as is, `hf://ORG/NAME[@REV]` downloaded (or found in the
    cache) through huggingface_hub, `https://...[#sha256=HEX]` downloaded into vaezoo's cache."""
    if not is_remote(name):
        return Path(name)
    text = str(name)
    if text.startswith("hf:"):
        repo_id, revision = parse_hf_name(text)
        return hf_download(repo_id, revision)
    return url_download(text)


# --- hf:// ---------------------------------------------------------------------------------------


def check_repo_id(repo_id: str, shown: str | None = None) -> str:
    """`ORG/NAME` as the Hub spells repositories, or a HubError naming the expected form."""
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(
        _REPO_PART.fullmatch(part) and ".." not in part and "--" not in part for part in parts
    ):
        raise HubError(
            f"bad model name {shown or repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.'), e.g. "
            "hf://my-org/cifar-vae or hf://my-org/cifar-vae@v1"
        )
    return repo_id


def check_revision(revision: str, shown: str) -> str:
    """A branch, tag or commit: path segments of letters, digits, '.', '_', '-' (each starting with a
    letter or digit, no '..', at most 200 characters), or a HubError naming `shown`. Strict because
    huggingface_hub makes a cache path of it."""
    if len(revision) > MAX_REVISION or not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith("."):
        raise HubError(
            f"bad revision in {shown!r}: give a branch, tag or commit hash (letters, digits, '.', '_', '-', "
            f"segments joined by single '/', no '..', at most {MAX_REVISION} characters)"
        )
    return revision


def parse_hf_name(name: str) -> tuple[str, str | None]:
    """`hf://ORG/NAME[@REVISION]` -> (`ORG/NAME`, revision or None)."""
    if not name.startswith("hf://"):
        raise HubError(
            f"bad model name {name!r}: write hf://ORG/NAME (two slashes; on a command line quote it if your "
            "shell rewrites it)"
        )
    repo_id, at, revision = name[len("hf://") :].partition("@")
    check_repo_id(repo_id, name)
    if at:
        check_revision(revision, name)
    return repo_id, revision or None


def import_hub() -> ModuleType:
    """`huggingface_hub`, or a MissingExtra saying what to install."""
    try:
        import huggingface_hub
    except ImportError as error:
        raise MissingExtra(f"Hugging Face Hub support needs the huggingface_hub package: {HUB_INSTALL}") from error
    return huggingface_hub


def hf_download(repo_id: str, revision: str | None = None, filename: str = MODEL_FILE) -> Path:
    """`filename` of a Hub repository, from huggingface_hub's cache or downloaded into it. The answer
    of the Hub is checked first (an ETag or commit that would make a path outside the cache is
    refused), and the file huggingface_hub returns must lie inside its cache."""
    hub = import_hub()
    name = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    if revision is not None:
        check_revision(revision, name)
    offline = _offline()
    cache_only = not offline and not _reachable(
        _endpoint()
    )  # no half-minute of retries against a Hub that is not there
    try:
        with quiet_hub_logs():
            if not offline and not cache_only:
                cache_only = not _hub_answer_is_safe(hub, repo_id, revision, filename, name)
            path = Path(hub.hf_hub_download(repo_id, filename, revision=revision, local_files_only=cache_only))
    except HubError:
        raise
    except Exception as error:  # huggingface_hub's errors become one line each
        raise hub_error(error, name, filename) from error
    return inside_cache(path, Path(hub.constants.HF_HUB_CACHE), name, "the Hugging Face cache")


def _hub_answer_is_safe(hub: ModuleType, repo_id: str, revision: str | None, filename: str, name: str) -> bool:
    """HEAD the file as hf_hub_download does: True when the Hub answers with an ETag and a commit hash
    that name files inside the cache, False when it cannot be reached (the cache answers then), a
    HubError for an answer that would make huggingface_hub write outside its cache. An HTTP error is
    raised as is (hub_error words it)."""
    from huggingface_hub import constants, errors

    try:
        meta = hub.get_hf_file_metadata(
            hub.hf_hub_url(repo_id, filename, revision=revision), timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    except Exception as error:
        if isinstance(error, errors.HfHubHTTPError) or not (
            isinstance(error, OSError) or type(error).__module__.startswith(("httpx", "httpcore"))
        ):
            raise
        return False
    if meta.etag is not None and not _ETAG.fullmatch(meta.etag):
        raise HubError(
            f"{name}: {_endpoint()} answered with the ETag {meta.etag[:80]!r}, not a file hash (it would "
            "name a file outside the Hugging Face cache): refused, nothing downloaded"
        )
    if meta.commit_hash is not None and not _COMMIT.fullmatch(meta.commit_hash):
        raise HubError(
            f"{name}: {_endpoint()} answered with the commit {meta.commit_hash[:80]!r}, not a 40-digit "
            "commit hash: refused, nothing downloaded"
        )
    return True


def inside_cache(path: Path, cache: Path, shown: str, what: str, *, folder: bool = False) -> Path:
    """`path` resolved, when it is a regular file (or a folder) inside `cache`, links followed; else a
    HubError: a cached file that is a link leading out of the cache is never read."""
    resolved = path.resolve()
    if not resolved.is_relative_to(cache.resolve()) or not (resolved.is_dir() if folder else resolved.is_file()):
        kind = "folder" if folder else "regular file"
        raise HubError(
            f"refusing to use {path} for {shown}: in {what} it should be a {kind} inside {cache}, but it is "
            f"a link leading outside it or not a {kind}; delete it and load again"
        )
    return resolved


@contextlib.contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """huggingface_hub's warnings (each retry of an unreachable Hub) off: the error is one line."""
    from huggingface_hub.utils import logging as hub_logging

    level = hub_logging.get_verbosity()
    hub_logging.set_verbosity(max(level, logging.ERROR))
    try:
        yield
    finally:
        hub_logging.set_verbosity(level)


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _reachable(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the Hub's host opens (the cache answers when it does not)."""
    parts = urllib.parse.urlsplit(endpoint)
    try:
        with socket.create_connection(
            (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), timeout=timeout
        ):
            return True
    except (OSError, ValueError):
        return False


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_error(error: Exception, name: str, filename: str = MODEL_FILE) -> HubError:
    """One line for an error huggingface_hub raised while fetching `filename` of `name`."""
    from huggingface_hub import errors

    login = "log in with `hf auth login` or set HF_TOKEN"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, errors.GatedRepoError):
        return HubError(
            f"{name} is a gated repository: ask for access on {_endpoint()}/{name[5:].split('@')[0]} and {login}"
        )
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubError(
            f"{name}: no such repository on {_endpoint()} (or it is private and you are not authorised: {login})"
        )
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(f"{name}: no such revision (branch, tag or commit) in the repository")
    if isinstance(error, errors.RemoteEntryNotFoundError):
        return HubError(f"{name} has no {filename}: is it a vaezoo model? (vaezoo push uploads one)")
    if isinstance(error, errors.LocalEntryNotFoundError):
        if _offline():
            return HubError(
                f"{name} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: "
                "download it once online, or unset HF_HUB_OFFLINE"
            )
        return HubError(
            f"cannot reach {_endpoint()} to download {name}, and it is not in the Hugging Face cache: check "
            "the connection (and HF_ENDPOINT)"
        )
    if isinstance(error, errors.HfHubHTTPError) and status in (401, 403):
        return HubError(f"{name}: not authorised (HTTP {status}): the token is missing, wrong or lacks access; {login}")
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"{name}: the Hub answered HTTP {status}: {first_line(error)}")
    if isinstance(error, errors.HFValidationError):
        return HubError(f"bad model name {name!r}: {first_line(error)}")
    if isinstance(error, (OSError, ValueError)) or type(error).__module__.startswith(("httpx", "httpcore")):
        return HubError(f"download of {name} failed: {first_line(error)}")
    raise error  # not a download problem: a bug, shown as such


# --- https:// ------------------------------------------------------------------------------------


def downloads_dir(kind: str = "models") -> Path:
    """Where downloads of `kind` are cached: `<vaezoo cache>/models` for `https://` models,
    `<vaezoo cache>/fid` for FID's Inception weights (VAEZOO_CACHE_DIR overrides the cache)."""
    from vaezoo.data import cache_dir

    try:
        folder = cache_dir() / kind
    except RuntimeError:  # Path.home() (or VAEZOO_CACHE_DIR=~/...) without HOME nor a passwd entry
        folder = None
    home = os.environ.get("HOME")
    homeless = (
        home is not None and not os.path.isabs(home) and not os.environ.get("XDG_CACHE_HOME")
    )  # HOME="" means "/"
    if folder is None or (not os.environ.get("VAEZOO_CACHE_DIR") and (not folder.is_absolute() or homeless)):
        raise HubError(
            "vaezoo's download cache has no home: HOME is unset or empty (or XDG_CACHE_HOME is relative); "
            "set VAEZOO_CACHE_DIR to a writable folder"
        )
    return folder


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _valid_host(host: str) -> bool:
    """An IP address, or a DNS name of labels of at most 63 letters, digits, '-' or '_' (253 in all)."""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return True
    labels = host.removesuffix(".").split(".")
    return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _check_url(url: str, shown: str) -> urllib.parse.SplitResult:
    """The parts of `url` when vaezoo may download from it: https://, or http:// from this machine;
    a HubError naming `shown` for anything else or anything malformed."""
    if _URL_FORBIDDEN.search(url) or not url.isascii():
        raise HubError(
            f"bad URL {shown!r}: it holds a space, a control character or a non-ASCII character (percent-encode them)"
        )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as error:
        raise HubError(f"bad URL {shown!r}: {error}") from error
    if not (parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname))):
        raise HubError(
            f"refusing to download {shown}: vaezoo downloads models over https:// only (http:// only from localhost)"
        )
    if not parts.hostname or not _valid_host(parts.hostname):
        raise HubError(f"bad URL {shown!r}: no valid host name (labels of at most 63 letters, digits and '-')")
    return parts


def _limits() -> tuple[float, int]:
    """(deadline of a whole download in seconds, size limit in bytes): VAEZOO_DOWNLOAD_TIMEOUT,
    VAEZOO_DOWNLOAD_LIMIT_MB, each a finite number above 0 (unset or empty: the default)."""
    values = []
    for key, default, most in (
        ("VAEZOO_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT_S, MAX_TIMEOUT_S),
        ("VAEZOO_DOWNLOAD_LIMIT_MB", DEFAULT_LIMIT_MB, math.inf),
    ):
        text = os.environ.get(key) or None
        try:
            value = float(text) if text is not None else default
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= most):
            bound = f" and at most {most:,.0f}" if math.isfinite(most) else ""
            raise HubError(f"{key}={text!r} is not a number above 0{bound} (default {default:g})")
        values.append(value)
    return values[0], int(values[1] * 1024 * 1024)


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https:// (or from loopback http:// to loopback http://): never from
    https:// to http://."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            target = urllib.parse.urljoin(req.full_url, newurl)
        except ValueError:
            target = newurl
        parts = _check_url(target, target)
        if urllib.parse.urlsplit(req.full_url).scheme == "https" and parts.scheme != "https":
            raise HubError(
                f"refusing the redirect of {req.full_url} to {target}: vaezoo never follows a redirect from https:// to http://"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """The end of one download: when it comes, the sockets of the download are shut down, so that a
    server that trickles its headers or body cannot hold vaezoo past it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.sockets: list[socket.socket] = []
        self.fired = False
        self.timer = threading.Timer(seconds, self._fire)
        self.timer.daemon = True
        self.timer.start()

    @property
    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.end

    def left(self) -> float:
        return max(self.end - time.monotonic(), 0.01)

    def watch(self, sock: socket.socket) -> None:
        self.sockets.append(sock)
        if self.expired:
            self._fire()

    def _fire(self) -> None:
        self.fired = True
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _timed(base: type[http.client.HTTPConnection], deadline: _Deadline) -> type[http.client.HTTPConnection]:
    """`base` whose connections wait at most STALL_S (and never past `deadline`) to connect and
    shake hands, and whose sockets `deadline` shuts down when it comes."""

    class Connection(base):  # type: ignore[valid-type, misc]
        def connect(self) -> None:
            self.timeout = min(STALL_S, deadline.left())
            super().connect()
            deadline.watch(self.sock)

    return Connection


class _TimedHTTP(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_timed(http.client.HTTPConnection, self.deadline), req)


class _TimedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        self.context = ssl.create_default_context()  # as urllib's default: system CAs and SSL_CERT_FILE
        super().__init__(context=self.context)
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(_timed(http.client.HTTPSConnection, self.deadline), req, context=self.context)


def url_download(url: str) -> Path:
    """The model file at `url` (`#sha256=HEX` optional), cached under `downloads_dir()`: content-addressed
    when a hash is given, else keyed by the URL. The hash is checked on every use; a cached file that
    is a link leading out of the cache is refused, never read."""
    base, _, fragment = url.partition("#")
    expected = None
    if fragment:
        key, _, value = fragment.partition("=")
        if key != "sha256" or not _SHA256.fullmatch(value.lower()):
            raise HubError(f"bad URL fragment in {url!r}: the only one understood is #sha256= and 64 hex digits")
        expected = value.lower()
    parts = _check_url(base, base)
    filename = Path(urllib.parse.unquote(parts.path)).name or MODEL_FILE
    if filename in (".", "..") or not re.fullmatch(r"[\w.+-]+", filename):
        filename = MODEL_FILE
    root = downloads_dir()
    folder = root / (f"sha256-{expected}" if expected else "url-" + hashlib.sha256(base.encode()).hexdigest()[:32])
    target = folder / filename
    if os.path.lexists(folder):
        inside_cache(folder, root, base, "vaezoo's download cache", folder=True)
    if os.path.lexists(target):
        cached = inside_cache(target, root, base, "vaezoo's download cache")
        if expected is None or file_sha256(cached) == expected:
            return cached
        target.unlink()  # damaged since it was checked: fetch it again
    download_file(base, target, expected)
    return target


def download_file(url: str, target: Path, expected: str | None = None) -> Path:
    """Download `url` (https://, or http:// from this machine) into `target` as `url_download` does:
    bounded in time and size, nothing left behind when it fails, the sha256 checked when `expected`
    gives it; HF_HUB_OFFLINE=1 forbids it."""
    _check_url(url, url)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise HubError(f"{url} is not in vaezoo's download cache and HF_HUB_OFFLINE=1 forbids downloading it")
    _download(url, target, expected)
    return target


def _remove_stale_partials(root: Path) -> None:
    """Remove the `.incomplete` files of downloads whose process is gone (killed before it could clean
    up: the pid is in the name), and their folders when that leaves them empty."""
    for path in root.glob("*/.*.incomplete"):
        match = _PARTIAL.fullmatch(path.name)
        if match and not path.parent.is_symlink() and not _pid_alive(int(match[1])):
            with contextlib.suppress(OSError):
                path.unlink()
                path.parent.rmdir()  # only when empty


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _content_length(response: http.client.HTTPResponse, url: str) -> int | None:
    """The announced size, None when the server announced none; a HubError for a malformed one."""
    values = {value.strip() for value in response.headers.get_all("Content-Length") or []}
    if not values:
        return None
    value = values.pop()
    if values or not re.fullmatch(r"[0-9]{1,19}", value):
        raise HubError(f"cannot download {url}: the server's Content-Length is not one number")
    return int(value)


def _download(url: str, target: Path, expected: str | None) -> None:
    """Stream `url` into a temporary `.incomplete` file next to `target` (named with this process's
    pid), check size and hash, then rename it; the whole download ends by VAEZOO_DOWNLOAD_TIMEOUT."""
    timeout, limit = _limits()
    _remove_stale_partials(target.parent.parent)  # first: it removes the folders it empties, this one too
    created = not target.parent.exists()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.pid{os.getpid()}-", suffix=".incomplete", dir=target.parent
        )
    except OSError as error:
        raise HubError(
            f"cannot write vaezoo's download cache {target.parent} to download {url}: "
            f"{error.strerror or error}; set VAEZOO_CACHE_DIR to a writable folder"
        ) from error
    tmp = Path(tmp_name)
    digest, size = hashlib.sha256(), 0
    deadline = _Deadline(timeout)
    opener = urllib.request.build_opener(_SafeRedirects, _TimedHTTP(deadline), _TimedHTTPS(deadline))
    request = urllib.request.Request(url, headers={"User-Agent": "vaezoo", "Accept-Encoding": "identity"})
    timed_out = HubError(
        f"download of {url} took longer than VAEZOO_DOWNLOAD_TIMEOUT={timeout:g} s: stopped, nothing kept"
    )
    try:
        with os.fdopen(fd, "wb") as handle, opener.open(request, timeout=min(STALL_S, deadline.left())) as response:
            announced = _content_length(response, url)
            if announced is not None and announced > limit:
                raise HubError(
                    f"{url} is {announced / 2**20:.1f} MiB, over the download limit of {limit / 2**20:.1f} "
                    "MiB (VAEZOO_DOWNLOAD_LIMIT_MB)"
                )
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HubError(
                        f"{url} is over the download limit of {limit / 2**20:.1f} MiB (VAEZOO_DOWNLOAD_LIMIT_MB)"
                    )
                digest.update(chunk)
                handle.write(chunk)
            if deadline.expired:  # a socket shut down by the deadline reads as the end of the body
                raise timed_out
            if announced is not None and size != announced:
                raise HubError(f"download of {url} stopped after {size} of {announced} bytes: nothing kept, try again")
            handle.flush()
            os.fsync(handle.fileno())
        if announced is None and not response.chunked and expected is None:
            _check_whole(tmp, url, size)
        if expected is not None and digest.hexdigest() != expected:
            raise HashMismatch(
                f"{url}: its sha256 is {digest.hexdigest()}, not {expected} as the URL says: refused, nothing kept"
            )
        os.replace(tmp, target)
    except urllib.error.HTTPError as error:
        what = {401: "unauthorised", 403: "forbidden", 404: "not found"}.get(error.code, "")
        raise HubError(f"cannot download {url}: HTTP {error.code}" + (f" ({what})" if what else "")) from error
    except (OSError, http.client.HTTPException, ValueError) as error:
        if deadline.expired:
            raise timed_out from error
        raise HubError(_failure(url, error)) from error
    finally:
        deadline.timer.cancel()
        tmp.unlink(missing_ok=True)
        if created and not target.exists():
            shutil.rmtree(target.parent, ignore_errors=True)


def _check_whole(path: Path, url: str, size: int) -> None:
    """A HubError unless `path` is a whole safetensors file (its header describes exactly the bytes that
    follow): for a body that came with neither a Content-Length nor chunking, whose end cannot tell a
    download cut short from a whole one."""
    from vaezoo.errors import CheckpointError
    from vaezoo.files.model_header import read_file_header

    try:
        read_file_header(path)
    except CheckpointError as error:
        raise HubError(
            f"download of {url} ended after {size} bytes without a Content-Length and is not a whole "
            "safetensors file (cut short?): nothing kept; try again, or add #sha256= to the URL"
        ) from error


def _failure(url: str, error: BaseException) -> str:
    """One line for a download that failed on the network or on a malformed answer."""
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"download of {url} timed out: no data for {STALL_S:g} s"
    if isinstance(reason, http.client.HTTPException):  # its text may be the server's raw bytes: only its kind
        return f"download of {url} failed: the server's answer is cut short or not valid HTTP ({type(reason).__name__})"
    if isinstance(error, urllib.error.URLError):
        return f"cannot download {url}: {reason}"
    return f"download of {url} failed: {first_line(error)}"
