"""Sharing models: `hf://` names, `https://` URLs, `vaezoo push` and the model card.

Nothing here reaches the internet. `FakeHub` is a real HTTP server on 127.0.0.1 that speaks the parts
of the Hugging Face Hub protocol that huggingface_hub uses to download (`HEAD`/`GET
/{repo}/resolve/{revision}/{file}` with ETag, X-Repo-Commit, Content-Length and the X-Error-Code
headers of its errors) and to upload (`/api/repos/create`, `/api/validate-yaml`, `preupload`, `commit`
with inline base64 files, `branch`); `HF_ENDPOINT` points the real client at it, in fresh processes.
`https://` loading is tested against a TLS server with a self-signed certificate made by `openssl`."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from conftest import Command, run_cli, run_cli_batch
from tinydata import error_lines

import vaezoo

yaml = pytest.importorskip("yaml")  # PyYAML comes with huggingface_hub
pytest.importorskip("huggingface_hub")

TOKEN = "hf_test_token"
MODEL = "model.safetensors"


class FakeHub(http.server.ThreadingHTTPServer):
    """A Hub on 127.0.0.1: repositories of files at branches, private ones behind `TOKEN`."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos: dict[str, dict] = {}
        self.requests: list[str] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        self.repos[repo_id] = {"private": private, "refs": {}, "commits": {}}
        return self.commit(repo_id, "main", files)

    def commit(self, repo_id: str, revision: str, files: dict[str, bytes]) -> str:
        repo = self.repos[repo_id]
        parent = repo["commits"].get(repo["refs"].get(revision), {})
        tree = {**parent, **files}
        oid = hashlib.sha1(
            json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in tree.items())).encode() + revision.encode()
        ).hexdigest()
        repo["commits"][oid] = tree
        repo["refs"][revision] = oid
        return oid

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo["commits"][repo["refs"][revision]]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _HubHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    # --- helpers
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header(
            "Content-Length",
            str(len(body)) if not (headers and "Content-Length" in headers) else headers["Content-Length"],
        )
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head: bool = False) -> None:
        headers = {"X-Error-Message": message, "Content-Type": "application/json"}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, b"" if head else json.dumps({"error": message}).encode(), headers, head)

    def _json(self, status: int, data: object) -> None:
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

    def _auth(self) -> bool | None:
        """True: the right token; False: a wrong one; None: none."""
        given = self.headers.get("Authorization")
        return None if given is None else given == f"Bearer {TOKEN}"

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # --- downloads
    def do_HEAD(self) -> None:
        self._resolve(head=True)

    def do_GET(self) -> None:
        self._resolve(head=False)

    def _resolve(self, head: bool) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        parts = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, None, "Not Found", head)
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        auth = self._auth()
        if auth is False:
            return self._error(401, None, "Invalid credentials in Authorization header", head)
        repo = self.server.repos.get(repo_id)
        if repo is None or (repo["private"] and not auth):
            return self._error(
                401, "RepoNotFound", "Repository not found", head
            )  # what the Hub answers without a token
        commit = repo["refs"].get(revision, revision if revision in repo["commits"] else None)
        if commit is None:
            return self._error(404, "RevisionNotFound", "Invalid rev id", head)
        data = repo["commits"][commit].get(filename)
        if data is None:
            return self._send(
                404,
                b"" if head else b"Entry not found",
                {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit},
                head,
            )
        headers = {
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
            "X-Repo-Commit": commit,
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Content-Length": str(len(data)),
        }
        self._send(200, data, headers, head)

    # --- uploads
    def do_POST(self) -> None:
        self.server.requests.append(f"POST {self.path}")
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        body = self._body()
        if not self._auth():
            return self._error(401, None, "Invalid credentials in Authorization header")
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in self.server.repos:  # the Hub's 409 carries the url too; create_repo(exist_ok=True) reads it
                return self._send(
                    409,
                    json.dumps(
                        {"error": "You already created this model repo", "url": f"{self.server.url}/{repo_id}"}
                    ).encode(),
                    {"Content-Type": "application/json"},
                )
            self.server.add_repo(
                repo_id,
                {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                private=payload.get("visibility") == "private" or bool(payload.get("private")),
            )
            return self._json(200, {"url": f"{self.server.url}/{repo_id}"})
        if path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            try:
                assert content.startswith("---\n")
                matter = yaml.safe_load(content.split("---\n")[1])
                assert isinstance(matter, dict)
            except Exception as error:  # noqa: BLE001 - the answer says what is wrong
                return self._json(400, {"errors": [{"message": f"bad front matter: {error}"}]})
            return self._json(200, {"errors": [], "warnings": []})
        parts = path.strip("/").split("/")  # api models ORG NAME (preupload|commit|branch) REV
        if len(parts) != 6 or parts[:2] != ["api", "models"] or "/".join(parts[2:4]) not in self.server.repos:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo_id, action, revision = "/".join(parts[2:4]), parts[4], parts[5]
        repo = self.server.repos[repo_id]
        if action == "branch":
            if revision in repo["refs"]:
                return self._error(409, None, "Branch already exists")
            repo["refs"][revision] = repo["refs"]["main"]
            return self._json(200, {})
        if revision not in repo["refs"]:
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        if action == "preupload":
            files = json.loads(body)["files"]
            return self._json(
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files
                    ]
                },
            )
        if action == "commit":
            added = {}
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    assert item["value"]["encoding"] == "base64"
                    added[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] != "header":
                    return self._error(400, None, f"unsupported commit operation {item['key']}")
            oid = self.server.commit(repo_id, revision, added)
            return self._json(
                200,
                {"commitUrl": f"{self.server.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None},
            )
        return self._error(404, None, "Not Found")


class FileServer(http.server.ThreadingHTTPServer):
    """Static files over http or https (with `cert`) on 127.0.0.1."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes], cert: Path | None = None, key: Path | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _FileHandler)
        self.files = files
        self.scheme = "https" if cert else "http"
        if cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}/{path}"


class _FileHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(small_run: Path) -> Path:
    """A small real model (conftest's `small_run`: cifar-vae with tiny widths, one epoch on 64 images)."""
    return small_run


@pytest.fixture(scope="module")
def published(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """What `vaezoo push RUN my-org/cifar-tiny --dry-run DIR` writes, by file name."""
    folder = tmp_path_factory.mktemp("dry-run")
    done = run_cli("push", str(run_dir), "my-org/cifar-tiny", "--dry-run", str(folder))
    assert done.returncode == 0, done.stderr
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.fixture
def hub(published: dict[str, bytes]):
    server = FakeHub()
    server.add_repo("my-org/cifar-tiny", published)
    server.add_repo("my-org/private-tiny", published, private=True)
    server.add_repo("my-org/not-a-model", {"README.md": b"# nothing here\n"})
    yield server
    server.stop()


def hub_env(tmp_path: Path, server: FakeHub | None, **extra: str) -> dict[str, str]:
    """Environment for a fresh process: the fake Hub, a private HF cache, no token on disk."""
    env = {
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_TOKEN": "",
    }
    if server is not None:
        env["HF_ENDPOINT"] = server.url
    env.update(extra)
    return env


def one_error(done: subprocess.CompletedProcess, *words: str) -> str:
    """The process failed with exit code 2 and one line on stderr containing `words`."""
    lines = error_lines(done.stderr)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert len(lines) == 1 and lines[0].startswith("vaezoo: error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def leftovers(folder: Path) -> list[Path]:
    """Files in a cache folder that a failed download must not leave: partial downloads, blobs, model
    files (huggingface_hub's empty `.no_exist` markers of missing files excepted)."""
    return [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and ".no_exist" not in p.parts
        and (p.name.endswith(".incomplete") or "blobs" in p.parts or p.suffix == ".safetensors")
    ]


# --- hf:// -------------------------------------------------------------------------------------


def test_sample_by_hub_name_then_offline_from_the_cache(hub: FakeHub, run_dir: Path, tmp_path: Path) -> None:
    env = hub_env(tmp_path, hub)
    local, online = run_cli_batch(
        [
            ["sample", str(run_dir / MODEL), "-n", "16", "--out", str(tmp_path / "local.png")],
            ["sample", "hf://my-org/cifar-tiny", "-n", "16", "--out", str(tmp_path / "online.png")],
        ],
        tmp_path,
        env=env,
    )
    assert local.returncode == 0, local.stderr
    assert online.returncode == 0, online.stderr
    assert any(r.startswith("HEAD /my-org/cifar-tiny/resolve/main/model.safetensors") for r in hub.requests)
    assert any(r.startswith("GET /my-org/cifar-tiny/resolve/main/model.safetensors") for r in hub.requests)
    assert (tmp_path / "online.png").read_bytes() == (tmp_path / "local.png").read_bytes()
    cached = list((tmp_path / "hf-home" / "hub" / "models--my-org--cifar-tiny").rglob(MODEL))
    assert cached and cached[0].read_bytes() == (run_dir / MODEL).read_bytes()

    hub.stop()  # nothing answers now
    offline = run_cli(
        "sample",
        "hf://my-org/cifar-tiny",
        "-n",
        "16",
        "--out",
        str(tmp_path / "offline.png"),
        env={**env, "HF_HUB_OFFLINE": "1"},
    )
    assert offline.returncode == 0, offline.stderr
    assert (tmp_path / "offline.png").read_bytes() == (tmp_path / "local.png").read_bytes()


def test_python_api_and_other_commands_take_hub_names(hub: FakeHub, run_dir: Path, tmp_path: Path) -> None:
    env = hub_env(tmp_path, hub)
    code = (
        "import vaezoo; m = vaezoo.load('hf://my-org/cifar-tiny@main'); print(tuple(m.sample(3).shape), "
        "m.recipe['name'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "(3, 3, 32, 32) cifar-vae"
    commands = [["inspect", "hf://my-org/cifar-tiny", "--json"], ["card", "hf://my-org/cifar-tiny"]]
    info, card = run_cli_batch(commands, tmp_path, env=env)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["sha256"] == hashlib.sha256((run_dir / MODEL).read_bytes()).hexdigest()
    assert card.returncode == 0 and 'vaezoo.load("hf://my-org/cifar-tiny")' in card.stdout


def test_hub_errors_are_one_line(hub: FakeHub, tmp_path: Path) -> None:
    env = hub_env(tmp_path, hub)
    refused = {
        ("no such repository",): "hf://my-org/no-such-model",  # 401 RepoNotFound, as the Hub answers
        ("has no model.safetensors",): "hf://my-org/not-a-model",  # 404 EntryNotFound
        ("no such revision",): "hf://my-org/cifar-tiny@v9",  # 404 RevisionNotFound
        ("private", "HF_TOKEN"): "hf://my-org/private-tiny",  # 401 without a token
    }
    for words, done in zip(refused, run_cli_batch([["inspect", name] for name in refused.values()], tmp_path, env=env)):
        one_error(done, *words)
    one_error(
        run_cli("inspect", "hf://my-org/private-tiny", env={**env, "HF_TOKEN": "wrong"}), "not authorised (HTTP 401)"
    )
    one_error(run_cli("sample", "hf://my-org/never-cached", env={**env, "HF_HUB_OFFLINE": "1"}), "HF_HUB_OFFLINE=1")
    assert leftovers(tmp_path / "hf-home") == []
    allowed = run_cli("inspect", "hf://my-org/private-tiny", "--json", env={**env, "HF_TOKEN": TOKEN})
    assert allowed.returncode == 0, allowed.stderr


def test_unreachable_hub_without_cache(tmp_path: Path) -> None:
    server = FakeHub()
    url = server.url
    server.stop()  # a port where nothing listens
    env = hub_env(tmp_path, None, HF_ENDPOINT=url)
    one_error(run_cli("inspect", "hf://my-org/cifar-tiny", env=env, timeout=200), "cannot reach", url)


def test_push_to_an_unreachable_hub_is_one_line_about_the_connection_and_the_token(
    run_dir: Path, tmp_path: Path
) -> None:
    """No socket error alone: the line names the Hub that cannot be reached, what to check, and the
    token when none is set."""
    server = FakeHub()
    url = server.url
    server.stop()  # a port on 127.0.0.1 where nothing listens
    env = hub_env(tmp_path, None, HF_ENDPOINT=url)
    push = ["push", str(run_dir), "my-org/cifar-tiny"]
    without, with_token = run_cli_batch([push, Command(*push, env={"HF_TOKEN": TOKEN})], tmp_path, env=env)
    line = one_error(without, f"the Hub at {url} cannot be reached", "HF_ENDPOINT", "needs a token", "HF_TOKEN")
    assert "[Errno" not in line
    assert "token" not in one_error(with_token, f"the Hub at {url} cannot be reached", "HF_ENDPOINT")


BAD_HUB_NAMES = ["hf://", "hf://only", "hf://a/b/c", "hf://a/b@", "hf:/a/b", "hf://a/../b"]


@pytest.fixture(scope="module")
def bad_hub_names(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess]:
    """`vaezoo sample NAME` for each of BAD_HUB_NAMES, in one fresh process."""
    root = tmp_path_factory.mktemp("bad-hub-names")
    return dict(zip(BAD_HUB_NAMES, run_cli_batch([["sample", name] for name in BAD_HUB_NAMES], root)))


@pytest.mark.parametrize("name", BAD_HUB_NAMES)
def test_bad_hub_names(name: str, bad_hub_names: dict) -> None:
    one_error(bad_hub_names[name], "hf://")


BLOCK_HUB = "import sys; sys.modules['huggingface_hub'] = None; from vaezoo.cli import main; main(sys.argv[1:])"


@pytest.mark.parametrize("args", [["sample", "hf://my-org/cifar-tiny"], ["push", "RUN", "my-org/x"]])
def test_missing_extra(args: list[str], run_dir: Path, tmp_path: Path) -> None:
    args = [str(run_dir) if a == "RUN" else a for a in args]
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_HUB, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **hub_env(tmp_path, None)},
        timeout=300,
    )
    one_error(done, "pip install 'vaezoo[hub]'")


def test_local_files_and_cheap_commands_do_not_import_huggingface_hub(run_dir: Path) -> None:
    code = (
        "import sys\nfrom vaezoo.cli import main\n"
        "for argv in (['--help'], ['list'], ['inspect', sys.argv[1]]):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code in (0, None), "
        "(argv, e.code)\n"
        "    assert 'huggingface_hub' not in sys.modules, argv\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(run_dir / MODEL)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


# --- https:// -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def https_server(run_dir: Path, certificate: tuple[Path, Path]):
    server = FileServer({f"models/{MODEL}": (run_dir / MODEL).read_bytes()}, *certificate)
    yield server
    server.shutdown()
    server.server_close()


def test_https_url_with_sha256(
    https_server: FileServer, certificate: tuple[Path, Path], run_dir: Path, tmp_path: Path
) -> None:
    digest = hashlib.sha256((run_dir / MODEL).read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    env = {"SSL_CERT_FILE": str(certificate[0]), "VAEZOO_CACHE_DIR": str(cache)}
    url = https_server.url(f"models/{MODEL}")
    done = run_cli("sample", f"{url}#sha256={digest}", "-n", "16", "--out", str(tmp_path / "s.png"), env=env)
    assert done.returncode == 0, done.stderr
    assert (cache / "models" / f"sha256-{digest}" / MODEL).read_bytes() == (run_dir / MODEL).read_bytes()
    assert not [p for p in cache.rglob("*") if p.name.endswith(".incomplete")]
    https_server.files.clear()  # served from the cache now, hash checked again
    again = run_cli("inspect", f"{url}#sha256={digest}", "--json", env=env)
    assert again.returncode == 0 and json.loads(again.stdout)["sha256"] == digest


def test_https_wrong_hash_is_refused_and_nothing_is_kept(
    https_server: FileServer, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = {"SSL_CERT_FILE": str(certificate[0]), "VAEZOO_CACHE_DIR": str(cache)}
    url = https_server.url(f"models/{MODEL}")
    refused = {
        ("sha256", "refused"): Command("sample", f"{url}#sha256={'0' * 64}"),
        ("#sha256=",): Command("sample", f"{url}#sha256=abc"),
        ("download limit",): Command("sample", url, env={"VAEZOO_DOWNLOAD_LIMIT_MB": "0.001"}),
        ("HTTP 404",): Command("sample", https_server.url("models/missing.safetensors")),
        ("HF_HUB_OFFLINE=1",): Command("sample", url, env={"HF_HUB_OFFLINE": "1"}),
    }
    for words, done in zip(refused, run_cli_batch(list(refused.values()), tmp_path, env=env)):
        one_error(done, *words)
    assert not [p for p in cache.rglob("*") if p.is_file()]
    # TLS is verified (in a fresh process: no certificate of the test's)
    one_error(run_cli("sample", url, env={"VAEZOO_CACHE_DIR": str(cache)}), "CERTIFICATE_VERIFY_FAILED")
    assert not [p for p in cache.rglob("*") if p.is_file()]


def test_plain_http_only_from_localhost(run_dir: Path, tmp_path: Path) -> None:
    server = FileServer({MODEL: (run_dir / MODEL).read_bytes()})
    try:
        remote, local = run_cli_batch(
            [["inspect", "http://example.com/model.safetensors"], ["inspect", server.url(MODEL), "--json"]],
            tmp_path,
            env={"VAEZOO_CACHE_DIR": str(tmp_path / "cache")},
        )
        one_error(remote, "https://")
        assert local.returncode == 0, local.stderr
        assert json.loads(local.stdout)["sha256"] == hashlib.sha256((run_dir / MODEL).read_bytes()).hexdigest()
    finally:
        server.shutdown()
        server.server_close()


# --- push and the card ----------------------------------------------------------------------------


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_dry_run_writes_what_would_be_uploaded(published: dict[str, bytes], run_dir: Path) -> None:
    from vaezoo.files.model_header import read_metadata

    assert sorted(published) == ["README.md", "model.safetensors", "recipe.toml", "samples.png"]
    for name in ("model.safetensors", "recipe.toml", "samples.png"):
        assert published[name] == (run_dir / name).read_bytes()
    card = published["README.md"].decode()
    matter = front_matter(card)
    metadata, _ = read_metadata(run_dir / MODEL)
    trained = metadata["training"]["metrics"]
    assert matter["library_name"] == "vaezoo"
    assert {"vaezoo", "vae", "cifar-vae"} <= set(matter["tags"])
    assert matter["datasets"] == ["uoft-cs/cifar10"]
    result = matter["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["neg-elbo"] == pytest.approx(trained["test_loss"], abs=1e-4)
    assert values["reconstruction-nll"] == pytest.approx(trained["test_recon"], abs=1e-4)
    assert values["kl"] == pytest.approx(trained["test_kl"], abs=1e-4)
    body = card.split("---\n", 2)[2]
    assert f"```bash\npip install 'vaezoo[hub]=={vaezoo.__version__}'\n```" in body
    assert 'import vaezoo\nmodel = vaezoo.load("hf://my-org/cifar-tiny")\nimages = model.sample(16)' in body
    assert "![Samples from the prior](samples.png)" in body
    assert f"{trained['test_loss']:.4f}" in body and hashlib.sha256(published[MODEL]).hexdigest() in body
    shown = run_cli("card", str(run_dir), "--repo", "my-org/cifar-tiny")
    assert shown.returncode == 0 and shown.stdout == card


def test_install_lines_name_each_plugin_distribution() -> None:
    from vaezoo.sharing.card import install_lines

    components = [
        {"kind": "model", "name": "laplace", "distribution": "vaezoo-example-plugin", "version": "0.2.0"},
        {"kind": "encoder", "name": "conv", "distribution": "vaezoo", "version": "0.1.0"},
        {"kind": "loss", "name": "bce-kl", "distribution": "vaezoo", "version": "0.1.0"},
    ]
    assert install_lines(components) == [
        "pip install 'vaezoo[hub]==0.1.0'",
        "pip install 'vaezoo-example-plugin==0.2.0'",
    ]


def test_push_uploads_through_the_hub_api_and_loads_back(
    hub: FakeHub, published: dict[str, bytes], run_dir: Path, tmp_path: Path
) -> None:
    env = hub_env(tmp_path, hub)
    one_error(run_cli("push", str(run_dir), "my-org/pushed", env=env), "not authorised", "HF_TOKEN")
    env["HF_TOKEN"] = TOKEN
    done = run_cli("push", str(run_dir), "my-org/pushed", "--private", env=env)
    assert done.returncode == 0, done.stderr
    assert hub.repos["my-org/pushed"]["private"]
    files = hub.files("my-org/pushed")
    assert {name: files[name] for name in published} == {
        **published,
        "README.md": published["README.md"].replace(b"cifar-tiny", b"pushed"),
    }
    commands = [
        ["sample", "hf://my-org/pushed", "-n", "4", "--out", str(tmp_path / "s.png")],
        ["push", str(run_dir / MODEL), "my-org/pushed", "--revision", "v1"],
        ["inspect", "hf://my-org/pushed@v1", "--json"],
    ]
    sample, branch, info = run_cli_batch(commands, tmp_path, env=env)  # with the token
    assert sample.returncode == 0, sample.stderr
    one_error(
        run_cli("sample", "hf://my-org/pushed", env={**env, "HF_TOKEN": "", "HF_HOME": str(tmp_path / "other")}),
        "no such repository",
    )
    assert branch.returncode == 0, branch.stderr
    assert "v1" in hub.repos["my-org/pushed"]["refs"]
    assert info.returncode == 0 and json.loads(info.stdout)["sha256"] == hashlib.sha256(published[MODEL]).hexdigest()


def test_push_python_api_dry_run(run_dir: Path, tmp_path: Path) -> None:
    import vaezoo

    where = vaezoo.push(run_dir, "my-org/api", dry_run=tmp_path / "out")
    assert sorted(os.listdir(where)) == ["README.md", "model.safetensors", "recipe.toml", "samples.png"]
    with pytest.raises(vaezoo.VaezooError, match="ORG/NAME"):
        vaezoo.push(run_dir, "no-org", dry_run=tmp_path / "bad")
    with pytest.raises(vaezoo.VaezooError, match="does not exist"):
        vaezoo.push(tmp_path / "nothing", "my-org/x", dry_run=tmp_path / "bad")


def test_card_of_a_conditional_family_samples_with_labels(run_dir: Path) -> None:
    from vaezoo.files.model_header import read_metadata
    from vaezoo.sharing.card import model_card

    metadata, data = read_metadata(run_dir / MODEL)
    assert metadata["data"]["conditional"] is False
    labelled = (
        'import torch, vaezoo\nmodel = vaezoo.load("hf://my-org/cond")\n'
        "images = model.sample(16, torch.arange(16) % 10)"
    )
    assert labelled not in model_card(metadata, data, repo_id="my-org/cond")
    # any family that says it takes labels (a third-party one here), and a file without the key whose family is cvae
    third_party = {
        **metadata,
        "recipe": {**metadata["recipe"], "model": {"name": "my-conditional"}},
        "data": {**metadata["data"], "conditional": True},
    }
    older = {
        **metadata,
        "recipe": {**metadata["recipe"], "model": {"name": "cvae"}},
        "data": {k: v for k, v in metadata["data"].items() if k != "conditional"},
    }
    for conditional in (third_party, older):
        card = model_card(conditional, data, repo_id="my-org/cond")
        matter = front_matter(card)
        assert "pipeline_tag" not in matter and conditional["recipe"]["model"]["name"] in matter["tags"]
        assert labelled in card
        assert (
            "by index or name (0 airplane, 1 automobile, 2 bird, 3 cat," in card
            and "--label airplane --out airplane.png" in card
        )
    assert "--label" not in model_card(metadata, data, repo_id="my-org/cond")
