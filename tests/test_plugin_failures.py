"""Hostile plugins, hostile text and hostile options (docs/reliability.md): a broken plugin is
isolated (one warning naming it and its distribution, the rest work, `vaezoo plugins` says it failed);
text from files and plugins reaches the terminal as text (no terminal controls, no rich markup);
absurd option values are one line naming the option; SIGTERM and SIGHUP exit 130 from the first line
of vaezoo's code. Plugins are installed for real: a distribution with entry points on PYTHONPATH."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli, run_cli_batch
from tinydata import TINY_ARGS, TWO_EPOCHS, error_lines, one_line

from vaezoo.errors import printable
from vaezoo.plugins.registry import registration_problem

ESC = "\x1b"
NASTY = "\x1b]0;pwned\x07 \x1b[2J \x9b31m \r\b"  # retitle the terminal, clear it, C1 CSI, CR, backspace
MARKUP = "[red]x[/red] [/] [bold]"  # [/] alone is a rich MarkupError


def install(root: Path, plugins: dict[str, str]) -> dict[str, str]:
    """A distribution `hostile-plugins` 0.1 in `root` whose `vaezoo` entry point NAME is module NAME
    with the given source; returns the environment that puts it on the path."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / "hostile_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hostile-plugins\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(
        "[vaezoo]\n" + "".join(f"{name} = {name}\n" for name in plugins), encoding="utf-8"
    )
    for name, source in plugins.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}


def hook(name: str, body: str) -> str:
    return f"import vaezoo\n\n@vaezoo.hookimpl\ndef {name}(register):\n    {body}\n"


# plugin -> what its warning says; every one of them must be isolated
BROKEN = {
    "h_summary_int": (hook("register_encoders", "register('sumint', 'x:Y', summary=42)"), "summary of type int"),
    "h_name_int": (hook("register_encoders", "register(123, 'x:Y')"), "invalid name of type int"),
    "h_name_empty": (hook("register_encoders", "register('', 'x:Y')"), "invalid name ''"),
    "h_name_control": (hook("register_encoders", r"register('a\x1b[2Jb', 'x:Y')"), r"invalid name 'a\x1b[2Jb'"),
    "h_not_callable": (hook("register_priors", "register('forty-two', 42)"), "prior 'forty-two' as a int"),
    "h_recipe_list": (hook("register_recipes", "register('listy', ['not', 'a', 'table'])"), "recipe 'listy' as a list"),
    "h_base_import": ("raise BaseException('boom at import')\n", "failed to load: BaseException: boom at import"),
    "h_exit_import": ("import sys\nsys.exit(3)\n", "failed to load: SystemExit: 3"),
    "h_base_hook": (
        hook("register_priors", "register('early-prior', 'x:Y')")
        + "\n\n"
        + hook("register_losses", "raise BaseException('boom in hook')"),
        "register_losses raised BaseException: boom in hook",
    ),
    "h_exit_hook": (hook("register_decoders", "raise SystemExit(4)"), "register_decoders raised SystemExit: 4"),
    "h_markup_error": (
        f"raise RuntimeError({(MARKUP + NASTY)!r})\n",
        "failed to load: RuntimeError: [red]x[/red] [/] [bold]",
    ),
}
WORKING = {
    "h_good": hook("register_encoders", "register('good-enc', 'x:Y', summary='fine')"),
    "h_markup": hook(
        "register_encoders", f"register('markup-enc', 'x:Y', summary={(MARKUP + NASTY + ' :thumbs_up:')!r})"
    ),
    "h_exits_later": (  # registers fine; its encoders end the process when built
        "import sys\nimport vaezoo\n\nclass Exits:\n    def __init__(self, **kwargs):\n        sys.exit(3)\n\n"
        "class Raises:\n    def __init__(self, **kwargs):\n        raise BaseException('bare')\n\n"
        + hook("register_encoders", "register('exit-enc', Exits); register('base-enc', Raises)")
    ),
}


@pytest.fixture(scope="module")
def hostile_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return install(
        tmp_path_factory.mktemp("hostile"), {**{name: code for name, (code, _) in BROKEN.items()}, **WORKING}
    )


def assert_no_controls(result: subprocess.CompletedProcess) -> None:
    for stream in (result.stdout, result.stderr):
        assert ESC not in stream and "\x07" not in stream and "\x9b" not in stream and "\r" not in stream, stream[
            -2000:
        ]
    assert (
        "MarkupError" not in result.stderr
        and "Traceback" not in result.stderr
        and "internal error" not in result.stderr
    ), result.stderr[-2000:]


# ---- one broken plugin never takes the others down -------------------------------------------------


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["plugins"], ["plugins", "--json"]])
def test_each_broken_plugin_is_one_warning_and_the_rest_work(hostile_path: dict[str, str], command: list[str]) -> None:
    result = run_cli(*command, env=hostile_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_no_controls(result)
    warnings = [line for line in error_lines(result.stderr) if line.startswith("vaezoo: warning:")]
    assert len(warnings) == len(BROKEN) == len(error_lines(result.stderr)), result.stderr
    for name, (_, message) in BROKEN.items():
        (line,) = [line for line in warnings if f"plugin {name!r} (hostile-plugins) failed" in line]
        assert printable(message) in line, (name, line)
    for expected in ("cifar-vae", "conv") if command[0] == "list" else ("h_good", "zoo"):
        assert expected in result.stdout


def test_plugins_reports_the_broken_ones_as_failed_and_keeps_nothing_of_theirs(hostile_path: dict[str, str]) -> None:
    rows = {row["name"]: row for row in json.loads(run_cli("plugins", "--json", env=hostile_path).stdout)}
    for name in BROKEN:
        assert rows[name]["status"] == "failed" and rows[name]["error"], rows[name]
        assert not any(rows[name]["registers"].values()), rows[name]  # h_base_hook's early prior is gone too
    assert rows["h_good"]["status"] == "ok" and rows["h_good"]["registers"]["encoders"] == ["good-enc"]
    priors = {item["name"] for item in json.loads(run_cli("list", "priors", "--json", env=hostile_path).stdout)}
    assert "normal" in priors and "early-prior" not in priors


def test_a_run_works_beside_broken_plugins(cifar: Path, tmp_path: Path, hostile_path: dict[str, str]) -> None:
    result = run_cli(
        "run",
        "cifar-vae",
        "--epochs",
        "1",
        "--limit",
        "32",
        "--set",
        "train.test_limit=16",
        "--device",
        "cpu",
        *TINY_ARGS,
        "--data-dir",
        str(cifar),
        "--out",
        str(tmp_path / "run"),
        env=hostile_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert_no_controls(result)


EXITING_ENCODERS = ["exit-enc", "base-enc"]


@pytest.fixture(scope="module")
def exiting_runs(cifar: Path, hostile_path: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """EXITING_ENCODERS item -> a run with that encoder: the runs in one fresh process."""
    root = tmp_path_factory.mktemp("exiting")
    base = ["run", "cifar-vae", "--epochs", "1", "--limit", "16", "--device", "cpu", *TINY_ARGS]
    commands = [
        [*base, "--set", f"encoder.name={encoder}", "--data-dir", str(cifar), "--out", str(root / encoder / "run")]
        for encoder in EXITING_ENCODERS
    ]
    return dict(zip(EXITING_ENCODERS, run_cli_batch(commands, root, env=hostile_path)))


@pytest.mark.parametrize("encoder", EXITING_ENCODERS)
def test_a_component_that_exits_or_raises_a_base_exception_is_one_line(exiting_runs: dict, encoder: str) -> None:
    result = exiting_runs[encoder]
    assert f"encoder.name={encoder}" in result.args
    lines = [line for line in error_lines(result.stderr) if not line.startswith("vaezoo: warning:")]
    assert result.returncode in (1, 2) and len(lines) == 1 and "Traceback" not in result.stderr, (
        result.returncode,
        result.stderr[-2000:],
    )
    assert ("SystemExit: 3" if encoder == "exit-enc" else "BaseException: bare") in lines[0]


def test_ctrl_c_while_a_plugin_imports_still_interrupts(tmp_path: Path) -> None:
    env = install(tmp_path / "site", {"h_interrupt": "raise KeyboardInterrupt\n"})
    result = run_cli("list", env=env)
    assert result.returncode == 130 and error_lines(result.stderr) == ["vaezoo: interrupted"], result.stderr[-2000:]


def test_one_name_of_two_distributions_loads_and_one_distribution_twice_fails_its_second(tmp_path: Path) -> None:
    env = install(
        tmp_path / "site",
        {
            "h_twin": hook("register_encoders", "register('conv', 'x:Y')"),  # the zoo has `conv`: side by side
            "h_once": hook("register_priors", "register('twice', 'x:Y')"),
            "h_twice": hook("register_priors", "register('twice', 'x:Z')"),
        },
    )
    result = run_cli("list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    (line,) = error_lines(result.stderr)
    assert "plugin 'h_twice' (hostile-plugins) failed" in line
    assert "prior 'twice' is registered twice by distribution hostile-plugins: by plugin 'h_once'" in line
    items = json.loads(result.stdout)
    conv = {item["qualified_name"] for item in items if item["kind"] == "encoder" and item["name"] == "conv"}
    assert conv == {"vaezoo:conv", "hostile-plugins:conv"}
    assert [item["plugin"] for item in items if item["name"] == "twice"] == ["h_once"]


@pytest.mark.parametrize(
    ("kind", "name", "target", "summary", "expected"),
    [
        ("encoders", "ok", "module:Class", "a summary", None),
        ("encoders", "ok", object, None, None),
        ("recipes", "ok", {"summary": "fine"}, None, None),
        ("encoders", 7, "m:C", None, "invalid name of type int"),
        ("encoders", "", "m:C", None, "invalid name ''"),
        ("encoders", " padded", "m:C", None, "invalid name"),
        ("encoders", "x" * 101, "m:C", None, "invalid name"),
        ("encoders", "new\nline", "m:C", None, "invalid name"),
        ("encoders", "ok", "m:C", ["a list"], "summary of type list"),
        ("encoders", "ok", "no-colon", None, "'module:attribute'"),
        ("encoders", "ok", 42, None, "as a int"),
        ("recipes", "ok", "m:C", None, "a recipe is a table"),
        ("recipes", "ok", {"summary": 3}, None, "summary of type int"),
    ],
)
def test_registration_problem(kind: str, name: object, target: object, summary: object, expected: str | None) -> None:
    problem = registration_problem(kind, name, target, summary)
    assert problem is None if expected is None else expected in problem, problem


# ---- text from plugins and files reaches the terminal as text ---------------------------------------


def test_printable_shows_controls_as_escapes() -> None:
    shown = printable("a" + NASTY + "\u202e\u2028\x00\x7f")
    assert shown.isprintable() and "\\x1b]0;pwned\\x07" in shown and "\\u202e" in shown
    assert printable("two\nlines\tand\x1b", lines=True) == "two\nlines\tand\\x1b"
    assert printable("plain text, [markup] stays") == "plain text, [markup] stays"


def test_a_plugins_markup_and_controls_are_shown_as_text(hostile_path: dict[str, str]) -> None:
    result = run_cli("list", "encoders", env=hostile_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_no_controls(result)
    text = " ".join(result.stdout.split())  # the table may wrap the summary
    assert "[red]x[/red] [/] [bold]" in text and "\\x1b]0;pwned\\x07" in text and ":thumbs_up:" in text
    plugins = run_cli("plugins", env=hostile_path)
    assert plugins.returncode == 0 and "[red]x[/red]" in " ".join(plugins.stdout.split())
    assert_no_controls(plugins)


def hostile_copy(small_model: Path, target: Path, text: str) -> Path:
    """The model file with `text` in the recipe's name and summary, each component's name and plugin,
    the training device and a metrics key (strings in string fields, so the schema's types hold)."""
    from tinydata import rewrite

    def change(metadata: dict) -> None:
        metadata["vaezoo.recipe"]["name"] = "cifar " + text
        metadata["vaezoo.recipe"]["summary"] = "summary " + text
        for record in metadata["vaezoo.components"]:
            record["name"] += " " + text
            record["plugin"] += " " + text
        metadata["vaezoo.training"]["device"] = "cpu " + text
        metadata["vaezoo.training"]["metrics"]["key " + text] = 1.5

    return rewrite(small_model, target, change)


def test_markup_in_a_model_file_is_shown_as_text(small_model: Path, tmp_path: Path) -> None:
    model = hostile_copy(small_model, tmp_path / "markup.safetensors", MARKUP)
    for command in (["inspect"], ["card"]):
        result = run_cli(*command, str(model))
        assert result.returncode == 0, (command, result.stderr[-2000:])
        assert_no_controls(result)
        assert "cifar " + MARKUP in result.stdout, command
    inspect = run_cli("inspect", str(model))
    assert (
        "summary " + MARKUP in inspect.stdout
        and "key " + MARKUP in inspect.stdout
        and "conv " + MARKUP in inspect.stdout
    )
    described = json.loads(run_cli("inspect", "--json", str(model)).stdout)
    assert described["recipe"]["summary"] == "summary " + MARKUP


def test_control_characters_in_a_model_file_never_reach_the_terminal(small_model: Path, tmp_path: Path) -> None:
    """The file's schema may refuse them (one line, exit 2) or vaezoo shows them escaped (exit 0)."""
    model = hostile_copy(small_model, tmp_path / "nasty.safetensors", NASTY + MARKUP)
    commands = [
        ["inspect"],
        ["inspect", "--json"],
        ["card"],
        ["sample", "--out", str(tmp_path / "s.png")],
        ["eval", "--limit", "8", "--device", "cpu"],
    ]
    results = run_cli_batch([[c[0], str(model), *c[1:]] for c in commands], tmp_path)  # one fresh process
    for command, result in zip(commands, results, strict=True):
        assert_no_controls(result)
        assert result.returncode in (0, 2), (command, result.stderr[-2000:])
        if result.returncode == 2:
            assert len(error_lines(result.stderr)) == 1, (command, result.stderr)


def test_an_error_line_quoting_user_text_has_no_controls(tmp_path: Path) -> None:
    result = run_cli("inspect", str(tmp_path / f"no-such{NASTY}{MARKUP}.safetensors"))
    assert result.returncode == 2 and len(error_lines(result.stderr)) == 1, result.stderr
    assert_no_controls(result)
    assert "\\x1b]0;pwned\\x07" in result.stderr or "\\x1b" in result.stderr


# ---- absurd option values are one line naming the option --------------------------------------------

DEEP = "[" * 60_000 + "]" * 60_000  # Linux takes at most 128 KiB in one argument


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["sample", "m.safetensors", "--seed", str(2**64)], "--seed"),
        (["sample", "m.safetensors", "--seed", str(2**63)], "--seed"),
        (["sample", "m.safetensors", "--seed", "-1"], "--seed"),
        (["sample", "m.safetensors", "-n", str(10**30)], "-n"),
        (["sample", "m.safetensors", "--temperature", "inf"], "--temperature"),
        (["reconstruct", "m.safetensors", "--seed", str(2**64)], "--seed"),
        (["interpolate", "m.safetensors", "--seed", "-5"], "--seed"),
        (["eval", "m.safetensors", "--limit", str(10**30)], "--limit"),
        (["eval", "m.safetensors", "--iw-samples", str(10**12)], "--iw-samples"),
        (["eval", "m.safetensors", "--seed", str(2**64)], "--seed"),
        (["run", "cifar-vae", "--seed", str(2**64)], "--seed"),
        (["run", "cifar-vae", "--latent-dim", str(10**12)], "--latent-dim"),
        (["run", "cifar-vae", "--epochs", str(10**30)], "--epochs"),
        (["run", "cifar-vae", "--batch-size", str(10**30)], "--batch-size"),
        (["run", "cifar-vae", "--limit", str(10**30)], "--limit"),
        (["run", "cifar-vae", "--nproc", str(10**11)], "--nproc"),
        (["run", "cifar-vae", "--set", "a=" + DEEP], "--set"),
        (["run", "cifar-vae", "--set", "a=" + "[" * 40 + "]" * 40], "--set"),
        (["run", "cifar-vae", "--set", "a={" + "b={" * 40 + "}" * 41], "--set"),
        (["run", "cifar-vae", "--set", "a." * 100 + "b=1"], "--set"),
        (["run", "cifar-vae", "--set", "summary='" + "x" * 20_000 + "'"], "--set"),
    ],
)
def test_absurd_option_values_are_one_line_naming_the_option(args: list[str], option: str, tmp_path: Path) -> None:
    result = (
        run_cli(*args, "--out", str(tmp_path / "out"), cwd=tmp_path)
        if args[0] == "run"
        else run_cli(*args, cwd=tmp_path)
    )
    lines = error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, (result.returncode, result.stderr[-2000:])
    assert option in lines[0] and "internal error" not in lines[0] and len(lines[0]) < 400, lines[0]
    assert not (tmp_path / "out").exists()


def test_a_quoted_bracket_in_a_set_value_is_not_nesting(tmp_path: Path) -> None:
    from vaezoo.cli import _check_sets

    _check_sets(["summary=" + '"' + "[" * 100 + '"', "encoder.hidden=[[1]]", r"summary='\['"])


# ---- SIGTERM and SIGHUP from the first line of vaezoo's code ----------------------------------------

CONSOLE_SCRIPT = Path(sys.executable).parent / "vaezoo"
SIGNAL_BITS = {sig: 1 << (sig - 1) for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if sig is not None}


def caught(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (Linux: SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(mask, 16) & SIGNAL_BITS[sig])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", list(SIGNAL_BITS), ids=[signal.Signals(sig).name for sig in SIGNAL_BITS])
@pytest.mark.parametrize("how", ["python -m vaezoo", "console script"])
def test_a_stop_signal_right_after_start_up_exits_130(cifar: Path, tmp_path: Path, how: str, sig: int) -> None:
    """The moment vaezoo's handler is in place (it is vaezoo's first act: see the test below), a
    SIGTERM or SIGHUP ends the command with one line and 130, whatever it is importing then."""
    if how == "console script" and not CONSOLE_SCRIPT.exists():
        pytest.skip("the console script is not installed beside this Python")
    start = [sys.executable, "-m", "vaezoo"] if how == "python -m vaezoo" else [str(CONSOLE_SCRIPT)]
    for attempt, delay in enumerate((0.0, 0.01, 0.03)):
        out = tmp_path / f"run{attempt}"
        process = subprocess.Popen(
            [
                *start,
                "run",
                "cifar-vae",
                "--epochs",
                "1",
                "--limit",
                "16",
                "--device",
                "cpu",
                *TINY_ARGS,
                "--data-dir",
                str(cifar),
                "--out",
                str(out),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not caught(process.pid, sig) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(delay)
        process.send_signal(sig)
        code, err = process.wait(timeout=120), process.stderr.read()
        lines = [line for line in error_lines(err) if line.startswith("vaezoo:")]
        assert code == 130 and len(lines) == 1 and "Traceback" not in err, (delay, code, err[-2000:])
        assert not (out / ".vaezoo.lock").exists()


SITECUSTOMIZE = """
import os, signal, sys

_log = open(os.environ["VAEZOO_IMPORT_LOG"], "w")


def _before_handler(event, args):
    if event == "import" and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        _log.write(args[0] + "\\n")
        _log.flush()


sys.addaudithook(_before_handler)
"""


@pytest.mark.parametrize("how", ["python -m vaezoo", "console script"])
def test_the_stop_handler_comes_before_any_other_import(tmp_path: Path, how: str) -> None:
    """What is imported before the SIGTERM handler is installed: vaezoo's empty `__init__`,
    vaezoo.trainer.signals and what the interpreter itself loads (pluggy, typing, typer, rich, torch: after)."""
    if how == "console script" and not CONSOLE_SCRIPT.exists():
        pytest.skip("the console script is not installed beside this Python")
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "imports.txt"
    env = {
        **os.environ,
        "VAEZOO_IMPORT_LOG": str(log),
        "PYTHONPATH": os.pathsep.join(p for p in (str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")) if p),
    }
    start = [sys.executable, "-m", "vaezoo"] if how == "python -m vaezoo" else [str(CONSOLE_SCRIPT)]
    result = subprocess.run([*start, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = log.read_text().split()
    assert "vaezoo" in imported, imported
    ours = imported[imported.index("vaezoo") :]  # from vaezoo's first line on
    allowed = {"vaezoo", "vaezoo.__main__", "vaezoo.trainer", "vaezoo.trainer.signals", "signal", "collections.abc"}
    assert set(ours) <= allowed, ours


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_a_sighup_that_the_parent_ignores_stays_ignored(cifar: Path, tmp_path: Path) -> None:
    """`nohup vaezoo run ...`: closing the terminal does not stop the run."""
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "vaezoo",
        "run",
        "cifar-vae",
        "--epochs",
        "1",
        "--limit",
        "16",
        "--device",
        "cpu",
        *TINY_ARGS,
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)
    )
    deadline = time.monotonic() + 30
    while not caught(process.pid, signal.SIGTERM) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.0005)
    process.send_signal(signal.SIGHUP)
    code, err = process.wait(timeout=300), process.stderr.read()
    assert code == 0 and (out / "model.safetensors").exists(), err[-2000:]


# ---- a plugin that exits, registers a missing module or a decoder of the wrong shape -------------


EVIL_PLUGIN = {
    "evil_plugin.py": "import sys\nsys.exit(3)\n",
    "ghost_plugin.py": (
        "import vaezoo\n\n@vaezoo.hookimpl\ndef register_encoders(register):\n    register('ghost', "
        "'nowhere_at_all:Thing', summary='missing')\n"
        "\n@vaezoo.hookimpl\ndef register_decoders(register):\n    register('wrong', "
        "'ghost_plugin:WrongDecoder', summary='wrong shapes')\n\n"
        "import torch\n\nclass WrongDecoder(torch.nn.Module):\n    def __init__(self, *, out_shape, "
        "latent_dim):\n        super().__init__()\n"
        "        self.fc = torch.nn.Linear(latent_dim, 7)\n\n    def forward(self, z):\n        return self.fc(z)\n"
    ),
}


@pytest.fixture(scope="module")
def evil_path(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A folder on PYTHONPATH with two plugins found through entry points: one calls sys.exit on
    import, one registers a missing module and a decoder of the wrong shape."""
    root = tmp_path_factory.mktemp("evil")
    for name, code in EVIL_PLUGIN.items():
        (root / name).write_text(code)
    info = root / "evil_plugins-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evil-plugins\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaezoo]\nevil = evil_plugin\nghost = ghost_plugin\n")
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def evil_runs(cifar: Path, evil_path: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """With the evil plugins installed, in one fresh process: `list recipes`, and runs with the missing
    encoder and with the decoder of the wrong shape."""
    root = tmp_path_factory.mktemp("evil-runs")
    run = ["run", "cifar-vae", *TWO_EPOCHS, "--data-dir", str(cifar)]
    commands = {
        "list": ["list", "recipes", "--json"],
        "ghost": [*run, "--set", "encoder.name=ghost", "--out", str(root / "ghost")],
        "wrong": [*run, "--set", 'decoder={name="wrong"}', "--out", str(root / "wrong")],
    }
    return dict(zip(commands, run_cli_batch(list(commands.values()), root, env=evil_path)))


@pytest.mark.slow
def test_a_plugin_that_exits_on_import_is_isolated(evil_runs: dict) -> None:
    result = evil_runs["list"]
    assert result.returncode == 0 and "cifar-vae" in result.stdout, result.stderr
    assert "plugin 'evil' (evil-plugins) failed to load: SystemExit: 3" in result.stderr


@pytest.mark.slow
def test_a_component_registered_as_a_missing_module_is_one_line(evil_runs: dict) -> None:
    assert (
        "plugin 'ghost' (evil-plugins) registers encoder 'ghost' as 'nowhere_at_all:Thing', which does not import"
        in one_line(evil_runs["ghost"])
    )


@pytest.mark.slow
def test_a_plugin_with_wrong_shapes_is_named(evil_runs: dict) -> None:
    line = one_line(evil_runs["wrong"], code=1, progress=True)
    assert "decoder 'wrong'" in line and "failed in a training step" in line
