"""The Hub and downloads against a hostile tester: push and symlinks, a hostile Hub endpoint,
redirects, cache links, trickling and malformed servers, truncated downloads, malformed URLs and
settings, and downloads killed half-way.

Nothing here reaches the internet: every server is a real one on 127.0.0.1 (`RawServer` answers each
request with bytes of the test's choosing, at the pace of its choosing), bounded in time."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from test_sharing import (  # noqa: F401 - fixtures
    MODEL,
    FakeHub,
    FileServer,
    _HubHandler,
    certificate,
    hub_env,
    one_error,
    run_dir,
)

from vaezoo.sharing.hub import HubError, local_model_path, parse_hf_name
from vaezoo.sharing.publish import push_files


def one_error_here(
    capsys: pytest.CaptureFixture, args: list[str], *words: str, env: dict[str, str] | None = None
) -> str:
    """As `one_error`, for `vaezoo ARGS` run by the CLI's `main` in this process: for the download
    cases that patch this process (its clock, its environment, `pwd`) or talk to a server of this test,
    many of them parametrized; `test_a_malformed_answer_in_a_fresh_process` and the others that run
    `run_cli` check that a fresh process says the same."""
    from vaezoo.cli import main
    from vaezoo.plugins.manager import reset_registry

    capsys.readouterr()
    reset_registry()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        with pytest.raises(SystemExit) as exit:
            main(list(args))
    return one_error(subprocess.CompletedProcess(args, exit.value.code, "", capsys.readouterr().err), *words)


SECRET = b"\x10\x27\x00\x00\x00\x00\x00\x00top secret, never shown"  # a header length of 10000 if read as safetensors


# --- a server that answers with raw bytes ----------------------------------------------------------


class RawServer(socketserver.ThreadingTCPServer):
    """HTTP(ish) on 127.0.0.1: `routes[path]` is the raw answer (bytes) or a function writing it to the
    socket; every request is recorded."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, routes: dict[str, bytes | Callable[[socket.socket], None]]) -> None:
        super().__init__(("127.0.0.1", 0), _RawHandler)
        self.routes = routes
        self.requests: list[str] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _RawHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(20)
        head = b""
        with _quiet():
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ")[1].decode().lstrip("/")
            self.server.requests.append(path)
            answer = self.server.routes.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            if callable(answer):
                answer(self.request)
            else:
                self.request.sendall(answer)


class _quiet:
    """Ignore the errors of a client that went away."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is not None and issubclass(kind, OSError)


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n".encode() + body


def trickle(data: bytes, every: float) -> Callable[[socket.socket], None]:
    """An answer sent one byte at a time, `every` seconds apart (gives up when the client leaves)."""

    def send(sock: socket.socket) -> None:
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(every)

    return send


@pytest.fixture
def raw():
    server = RawServer({})
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private vaezoo cache for this test (in this process and in the processes it starts)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(folder))
    return folder


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()) if folder.exists() else []


# --- push uploads only regular files of the run folder ------------------------------------------------


@pytest.fixture
def run_copy(run_dir: Path, tmp_path: Path) -> Path:  # noqa: F811 - the fixture of test_sharing
    copy = tmp_path / "run"
    copy.mkdir()
    for name in (MODEL, "samples.png", "recipe.toml"):
        shutil.copyfile(run_dir / name, copy / name)
    return copy


@pytest.mark.parametrize("name", ["samples.png", "recipe.toml", MODEL])
def test_push_refuses_a_symlink_in_the_run_folder(run_copy: Path, name: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET if name != MODEL else (run_copy / MODEL).read_bytes())  # even a link to a real model
    (run_copy / name).unlink()
    (run_copy / name).symlink_to(secret)
    out = tmp_path / "out"
    line = one_error(
        run_cli("push", str(run_copy), "my-org/x", "--dry-run", str(out)), str(run_copy / name), "symbolic link"
    )
    assert "secret" not in line.replace(str(run_copy), "")
    assert not out.exists()
    with pytest.raises(HubError, match="symbolic link"):
        push_files(run_copy)
    if name == MODEL:  # named directly too
        with pytest.raises(HubError, match="symbolic link"):
            push_files(run_copy / MODEL)


def test_push_refuses_a_pipe_or_a_folder_without_hanging(
    run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (run_copy / "samples.png").unlink()
    os.mkfifo(run_copy / "samples.png")  # reading it would wait for a writer forever
    one_error_here(
        capsys,
        ["push", str(run_copy), "my-org/x", "--dry-run", str(tmp_path / "out")],
        "samples.png",
        "not a regular file",
    )
    (run_copy / "samples.png").unlink()
    (run_copy / "recipe.toml").unlink()
    (run_copy / "recipe.toml").mkdir()
    one_error_here(
        capsys, ["push", str(run_copy), "my-org/x", "--dry-run", str(tmp_path / "out")], "recipe.toml", "a folder"
    )
    assert not (tmp_path / "out").exists()


def test_push_of_a_regular_run_folder_still_uploads_everything(run_copy: Path) -> None:
    (run_copy / "samples.png").unlink()  # optional: absent is fine
    assert sorted(push_files(run_copy)) == ["README.md", MODEL, "recipe.toml"]


# --- a hostile Hub endpoint and revisions -------------------------------------------------------------


@pytest.mark.parametrize(
    "revision",
    ["main/../../..", "..", "/main", "main/", "a//b", "a b", "a\nb", ".hidden", "main.", "x" * 201, "a/../b"],
)
def test_bad_revisions_are_refused(revision: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(HubError, match="bad revision"):
        parse_hf_name(f"hf://my-org/model@{revision}")
    one_error_here(capsys, ["inspect", f"hf://my-org/model@{revision}"], "bad revision", "hf://my-org/model@")


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", "feature/x_y-z", "a" * 40])
def test_good_revisions_are_accepted(revision: str) -> None:
    assert parse_hf_name(f"hf://my-org/model@{revision}") == ("my-org/model", revision)


def test_push_refuses_a_bad_revision(run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    one_error_here(
        capsys,
        ["push", str(run_copy), "my-org/x", "--revision", "../../x", "--dry-run", str(tmp_path / "out")],
        "bad revision",
        "../../x",
    )


class HostileHub(FakeHub):
    """A FakeHub whose download answers carry `headers` instead of the real ETag / X-Repo-Commit."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__()
        self.hostile = headers
        self.RequestHandlerClass = _HostileHandler


class _HostileHandler(_HubHandler):
    def send_header(self, keyword: str, value: str) -> None:
        super().send_header(keyword, self.server.hostile.get(keyword, value))


@pytest.mark.parametrize(
    "headers",
    [{"ETag": '"../../../../escaped"'}, {"ETag": '"TMP/escaped-absolute"'}, {"X-Repo-Commit": "../../../../escaped"}],
)
def test_hostile_hub_answers_write_nothing_outside_the_cache(
    headers: dict[str, str], run_dir: Path, tmp_path: Path
) -> None:
    headers = {key: value.replace("TMP", str(tmp_path)) for key, value in headers.items()}  # an absolute path
    server = HostileHub(headers)
    try:
        server.add_repo("my-org/m", {MODEL: (run_dir / MODEL).read_bytes()})
        env = hub_env(tmp_path, server)
        one_error(run_cli("inspect", "hf://my-org/m", env=env), "hf://my-org/m", "refused")
    finally:
        server.stop()
    assert not [p for p in tmp_path.rglob("*escaped*")]
    assert not [p for p in (tmp_path / "hf-home").rglob("*") if p.is_file() and "blobs" in p.parts]
    assert not [r for r in server.requests if r.startswith("GET")]  # refused from the HEAD, before any download


def test_hf_cache_link_leaving_the_cache_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    commit = "a" * 40
    repo = tmp_path / "hf-home" / "hub" / "models--my-org--evil"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / MODEL).symlink_to(secret)
    env = hub_env(tmp_path, None, HF_HUB_OFFLINE="1")
    for name in ("hf://my-org/evil", f"hf://my-org/evil@{commit}"):
        line = one_error(run_cli("inspect", name, env=env), name, "leading outside")
        assert "10000" not in line and "secret" not in line.split(" for ")[1]


# --- redirects never leave https ----------------------------------------------------------------------


class RedirectingTLS(FileServer):
    """https on 127.0.0.1 whose `redirects[path]` answer 302 to another URL."""

    def __init__(self, redirects: dict[str, str], files: dict[str, bytes], cert: Path, key: Path) -> None:
        self.redirects = redirects
        super().__init__(files, cert, key)
        self.RequestHandlerClass = _RedirectingHandler


class _RedirectingHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.lstrip("/")
        if path in self.server.redirects:
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.server.files.get(path)
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data or b"")))
        self.end_headers()
        self.wfile.write(data or b"")


def test_https_to_http_redirect_is_refused(
    certificate: tuple[Path, Path],
    raw: RawServer,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    raw.routes["model.safetensors"] = ok(SECRET)
    body = b"served over https"
    server = RedirectingTLS(
        {"down": raw.url("model.safetensors"), "up": "/real.safetensors"}, {"real.safetensors": body}, *certificate
    )
    try:
        url = server.url("down")
        one_error_here(capsys, ["inspect", url], "refusing the redirect", url, "https:// to http://")
        assert raw.requests == []  # the local port was never reached
        assert files_under(cache) == []
        assert local_model_path(server.url("up")).read_bytes() == body  # https to https is followed
    finally:
        server.shutdown()
        server.server_close()


def test_http_loopback_redirects_stay_on_loopback(raw: RawServer, cache: Path) -> None:
    raw.routes["there"] = (
        b"HTTP/1.1 302 Found\r\nLocation: http://example.com/model.safetensors\r\nContent-Length: 0\r\n\r\n"
    )
    with pytest.raises(HubError, match="https:// only"):
        local_model_path(raw.url("there"))
    raw.routes["here"] = (
        f"HTTP/1.1 302 Found\r\nLocation: {raw.url('model.safetensors')}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    raw.routes["model.safetensors"] = ok(b"local mirror")
    assert local_model_path(raw.url("here")).read_bytes() == b"local mirror"


# --- links in vaezoo's download cache ------------------------------------------------------------------


def test_download_cache_link_leaving_the_cache_is_not_read(
    tmp_path: Path, cache: Path, capsys: pytest.CaptureFixture
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    url = "http://127.0.0.1:9/model.safetensors"  # nothing listens: the answer must come from the cache check
    folder = cache / "models" / ("url-" + hashlib.sha256(url.encode()).hexdigest()[:32])
    folder.mkdir(parents=True)
    (folder / MODEL).symlink_to(secret)
    line = one_error_here(capsys, ["inspect", url], url, "leading outside")
    assert "10000" not in line
    done = run_cli("inspect", url, env={"VAEZOO_CACHE_DIR": str(cache)})
    assert one_error(done, url, "leading outside") and "10000" not in done.stderr
    assert secret.read_bytes() == SECRET
    (folder / MODEL).unlink()
    folder.rmdir()
    folder.symlink_to(tmp_path)  # the folder itself a link out of the cache
    (tmp_path / MODEL).write_bytes(SECRET)
    one_error_here(capsys, ["inspect", url], url, "leading outside")


# --- a whole download has a deadline ------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["body", "headers"])
def test_trickling_server_meets_the_deadline(
    answer: str, raw: RawServer, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    response = ok(b"x" * 1000)
    raw.routes["slow"] = trickle(response[response.index(b"\r\n\r\n") + 4 :] if answer == "body" else response, 0.3)
    if answer == "body":
        head = response[: response.index(b"\r\n\r\n") + 4]
        raw.routes["slow"] = lambda sock, send=raw.routes["slow"]: (sock.sendall(head), send(sock))
    monkeypatch.setenv("VAEZOO_DOWNLOAD_TIMEOUT", "2")
    start = time.monotonic()
    one_error_here(capsys, ["inspect", raw.url("slow")], raw.url("slow"), "VAEZOO_DOWNLOAD_TIMEOUT=2 s")
    assert time.monotonic() - start < 5
    assert [p for p in files_under(cache) if p.is_file()] == []


# --- malformed answers, URLs and settings: one line, exit 2 ---------------------------------------------


MALFORMED = {
    "cut-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nabc",
    "bad-status": b"HTTP/1.1 abc\r\n\r\n",
    "not-http": b"\x1b[31mhello\r\n\r\n",
    "many-headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(150)) + b"\r\n",
    "long-header": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
    "two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\nabc",
    "empty": b"",
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_answers_are_one_line(name: str, raw: RawServer, cache: Path, capsys: pytest.CaptureFixture) -> None:
    raw.routes[name] = MALFORMED[name]
    line = one_error_here(capsys, ["inspect", raw.url(name)], raw.url(name))
    assert "\x1b" not in line and "internal error" not in line
    assert files_under(cache) == []


def test_a_malformed_answer_in_a_fresh_process(raw: RawServer, cache: Path) -> None:
    raw.routes["cut"] = MALFORMED["cut-chunked"]
    one_error(
        run_cli("inspect", raw.url("cut"), env={"VAEZOO_CACHE_DIR": str(cache)}),
        raw.url("cut"),
        "cut short or not valid HTTP",
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://[::1/model.safetensors",
        "https://host:abc/model.safetensors",
        "https://host:99999/m",
        f"https://{'a' * 64}.example.com/m",
        "https://host/a b.safetensors",
        "https://host/a\r\nX-Injected: 1",
        "https://a..b/m",
        "https:///m",
        "https://hôst/m",
    ],
)
def test_malformed_urls_are_one_line(url: str, cache: Path, capsys: pytest.CaptureFixture) -> None:
    line = one_error_here(capsys, ["inspect", url], "bad URL")
    assert "internal error" not in line
    with pytest.raises(HubError, match="bad URL"):
        local_model_path(url)


@pytest.mark.parametrize("key", ["VAEZOO_DOWNLOAD_TIMEOUT", "VAEZOO_DOWNLOAD_LIMIT_MB"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "abc", "1e999"])
def test_bad_download_settings_are_one_line(
    key: str, value: str, raw: RawServer, cache: Path, capsys: pytest.CaptureFixture
) -> None:
    raw.routes[MODEL] = ok(b"x")
    one_error_here(capsys, ["inspect", raw.url(MODEL)], key, repr(value), env={key: value})
    assert raw.requests == []


def test_a_download_deadline_too_far_away_for_its_timer_is_one_line(
    raw: RawServer, cache: Path, capsys: pytest.CaptureFixture
) -> None:
    """VAEZOO_DOWNLOAD_TIMEOUT=1e300 is finite, but overflowed the deadline's timer thread
    (a traceback from the thread, then the download went on without a deadline)."""
    raw.routes[MODEL] = ok(b"x")
    env = {"VAEZOO_DOWNLOAD_TIMEOUT": "1e300"}
    one_error_here(capsys, ["inspect", raw.url(MODEL)], "VAEZOO_DOWNLOAD_TIMEOUT='1e300'", "at most 1,000,000", env=env)
    assert raw.requests == []


def test_download_cache_without_a_home(
    raw: RawServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    raw.routes[MODEL] = ok(b"x")
    url = raw.url(MODEL)
    monkeypatch.delenv("VAEZOO_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    for home in ("", "relative"):  # Path.home() would be "/" and ./relative
        one_error_here(capsys, ["inspect", url], "HOME", "VAEZOO_CACHE_DIR", env={"HOME": home})
    assert list(tmp_path.iterdir()) == []
    one_error_here(capsys, ["inspect", url], "/dev/null/.cache", url, "VAEZOO_CACHE_DIR", env={"HOME": "/dev/null"})
    monkeypatch.delenv("HOME")
    import pwd

    def no_entry(uid: int):
        raise KeyError(uid)

    monkeypatch.setattr(pwd, "getpwuid", no_entry)  # a user without a passwd entry: Path.home() fails
    one_error_here(capsys, ["inspect", url], "HOME", "VAEZOO_CACHE_DIR")
    one_error_here(capsys, ["inspect", url], "HOME", "VAEZOO_CACHE_DIR", env={"VAEZOO_CACHE_DIR": "~/cache"})
    assert raw.requests == []
    done = run_cli("inspect", url, env={"HOME": "/dev/null", "VAEZOO_CACHE_DIR": None}, timeout=120)
    one_error(done, "/dev/null/.cache", url)


# --- a truncated download is never kept -----------------------------------------------------------------


def test_truncated_download_is_not_kept(raw: RawServer, cache: Path, capsys: pytest.CaptureFixture) -> None:
    body = b"y" * 1000
    raw.routes[MODEL] = ok(body)[: -len(body) // 2]  # Content-Length 1000, 500 bytes, then the connection closes
    url = raw.url(MODEL)
    one_error_here(capsys, ["inspect", url], url, "stopped after 500 of 1000 bytes")
    assert files_under(cache) == []
    raw.routes[MODEL] = ok(body)  # the next try downloads it again, whole
    assert local_model_path(url).read_bytes() == body
    assert len(raw.requests) == 2
    assert local_model_path(url).read_bytes() == body and len(raw.requests) == 2  # then from the cache


def test_a_cut_body_without_a_length_is_not_kept(raw: RawServer, cache: Path, capsys: pytest.CaptureFixture) -> None:
    """A body with neither a Content-Length nor chunking is kept only as a whole
    safetensors file (its header describes exactly the bytes that follow); a cut one is fetched again."""
    from safetensors.torch import save

    body = save({"w": torch.arange(1000.0)})
    raw.routes[MODEL] = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + body[: len(body) // 2]
    url = raw.url(MODEL)
    one_error_here(capsys, ["inspect", url], url, "without a Content-Length and is not a whole safetensors file")
    assert files_under(cache) == []
    raw.routes[MODEL] = b"HTTP/1.0 200 OK\r\n\r\n" + body
    assert local_model_path(url).read_bytes() == body
    assert local_model_path(url).read_bytes() == body and len(raw.requests) == 2  # then from the cache


# --- downloads killed half-way leave nothing for long -----------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_partial_downloads_are_removed(raw: RawServer, cache: Path) -> None:
    models = cache / "models"
    stale = models / "url-0123" / f".model.safetensors.pid{dead_pid()}-abcd1234.incomplete"
    alive = models / "url-4567" / f".model.safetensors.pid{os.getpid()}-abcd1234.incomplete"
    other = models / "url-89ab" / "notes.incomplete"  # not a name vaezoo gives: left alone
    for path in (stale, alive, other):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"partial")
    raw.routes[MODEL] = ok(b"whole")
    assert local_model_path(raw.url(MODEL)).read_bytes() == b"whole"
    assert not stale.exists() and not stale.parent.exists()
    assert alive.exists() and other.exists()


def test_download_killed_half_way_is_cleaned_by_the_next(raw: RawServer, cache: Path) -> None:
    body = b"z" * 4000
    response = ok(body)
    head = response[: len(response) - len(body)]
    raw.routes["slow.safetensors"] = lambda sock: (sock.sendall(head + body[:100]), trickle(body[100:], 0.2)(sock))
    env = {**os.environ, "VAEZOO_CACHE_DIR": str(cache)}

    def killed_download(after: float) -> subprocess.Popen:
        """`vaezoo inspect` of the slow URL, SIGKILLed `after` seconds into its partial download."""
        child = subprocess.Popen(
            [sys.executable, "-m", "vaezoo", "inspect", raw.url("slow.safetensors")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while not list(cache.rglob("*.incomplete")) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(after)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
        return child

    child = killed_download(0.3)  # in the middle of the body
    partials = list(cache.rglob("*.incomplete"))
    assert len(partials) == 1 and f".pid{child.pid}-" in partials[0].name
    raw.routes[MODEL] = ok(b"whole")
    assert local_model_path(raw.url(MODEL)).read_bytes() == b"whole"
    assert list(cache.rglob("*.incomplete")) == []
    # the next try of the killed URL itself works at once (it failed once: the folder
    # of the partial download went with it)
    killed_download(0.0)
    raw.routes["slow.safetensors"] = ok(b"whole")
    assert local_model_path(raw.url("slow.safetensors")).read_bytes() == b"whole"
    assert list(cache.rglob("*.incomplete")) == []
