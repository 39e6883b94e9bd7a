"""Models by name and models on the Hugging Face Hub.

`local_model_path` is the one door: it turns `hf://ORG/NAME[@REVISION]` (through `huggingface_hub`:
its cache, offline mode and token) and `https://...[#sha256=HEX]` (a bounded, streamed download into
vaezoo's cache, hash checked before use) into a local file, and leaves paths alone. `push` publishes a
run folder with a model card. `huggingface_hub` is the optional extra `vaezoo[hub]`, imported only here
and only when a hub name or `push` is used. See docs/sharing.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from collections.abc import Iterator
from types import ModuleType

from vaezoo.errors import VaezooError

MODEL_FILE = "model.safetensors"
PUSHED_FILES = (MODEL_FILE, "samples.png", "recipe.toml", "README.md")
HUB_INSTALL = "pip install 'vaezoo[hub]'"
_REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")  # a branch, tag or commit
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_LIMIT_MB = 2048.0
CHUNK = 1 << 20


class HubError(VaezooError):
    """A model name, download or upload that failed: the message says which and what to do."""


class MissingExtra(HubError):
    """`huggingface_hub` is needed but not installed."""


class HashMismatch(HubError):
    """A download whose sha256 is not the one the URL asked for."""


def is_remote(name: str | os.PathLike) -> bool:
    """Whether `name` is a hub name or URL rather than a path."""
    return not isinstance(name, os.PathLike) and str(name).startswith(("hf:", "https://", "http://"))


def local_model_path(name: str | os.PathLike) -> Path:
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
    if len(parts) != 2 or not all(_REPO_PART.fullmatch(part) and ".." not in part and "--" not in part for part in parts):
        raise HubError(f"bad model name {shown or repo_id!r}: expected ORG/NAME (letters, digits, '-', '_', '.'), e.g. hf://my-org/cifar-vae or hf://my-org/cifar-vae@v1")
    return repo_id


def parse_hf_name(name: str) -> tuple[str, str | None]:
    """`hf://ORG/NAME[@REVISION]` -> (`ORG/NAME`, revision or None)."""
    if not name.startswith("hf://"):
        raise HubError(f"bad model name {name!r}: write hf://ORG/NAME (two slashes; on a command line quote it if your shell rewrites it)")
    repo_id, at, revision = name[len("hf://") :].partition("@")
    check_repo_id(repo_id, name)
    if at and not _REVISION.fullmatch(revision):
        raise HubError(f"bad revision in {name!r}: after @ give a branch, tag or commit hash")
    return repo_id, revision or None


def import_hub() -> ModuleType:
    """`huggingface_hub`, or a MissingExtra saying what to install."""
    try:
        import huggingface_hub
    except ImportError:
        raise MissingExtra(f"Hugging Face Hub support needs the huggingface_hub package: {HUB_INSTALL}") from None
    return huggingface_hub


def hf_download(repo_id: str, revision: str | None = None, filename: str = MODEL_FILE) -> Path:
    """`filename` of a Hub repository, from huggingface_hub's cache or downloaded into it."""
    hub = import_hub()
    name = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    cache_only = not _offline() and not _reachable(_endpoint())  # no half-minute of retries against a Hub that is not there
    try:
        with _quiet_hub_logs():
            return Path(hub.hf_hub_download(repo_id, filename, revision=revision, local_files_only=cache_only))
    except Exception as error:  # huggingface_hub's errors become one line each
        raise hub_error(error, name, filename) from None


@contextlib.contextmanager
def _quiet_hub_logs() -> Iterator[None]:
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
        with socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)), timeout=timeout):
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
        return HubError(f"{name} is a gated repository: ask for access on {_endpoint()}/{name[5:].split('@')[0]} and {login}")
    if isinstance(error, errors.RepositoryNotFoundError):
        return HubError(f"{name}: no such repository on {_endpoint()} (or it is private and you are not authorised: {login})")
    if isinstance(error, errors.RevisionNotFoundError):
        return HubError(f"{name}: no such revision (branch, tag or commit) in the repository")
    if isinstance(error, errors.RemoteEntryNotFoundError):
        return HubError(f"{name} has no {filename}: is it a vaezoo model? (vaezoo push uploads one)")
    if isinstance(error, errors.LocalEntryNotFoundError):
        if _offline():
            return HubError(f"{name} is not in the Hugging Face cache and HF_HUB_OFFLINE=1 forbids downloading it: download it once online, or unset HF_HUB_OFFLINE")
        return HubError(f"cannot reach {_endpoint()} to download {name}, and it is not in the Hugging Face cache: check the connection (and HF_ENDPOINT)")
    if isinstance(error, errors.HfHubHTTPError) and status in (401, 403):
        return HubError(f"{name}: not authorised (HTTP {status}): the token is missing, wrong or lacks access; {login}")
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"{name}: the Hub answered HTTP {status}: {_first_line(error)}")
    if isinstance(error, errors.HFValidationError):
        return HubError(f"bad model name {name!r}: {_first_line(error)}")
    if isinstance(error, (OSError, ValueError)) or type(error).__module__.startswith(("httpx", "httpcore")):
        return HubError(f"download of {name} failed: {_first_line(error)}")
    raise error  # not a download problem: a bug, shown as such


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


# --- https:// ------------------------------------------------------------------------------------


def downloads_dir() -> Path:
    """Where `https://` models are cached: `<vaezoo cache>/models` (VAEZOO_CACHE_DIR overrides the cache)."""
    from vaezoo.data import cache_dir

    return cache_dir() / "models"


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _check_url(url: str, shown: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and _is_loopback(parts.hostname)):
        if parts.hostname:
            return parts
    raise HubError(f"refusing to download {shown}: vaezoo downloads models over https:// only (http:// only from localhost)")


def _limits() -> tuple[float, int]:
    """(timeout in seconds, size limit in bytes): VAEZOO_DOWNLOAD_TIMEOUT, VAEZOO_DOWNLOAD_LIMIT_MB."""
    try:
        timeout = float(os.environ.get("VAEZOO_DOWNLOAD_TIMEOUT", DEFAULT_TIMEOUT_S))
        limit = int(float(os.environ.get("VAEZOO_DOWNLOAD_LIMIT_MB", DEFAULT_LIMIT_MB)) * 1024 * 1024)
    except ValueError:
        raise HubError("VAEZOO_DOWNLOAD_TIMEOUT and VAEZOO_DOWNLOAD_LIMIT_MB must be numbers") from None
    return timeout, limit


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to https:// (or to loopback http://), never downgrading."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_url(urllib.parse.urljoin(req.full_url, newurl), newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def url_download(url: str) -> Path:
    """The model file at `url` (`#sha256=HEX` optional), cached under `downloads_dir()`: content-addressed
    when a hash is given, else keyed by the URL. The hash is checked on every use."""
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
    folder = downloads_dir() / (f"sha256-{expected}" if expected else "url-" + hashlib.sha256(base.encode()).hexdigest()[:32])
    target = folder / filename
    if target.is_file():
        if expected is None or file_sha256(target) == expected:
            return target
        target.unlink()  # damaged since it was checked: fetch it again
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise HubError(f"{base} is not in vaezoo's download cache and HF_HUB_OFFLINE=1 forbids downloading it")
    _download(base, target, expected)
    return target


def _download(url: str, target: Path, expected: str | None) -> None:
    """Stream `url` into a temporary file next to `target`, check size and hash, then rename it."""
    timeout, limit = _limits()
    created = not target.parent.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".incomplete", dir=target.parent)
    tmp = Path(tmp_name)
    digest, size = hashlib.sha256(), 0
    opener = urllib.request.build_opener(_SafeRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": "vaezoo", "Accept-Encoding": "identity"})
    try:
        with os.fdopen(fd, "wb") as handle, opener.open(request, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > limit:
                raise HubError(f"{url} is {int(announced) / 2**20:.1f} MiB, over the download limit of {limit / 2**20:.1f} MiB (VAEZOO_DOWNLOAD_LIMIT_MB)")
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise HubError(f"{url} is over the download limit of {limit / 2**20:.1f} MiB (VAEZOO_DOWNLOAD_LIMIT_MB)")
                digest.update(chunk)
                handle.write(chunk)
            if announced and announced.isdigit() and size != int(announced):
                raise HubError(f"download of {url} stopped after {size} of {announced} bytes: try again")
            handle.flush()
            os.fsync(handle.fileno())
        if expected is not None and digest.hexdigest() != expected:
            raise HashMismatch(f"{url}: its sha256 is {digest.hexdigest()}, not {expected} as the URL says: refused, nothing kept")
        os.replace(tmp, target)
    except urllib.error.HTTPError as error:
        what = {401: "unauthorised", 403: "forbidden", 404: "not found"}.get(error.code, error.reason)
        raise HubError(f"cannot download {url}: HTTP {error.code} ({what})") from None
    except urllib.error.URLError as error:
        raise HubError(f"cannot download {url}: {error.reason}") from None
    except (TimeoutError, socket.timeout):
        raise HubError(f"download of {url} timed out after {timeout:g} s (VAEZOO_DOWNLOAD_TIMEOUT)") from None
    except OSError as error:
        raise HubError(f"download of {url} failed: {error}") from None
    finally:
        tmp.unlink(missing_ok=True)
        if created and not target.exists():
            shutil.rmtree(target.parent, ignore_errors=True)


# --- push ----------------------------------------------------------------------------------------


def push_files(source: str | os.PathLike, repo_id: str | None = None) -> dict[str, bytes]:
    """What `push` uploads for a run folder or model file: the model, its samples.png and recipe.toml
    when they are next to it (recipe.toml rebuilt from the file's metadata otherwise), and README.md."""
    from vaezoo.card import model_card
    from vaezoo.modelfile import read_metadata
    from vaezoo.tomlwrite import dumps as toml_dumps

    path = Path(source)
    model = path / MODEL_FILE if path.is_dir() else path
    metadata, data = read_metadata(model)
    files = {MODEL_FILE: data}
    if (model.parent / "samples.png").is_file():
        files["samples.png"] = (model.parent / "samples.png").read_bytes()
    recipe = model.parent / "recipe.toml"
    files["recipe.toml"] = recipe.read_bytes() if recipe.is_file() else toml_dumps(metadata["recipe"]).encode()
    files["README.md"] = model_card(metadata, data, repo_id=repo_id, files=set(files)).encode()
    return files


def push(
    source: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: str | os.PathLike | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Publish a run folder (or a model file) to the Hub repository `repo_id` with a model card:
    model.safetensors, samples.png, recipe.toml and README.md. `dry_run=DIR` writes exactly those files
    into DIR instead and returns DIR; otherwise returns the repository's URL."""
    check_repo_id(repo_id)
    if revision is not None and not _REVISION.fullmatch(revision):
        raise HubError(f"bad revision {revision!r}: give a branch name")
    files = push_files(source, repo_id)
    if dry_run is not None:
        from vaezoo.files import write_bytes_atomic

        folder = Path(dry_run)
        for name, data in files.items():
            write_bytes_atomic(folder / name, data)
        return str(folder)
    hub = import_hub()
    api = hub.HfApi(token=token)
    name = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    operations = [hub.CommitOperationAdd(path_in_repo=file, path_or_fileobj=data) for file, data in files.items()]
    try:
        with _quiet_hub_logs():
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.create_commit(repo_id, operations=operations, commit_message=commit_message or _commit_message(files), revision=revision)
    except Exception as error:
        raise push_error(error, name) from None
    return f"{api.endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")


def _commit_message(files: dict[str, bytes]) -> str:
    import vaezoo

    return f"Upload {', '.join(files)} with vaezoo {vaezoo.__version__}"


def push_error(error: Exception, name: str) -> HubError:
    """One line for an upload that failed."""
    from huggingface_hub import errors

    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403) or isinstance(error, errors.LocalTokenNotFoundError):
        return HubError(f"not authorised to push to {name}: log in with `hf auth login` or set HF_TOKEN to a token with write access")
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"push to {name} failed: the Hub answered HTTP {status}: {_first_line(error)}")
    if isinstance(error, errors.OfflineModeIsEnabled):
        return HubError(f"cannot push to {name}: HF_HUB_OFFLINE=1 forbids it")
    if isinstance(error, (OSError, ValueError)) or type(error).__module__.startswith(("httpx", "httpcore")):
        return HubError(f"push to {name} failed: {_first_line(error)}")
    raise error

