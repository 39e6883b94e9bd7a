"""Publishing a run on the Hugging Face Hub: `push` uploads a run folder's model, samples.png and
recipe.toml with a generated model card (README.md), or writes them into a folder (`dry_run`). Only
regular files of the run folder are read. Reading models by name stays in vaezoo.sharing.hub. See
docs/sharing.md."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import vaezoo
from vaezoo.errors import first_line
from vaezoo.files.atomic import write_bytes_atomic
from vaezoo.files.model_header import read_metadata
from vaezoo.recipes.toml_writer import dumps as toml_dumps
from vaezoo.sharing.card import model_card
from vaezoo.sharing.hub import (
    MODEL_FILE,
    HubError,
    check_repo_id,
    check_revision,
    import_hub,
    quiet_hub_logs,
)


def push_files(source: str | os.PathLike[str], repo_id: str | None = None) -> dict[str, bytes]:
    """What `push` uploads for a run folder or model file: the model, its samples.png and recipe.toml
    when they are next to it (recipe.toml rebuilt from the file's metadata otherwise), and README.md.
    Each must be a regular file: a symlink, folder, pipe or device by those names is refused (one
    line naming it), never followed or read."""
    path = Path(source)
    model = path / MODEL_FILE if path.is_dir() else path
    if os.path.lexists(model):
        _refuse_unless_regular(model, model.lstat())
    metadata, data = read_metadata(model)
    files = {MODEL_FILE: data}
    samples = _read_regular(model.parent / "samples.png")
    if samples is not None:
        files["samples.png"] = samples
    recipe = _read_regular(model.parent / "recipe.toml")
    files["recipe.toml"] = recipe if recipe is not None else toml_dumps(metadata["recipe"]).encode()
    files["README.md"] = model_card(metadata, data, repo_id=repo_id, files=set(files)).encode()
    return files


def _refuse_unless_regular(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = (
            "a symbolic link"
            if stat.S_ISLNK(info.st_mode)
            else "a folder"
            if stat.S_ISDIR(info.st_mode)
            else "not a regular file"
        )
        raise HubError(
            f"refusing to push {path}: it is {kind}; vaezoo pushes only regular files of the run folder "
            "(copy the file itself there, or remove it)"
        )


def _read_regular(path: Path) -> bytes | None:
    """The bytes of `path`, None when nothing is there; a HubError when it is a symlink or not a
    regular file (opened without following links, checked again on the open file)."""
    try:
        _refuse_unless_regular(path, path.lstat())
    except FileNotFoundError:
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        _refuse_unless_regular(path, os.fstat(handle.fileno()))
        return handle.read()


def push(
    source: str | os.PathLike[str],
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: str | os.PathLike[str] | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Publish a run folder (or a model file) to the Hub repository `repo_id` with a model card:
    model.safetensors, samples.png, recipe.toml and README.md. `dry_run=DIR` writes exactly those files
    into DIR instead and returns DIR; otherwise returns the repository's URL."""
    check_repo_id(repo_id)
    if revision is not None:
        check_revision(revision, revision)
    files = push_files(source, repo_id)
    if dry_run is not None:
        folder = Path(dry_run)
        for name, data in files.items():
            write_bytes_atomic(folder / name, data)
        return str(folder)
    hub = import_hub()  # huggingface_hub
    api = hub.HfApi(token=token)
    name = f"hf://{repo_id}" + (f"@{revision}" if revision else "")
    operations = [hub.CommitOperationAdd(path_in_repo=file, path_or_fileobj=data) for file, data in files.items()]
    try:
        with quiet_hub_logs():
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            api.create_commit(
                repo_id,
                operations=operations,
                commit_message=commit_message or _commit_message(files),
                revision=revision,
            )
    except Exception as error:
        raise push_error(error, name, api.endpoint, has_token=(token or hub.get_token()) is not None) from error
    return f"{api.endpoint}/{repo_id}" + (f"/tree/{revision}" if revision else "")


def _commit_message(files: dict[str, bytes]) -> str:
    return f"Upload {', '.join(files)} with vaezoo {vaezoo.__version__}"


LOGIN = "log in with `hf auth login` or set HF_TOKEN to a token with write access"


def push_error(error: Exception, name: str, endpoint: str, has_token: bool = True) -> HubError:
    """One line for an upload that failed (`endpoint`: the Hub's URL; `has_token`: whether one was set)."""
    from huggingface_hub import errors

    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403) or isinstance(error, errors.LocalTokenNotFoundError):
        return HubError(f"not authorised to push to {name}: {LOGIN}")
    if isinstance(error, errors.HfHubHTTPError):
        return HubError(f"push to {name} failed: the Hub answered HTTP {status}: {first_line(error)}")
    if isinstance(error, errors.OfflineModeIsEnabled):
        return HubError(f"cannot push to {name}: HF_HUB_OFFLINE=1 forbids it")
    if _cannot_connect(error):  # no network, a wrong HF_ENDPOINT, a Hub that does not answer
        reason = re.sub(r"^\[Errno -?\d+\] ", "", first_line(error))
        token = "" if has_token else f"; pushing also needs a token: {LOGIN}"
        return HubError(
            f"cannot push to {name}: the Hub at {endpoint} cannot be reached ({reason}): check the network "
            f"connection and HF_ENDPOINT{token}"
        )
    if isinstance(error, ValueError) or type(error).__module__.startswith(("httpx", "httpcore")):
        return HubError(f"push to {name} failed: {first_line(error)}")
    raise error


def _cannot_connect(error: Exception) -> bool:
    """Whether the request never got an answer: a connection refused or timed out, a host name not found
    (requests' errors are OSErrors; httpx's, in the clients that use it, are named so)."""
    network = type(error).__module__.startswith(("httpx", "httpcore")) and any(
        word in type(error).__name__ for word in ("Connect", "Timeout", "Network")
    )
    return isinstance(error, OSError) or network
