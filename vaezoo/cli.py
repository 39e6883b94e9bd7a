"""The `vaezoo` command: thin typer commands over the Python API. Importing this module does not
import torch; commands that need it import it when they run."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

import vaezoo
from vaezoo.errors import VaezooError, checked_path, first_line, printable
from vaezoo.plugins.kinds import KINDS
from vaezoo.recipes.resolve import MAX_GRID_IMAGES
from vaezoo.trainer.signals import forget_interrupt, handle_stops, stop_now, stop_received

app = typer.Typer(
    name="vaezoo",
    help="A plugin-based model zoo for variational autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console(emoji=False)  # text from files and plugins goes through _safe or _table: never markup
err_console = Console(stderr=True, emoji=False)

# bounds of numeric options, so that an absurd value is one line naming its option, not a crash deep inside
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer; recipes keep seeds below 2**63
MAX_LATENT_DIM = 65_536  # as vaezoo.recipes.resolve.MAX_LATENT_DIM
MAX_EPOCHS = 1_000_000
MAX_BATCH = 1_000_000
MAX_IMAGES = 1_000_000_000  # --limit: more than any data set holds means "all of them"
MAX_IW_SAMPLES = 10_000
MAX_FID_SAMPLES = 100_000  # published FIDs use 10,000 or 50,000; the samples are held in memory
MAX_TEMPERATURE = 100.0
MAX_PROCESSES = 1024
MAX_THREADS = 1024  # as vaezoo.recipes.resolve.MAX_THREADS
MAX_SET_CHARS = 10_000  # one --set
MAX_SET_DEPTH = 32  # dotted key parts plus nested [ and { in one --set
KIND_HELP = "one of " + ", ".join(KINDS)
MODEL_HELP = "A model.safetensors file, hf://ORG/NAME[@REVISION] or an https:// URL (optionally #sha256=HEX)."


def _path(option: str, kind: Callable[[str], object] = Path) -> Callable[[str], object]:
    """A parser for a path option: an empty or whitespace-only value (which would name the current folder)
    is one line naming `option` (exit 2), never a run or a write into the current folder."""
    return lambda value: kind(checked_path(value, option))


# options that several commands take, alike
ModelArgument = Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP)]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        parser=_path("--data-dir"), metavar="DIR", help="Data folder (default: VAEZOO_DATA_DIR, else a user folder)."
    ),
]
PngOutOption = Annotated[Path, typer.Option(parser=_path("--out"), metavar="FILE", help="PNG file to write.")]


def _finite_option(context: typer.Context, parameter: typer.CallbackParam, value: float | None) -> float | None:
    """A float option's value, refused in one line when it is NaN or infinite (click's range checks let
    NaN through: every comparison with it is false)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number", param=parameter)
    return value


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"vaezoo {vaezoo.__version__} (torch {version('torch')})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the versions of vaezoo and torch.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show Python tracebacks for errors (also VAEZOO_DEBUG=1).")
    ] = False,
) -> None:
    """A plugin-based model zoo for variational autoencoders."""  # --debug is read by main()


def _finite(data: object) -> object:
    """`data` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")


def _safe(value: object) -> str:
    """`value` for a rich markup string: control characters shown as escapes, markup escaped."""
    return escape(printable(value))


def _table(columns: tuple[str, ...], rows: Sequence[Sequence[object]], *, header: bool = True) -> Table:
    """A borderless rich table with a bold header; cells are shown as they are (controls escaped,
    never read as markup), except `Text` cells, which keep their style."""
    table = Table(box=None, header_style="bold", show_header=header)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(cell if isinstance(cell, Text) else Text(printable(cell)) for cell in row))
    return table


def _clashes(names: Iterable[object]) -> set[object]:
    """The names that occur more than once: shown by their qualified names (`DISTRIBUTION:NAME`)."""
    counts = Counter(names)
    return {name for name, count in counts.items() if count > 1}


@app.command("list")
def list_command(
    kind: Annotated[str | None, typer.Argument(metavar="KIND", help=f"What to list: {KIND_HELP}.")] = None,
    pattern: Annotated[str | None, typer.Argument(metavar="PATTERN", help="Glob on the name, e.g. '*resnet*'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List recipes and components."""
    from vaezoo.plugins.manager import list_components

    if kind is not None and kind not in KINDS:
        if pattern is None and any(ch in kind for ch in "*?[:"):
            kind, pattern = None, kind  # `vaezoo list '*vae*'`, `vaezoo list vaezoo:conv`
        else:
            raise VaezooError(f"unknown kind {kind!r}: use {KIND_HELP}")
    items = list_components(kind, pattern)
    if as_json:
        _print_json(items)
        return
    clash = _clashes((i["kind"], i["name"]) for i in items)
    rows = [
        (i["kind"], i["qualified_name"] if (i["kind"], i["name"]) in clash else i["name"], i["plugin"], i["summary"])
        for i in items
    ]
    table = _table(("kind", "name", "plugin", "summary"), rows)
    console.print(table if items else "nothing matches")  # _table shows cells as they are


@app.command("plugins")
def plugins_command(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List loaded plugins: name, distribution, version, the plugin API each requires, what each registers."""
    from vaezoo.plugins.api_version import PLUGIN_API, requirement_problem
    from vaezoo.plugins.manager import get_registry

    rows: list[dict[str, Any]] = []
    for info in get_registry().plugins:
        registers = {kind: sorted(info.registers.get(kind, [])) for kind in KINDS}
        required = info.api_requirement
        rows.append(
            {
                "name": info.name,
                "qualified_name": info.qualified_name,
                "distribution": info.distribution,
                "version": info.version,
                "status": "failed" if info.error else "ok",
                "error": info.error,
                # the module's VAEZOO_PLUGIN_API (null: none declared, written for vaezoo 0.2) and whether
                # this vaezoo's PLUGIN_API meets it (null when none is declared)
                "requires_plugin_api": required,
                "plugin_api_met": None if required is None else requirement_problem(required) is None,
                "registers": registers,
                **registers,
            }
        )
    if as_json:
        _print_json(rows)
        return
    lines = []
    clash = _clashes(row["name"] for row in rows)
    for row in rows:
        what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items() if names)
        met = {None: "unknown" if row["error"] else "none (0.2)", True: "met", False: "NOT MET"}[row["plugin_api_met"]]
        lines.append(
            (
                row["qualified_name"] if row["name"] in clash else row["name"],
                row["distribution"],
                row["version"],
                f"{row['requires_plugin_api']} ({met})" if row["requires_plugin_api"] is not None else met,
                Text(printable(f"failed: {row['error']}"), style="red") if row["error"] else what,
            )
        )
    console.print(Text(f"vaezoo {vaezoo.__version__}, plugin API {PLUGIN_API}"))
    console.print(_table(("plugin", "distribution", "version", "requires API", "registers"), lines))


@app.command("show")
def show_command(
    recipe: Annotated[str, typer.Argument(help="Recipe name (`vaezoo list recipes`) or a recipe .toml file.")],
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE override, dotted key, TOML value (repeatable).")
    ] = None,
) -> None:
    """Print the fully resolved recipe as TOML that `vaezoo run FILE.toml` accepts."""
    from vaezoo.api import show_recipe

    _check_sets(sets or [])
    sys.stdout.write(show_recipe(recipe, sets or []))


@app.command("run")
def run_command(
    recipe: Annotated[
        str, typer.Argument(metavar="RECIPE", help="Recipe name (`vaezoo list recipes`) or a recipe .toml file.")
    ],
    epochs: Annotated[
        int | None, typer.Option(max=MAX_EPOCHS, help="Total number of epochs (with --resume: train up to this epoch).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(max=MAX_BATCH, help="Training batch size.")] = None,
    lr: Annotated[float | None, typer.Option(callback=_finite_option, help="Learning rate.")] = None,
    latent_dim: Annotated[int | None, typer.Option(min=1, max=MAX_LATENT_DIM, help="Size of the latent space.")] = None,
    device: DeviceOption = "auto",
    precision: Annotated[
        str | None, typer.Option(help="auto, fp32, bf16 or fp16 (auto is measured once per run, then kept).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_THREADS,
            help="CPU threads (default train.threads = auto: OMP_NUM_THREADS if set, else half the CPUs).",
        ),
    ] = None,
    data_dir: DataDirOption = None,
    limit: Annotated[
        int | None, typer.Option(min=0, max=MAX_IMAGES, help="Train on N images drawn at random with a fixed seed.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(parser=_path("--out"), metavar="DIR", help="Output folder (default runs/<recipe>-<UTC time>)."),
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, max=MAX_SEED, help="Random seed (repeatable runs on CPU).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE override, dotted key, TOML value (repeatable).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            parser=_path("--resume"), metavar="DIR", help="Continue the run in this folder from its state.safetensors."
        ),
    ] = None,
    logger: Annotated[
        list[str] | None,
        typer.Option(
            "--logger",
            metavar="NAME",
            help=(
                "Track the run with this experiment logger (repeatable; replaces train.loggers): tensorboard, "
                "mlflow (pip install 'vaezoo\\[mlflow]'), or a plugin's (vaezoo list loggers)."
            ),
        ),
    ] = None,
    tensorboard: Annotated[
        bool, typer.Option("--tensorboard", help="Deprecated: the same as --logger tensorboard.")
    ] = False,
    compile_: Annotated[
        bool,
        typer.Option("--compile", help="torch.compile the model (compile time reported apart as compile_seconds)."),
    ] = False,
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=MAX_PROCESSES,
            help="Train in N processes on this machine through torchrun (DistributedDataParallel; one per GPU).",
        ),
    ] = None,
) -> None:
    """Train a recipe, evaluate on the test split, write the model, metrics and pictures (samples,
    reconstructions, interpolations, loss curve)."""
    _check_sets(set_ or [])
    from vaezoo.api import fit
    from vaezoo.trainer.progress import RichProgress

    loggers = [*(logger or []), *(["tensorboard"] if tensorboard and "tensorboard" not in (logger or []) else [])]
    options = {
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "latent_dim": latent_dim,
        "train.precision": precision,
        "train.threads": threads,
        "train.limit": limit,
        "train.seed": seed,
        "train.compile": compile_ or None,
        "train.loggers": loggers or None,
    }
    if nproc is not None:
        raise typer.Exit(_run_torchrun(nproc, recipe, set_ or [], options, resume))
    from vaezoo.errors import Interrupted
    from vaezoo.trainer import distributed

    progress = RichProgress(err_console)  # the loop calls callbacks on rank 0 only
    try:
        result = fit(
            recipe,
            sets=set_ or [],
            options=options,
            out=out,
            data_dir=data_dir,
            device=device,
            resume=resume,
            callbacks=[progress],
        )
    except Interrupted as stopped:
        raise Interrupted(f"{stopped}; resume with: {_resume_command(stopped, data_dir, device)}") from stopped
    finally:
        progress.close()
    if not distributed.is_main():
        return
    metrics = result.metrics
    if result.stopped_early:
        err_console.print(_safe(result.stopped_early))
    epochs = metrics.get("epoch", 0)
    err_console.print(
        f"[green]done[/green]: {_safe(result.out_dir)}  test loss "
        f"{metrics.get('test_loss', float('nan')):.2f} nats/image after {epochs} epoch{'' if epochs == 1 else 's'}"
    )
    for name in (
        "model.safetensors",
        "best.safetensors",
        "state.safetensors",
        "metrics.jsonl",
        "samples.png",
        "reconstructions.png",
        "interpolations.png",
        "loss.png",
        "tensorboard",
        "recipe.toml",
    ):
        if (result.out_dir / name).exists():
            err_console.print(f"  {_safe(result.out_dir / name)}")


def _set_depth(value: str) -> int:
    """The deepest nesting of [ and { in a TOML value, outside quoted strings."""
    depth = deepest = 0
    quote, escaped = "", False
    for ch in value:
        if quote:
            if ch == quote and not escaped:
                quote = ""
            escaped = quote == '"' and ch == "\\" and not escaped
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _check_sets(items: list[str]) -> None:
    """Refuse a --set too long or nested too deeply for the TOML parser, in one line naming it."""
    for item in items:
        if len(item) > MAX_SET_CHARS:
            raise VaezooError(
                f"--set {item[:40]!r}... is {len(item):,} characters long: at most {MAX_SET_CHARS:,} are allowed"
            )
        key, _, value = item.partition("=")
        if key.count(".") + 1 + _set_depth(value) > MAX_SET_DEPTH:
            raise VaezooError(
                f"--set {item[:40]!r}{'...' if len(item) > 40 else ''} is nested more than {MAX_SET_DEPTH} "
                f"levels deep (dotted keys, [ and {{)"
            )


def _resume_command(stopped, data_dir: Path | None, device: str) -> str:
    """The command that continues an interrupted run where it stopped."""
    import shlex

    from vaezoo.trainer import distributed

    command = ["vaezoo", "run", stopped.recipe, "--resume", str(stopped.out_dir), "--epochs", str(stopped.epochs)]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    if device != "auto":
        command += ["--device", device]
    world = distributed.current_world()
    if world.enabled:
        command += ["--nproc", str(world.world_size)]
    return shlex.join(command)


def _run_torchrun(nproc: int, recipe: str, sets: list[str], options: dict, resume: Path | None) -> int:
    """`vaezoo run ... --nproc N`: check the recipe here (one clear line for a bad one), then run the
    same command without --nproc under torchrun on this machine; returns torchrun's exit code."""
    import subprocess

    from vaezoo.recipes.resolve import resolve_recipe
    from vaezoo.trainer import distributed

    if resume is None:
        from vaezoo.trainer.loggers import build_loggers

        resolved = resolve_recipe(recipe, sets, options)
        distributed.check_batch_size(resolved["train"]["batch_size"], distributed.World(0, nproc, 0))
        build_loggers(resolved)  # a missing package: one line here, not one per rank
    distributed.collective_timeout()  # a bad VAEZOO_COLLECTIVE_TIMEOUT: one line here, not one per rank
    command = distributed.torchrun_command(nproc, distributed.strip_option(_ARGV or sys.argv[1:], "--nproc"))
    err_console.print(f"starting {nproc} processes: {_safe(' '.join(command[1:]))}")
    torchrun = subprocess.Popen(distributed.launch_command(command))
    try:
        return torchrun.wait()
    except (
        KeyboardInterrupt
    ):  # Ctrl-C or SIGTERM here: torchrun passes SIGINT on to its workers, which save their state
        torchrun.send_signal(signal.SIGINT)
        try:
            torchrun.wait(timeout=120)
        except subprocess.TimeoutExpired:
            torchrun.kill()
            torchrun.wait()
        raise


@app.command("sample")
def sample_command(
    model: ModelArgument,
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=MAX_GRID_IMAGES, help="Number of images.")] = 64,
    out: PngOutOption = Path("samples.png"),
    seed: Annotated[
        int, typer.Option(min=0, max=MAX_SEED, help="Random seed: the same seed gives the same picture.")
    ] = 0,
    temperature: Annotated[
        float,
        typer.Option(min=0.0, max=MAX_TEMPERATURE, callback=_finite_option, help="Scale of the prior samples."),
    ] = 1.0,
    label: Annotated[
        str | None,
        typer.Option(
            help="Class to draw (a name or an index), for conditional models; without it they draw the classes in turn."
        ),
    ] = None,
    device: DeviceOption = "cpu",
    sampler: Annotated[
        str,
        typer.Option(
            help="Where the codes come from: prior (the model's own), or a sampler fitted to the training codes "
            "(gmm; fitted on first use, which reads the training split)."
        ),
    ] = "prior",
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder, to fit a sampler on first use (default: VAEZOO_DATA_DIR).")
    ] = None,
) -> None:
    """Decode N samples of the model into a grid image."""
    from vaezoo.files.png import save_grid
    from vaezoo.loading import load
    from vaezoo.samplers import PRIOR, fitted_codes
    from vaezoo.trainer.sampling import parse_label, sample_images

    loaded = load(model, device=device)
    index = parse_label(loaded, label)
    codes = None
    if sampler != PRIOR:
        codes = fitted_codes(
            model, loaded, sampler, data_dir=data_dir, notice=lambda line: err_console.print(_safe(line))
        )
    save_grid(sample_images(loaded, n, seed=seed, temperature=temperature, label=index, codes=codes), out)
    what = f" of class {loaded.classes[index]!r}" if index is not None else ""
    how = f" (codes from the fitted {sampler} sampler)" if sampler != PRIOR else ""
    err_console.print(f"wrote {n} samples{_safe(what)}{_safe(how)} to {_safe(out)}")


@app.command("fit-sampler")
def fit_sampler_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    sampler: Annotated[str, typer.Argument(help="Sampler to fit (`vaezoo list samplers`), e.g. gmm.")],
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE key of the sampler, TOML value (repeatable).")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Data folder (default: VAEZOO_DATA_DIR, else a user folder).")
    ] = None,
    limit: Annotated[
        int, typer.Option(min=0, max=MAX_IMAGES, help="Fit on N training images drawn with a fixed seed (0: all).")
    ] = 0,
    device: DeviceOption = "cpu",
) -> None:
    """Fit a sampler to the training split's codes of a model; it is written beside the model file."""
    from vaezoo.samplers import fit_sampler

    _check_sets(sets or [])
    fitted = fit_sampler(model, sampler, sets=sets or [], data_dir=data_dir, limit=limit, device=device)
    fit = fitted["mean_log_likelihood"]
    how = f", mean log-likelihood {fit:.2f} nats per code" if fit is not None else ""
    err_console.print(
        f"fitted {_safe(sampler)} to {fitted['fitted_on']['images']} training codes{how}: wrote {_safe(fitted['path'])}"
    )


@app.command("reconstruct")
def reconstruct_command(
    model: ModelArgument,
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=MAX_GRID_IMAGES, help="Number of test images.")] = 16,
    out: PngOutOption = Path("reconstructions.png"),
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Random seed choosing the test images.")] = 0,
    data_dir: DataDirOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Test images (top rows) above their reconstructions (bottom rows), as a grid image."""
    from vaezoo.api import reconstruct_file

    reconstruct_file(model, out, n=n, seed=seed, data_dir=data_dir, device=device)
    err_console.print(f"wrote {n} test images and their reconstructions to {_safe(out)}")


@app.command("interpolate")
def interpolate_command(
    model: ModelArgument,
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=1000, help="Number of image pairs (rows).")] = 8,
    steps: Annotated[
        int, typer.Option(min=2, max=100, help="Images per row, from one image of the pair to the other.")
    ] = 10,
    out: PngOutOption = Path("interpolations.png"),
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Random seed choosing the test image pairs.")] = 0,
    data_dir: DataDirOption = None,
    device: DeviceOption = "cpu",
) -> None:
    """Decoded straight lines in latent space between pairs of test images (rows = pairs)."""
    from vaezoo.api import interpolate_file

    interpolate_file(model, out, pairs=n, steps=steps, seed=seed, data_dir=data_dir, device=device)
    err_console.print(f"wrote {n} interpolations of {steps} steps to {_safe(out)}")


FID_KEYS = ("fid", "kid_mean", "kid_std", "fid_samples")  # as vaezoo.trainer.sample_quality.FID_KEYS (no torch here)


@contextmanager
def _eval_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr for each stage of eval (the loss, the NLL, the reconstructions, then
    --fid's sampling and features of each image set), gone when eval ends."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    shown_at: dict[str, float] = {}
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )

    def advance(what: str, done: int, total: int) -> None:
        if not tasks:  # started with the first stage: an error before it prints only its line
            bar.start()
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        now = time.monotonic()
        if done == total or now - shown_at.get(what, 0.0) > 0.1:  # FID tells every image
            shown_at[what] = now
            bar.update(tasks[what], completed=done)

    try:
        yield advance
    finally:
        if tasks:
            bar.stop()


@app.command("eval")
def eval_command(
    model: ModelArgument,
    data_dir: DataDirOption = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    limit: Annotated[
        int | None, typer.Option(min=0, max=MAX_IMAGES, help="Evaluate on N images drawn with a fixed seed (0: all).")
    ] = None,
    iw_samples: Annotated[
        int,
        typer.Option(
            "--iw-samples",
            min=0,
            max=MAX_IW_SAMPLES,
            help="Also estimate the NLL with K importance samples per image (IWAE bound; 0: off).",
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Seed of the posterior samples.")] = 0,
    device: DeviceOption = "auto",
    fid: Annotated[
        bool,
        typer.Option(
            "--fid",
            help="Also FID and KID of model samples against the split (Inception-v3, through torch-fidelity: "
            "pip install 'vaezoo\\[fid]'; its weights are fetched on first use, or VAEZOO_FID_WEIGHTS=PATH).",
        ),
    ] = False,
    fid_samples: Annotated[
        int,
        typer.Option(
            "--fid-samples",
            min=0,
            max=MAX_FID_SAMPLES,
            help="Model samples for --fid, drawn with --seed (0: 10000, or the split's size if smaller).",
        ),
    ] = 0,
    sets: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            metavar="dataset.KEY=PATH",
            help="A folder the dataset reads (e.g. dataset.path=... for image-folder): a model file never chooses it.",
        ),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            metavar="P",
            help="fp32, bf16 or fp16: the autocast of the loss and NLL (default: the precision the model "
            "trained in where this device can run it, as the run's test_loss; fp32 gives the float32 number).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Test-split metrics of a saved model: its objective per image (the negative ELBO in nats for a
    VAE) and its parts, the importance-weighted NLL (--iw-samples), bits/dim (discrete likelihoods
    only), MSE and PSNR."""
    from vaezoo.api import evaluate_file
    from vaezoo.recipes.resolve import parse_set

    paths = {}
    for item in sets or []:
        dotted, value = parse_set(item)
        if len(dotted) != 2 or dotted[0] != "dataset":
            raise VaezooError(
                f"bad --set {item!r}: eval takes only the dataset's folder keys, e.g. --set dataset.path=PATH"
            )
        paths[dotted[1]] = value
    with _eval_progress() as progress:
        metrics = evaluate_file(
            model,
            data_dir=data_dir,
            split=split,
            limit=limit or 0,
            device=device,
            iw_samples=iw_samples,
            seed=seed,
            paths=paths,
            fid=fid,
            fid_samples=fid_samples,
            progress=progress,
            precision=precision,
        )
    if as_json:
        _print_json(metrics)
        return
    rows = []
    objective = "negative ELBO" if metrics["objective"] == "elbo" else f"{metrics['objective']} objective"
    for key, value in metrics.items():
        if key == "terms":  # the family's own terms (a term may share the regularizer's name: WAE's mmd)
            rows += [(f"terms.{term}", term_value) for term, term_value in value.items()]
        elif key == "loss":
            rows.append((f"loss ({objective})", value))
        elif key not in ("bits_per_dim_note", "iw_note", "objective", "regularizer") and (fid or key not in FID_KEYS):
            rows.append((key, value))
    shown = [
        (key, f"{value:.4f}" if isinstance(value, float) else "n/a (see note)" if value is None else str(value))
        for key, value in rows
    ]
    console.print(_table(("metric", "value"), shown, header=False))
    for note in ("iw_note", "bits_per_dim_note"):
        if note in metrics:
            console.print(f"note: {_safe(metrics[note])}")


@app.command("inspect")
def inspect_command(
    model: ModelArgument,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What a checkpoint holds: recipe, components and their plugins, shapes, metrics, sha256."""
    from importlib.metadata import PackageNotFoundError, distribution

    from vaezoo.files.model_header import describe, is_conditional, valid_distribution
    from vaezoo.sharing.hub import local_model_path

    def installed(name: str) -> bool:
        try:
            distribution(name)
        except PackageNotFoundError:
            return False
        return True

    from vaezoo.plugins.manager import get_registry

    info = describe(local_model_path(model))
    # inspect reads any file without importing a plugin (nor torch): the distributions it names that are
    # not installed here (sample and load would ask for them), those whose names are not valid (no pip
    # line), and whether the family is installed (load checks the file's objective against its declaration)
    named = {r.get("distribution") for r in info["components"]}
    info["missing_distributions"] = sorted(name for name in named if valid_distribution(name) and not installed(name))
    info["invalid_distributions"] = [
        {"kind": r["kind"], "name": r["name"], "distribution": r["distribution"]}
        for r in info["components"]
        if not valid_distribution(r["distribution"])
    ]
    family = info["model"]
    info["family_installed"] = family["name"] in get_registry().entries["models"]
    if as_json:
        _print_json(info)
        return
    recipe = info["recipe"]
    # everything below comes from the file: shown through _safe and _table, never as markup; long lines
    # are never wrapped (a piped sha256 stays on one line)
    say = functools.partial(console.print, soft_wrap=True)
    say(f"[bold]{_safe(info['path'])}[/bold]  sha256 {_safe(info['sha256'])}")
    say(_safe(f"recipe {recipe.get('name')!r}: {recipe.get('summary', '')}"))
    provider = (
        f" from {family['distribution']} {family.get('version', '')} (plugin {family.get('plugin')!r})"
        if family.get("distribution")
        else " (format 1: vaezoo 0.1)"
    )
    objective = info["objective"]["objective"]
    if not info["objective"]["recorded"]:
        claim = "vaezoo before 0.3 recorded none: read as a VAE's"
    elif info["family_installed"]:
        claim = "as the file records it; loading checks it against the family"
    else:
        claim = f"the file's claim: family {family['name']!r} is not installed here to check it"
    say(
        _safe(
            f"model family {family['name']!r}{provider}; objective: "
            f"{'negative ELBO' if objective == 'elbo' else objective + ' (not a variational bound)'} ({claim})"
        )
    )
    say(
        _safe(
            f"vaezoo {info['vaezoo_version']}, format {info['format_version']}, data "
            f"{info['data']['shape']}, {info['tensors']} tensors, {info['parameters']:,} parameters"
        )
    )
    if is_conditional({"recipe": recipe, "data": info["data"]}):
        say(
            _safe(
                "class-conditional (sample --label): "
                f"{', '.join(f'{i} {name}' for i, name in enumerate(info['data'].get('classes', [])))}"
            )
        )
    components = [(r["kind"], r["name"], r["distribution"], r["version"]) for r in info["components"]]
    console.print(_table(("component", "name", "distribution", "version"), components))
    for key, built_on in info["dependencies"].items():
        console.print(
            _safe(
                f"built on model.{key} = {built_on['source']!r} (recipe {built_on['recipe']!r}, family "
                f"{built_on['model']!r}, sha256 {built_on['sha256'][:16]}...): held in this file, which loads "
                "without it"
            )
        )
    for name in info["missing_distributions"]:
        say(_safe(f"not installed here: {name} (sample and load need it: pip install {name})"))
    for record in info["invalid_distributions"]:
        say(
            _safe(
                f"{record['kind']} {record['name']!r}: its distribution name {record['distribution']!r} is not a "
                "valid distribution name (no pip line): install that plugin yourself"
            )
        )
    training = info["training"]
    if training:
        tested = f", tested on {training['test_images']} images" if isinstance(training.get("test_images"), int) else ""
        say(
            _safe(
                f"trained {training.get('epochs')} epochs, {training.get('steps')} steps "
                f"({training.get('precision')} on {training.get('device')}){tested}"
            )
        )
    for key, value in info["metrics"].items():
        say(_safe(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"))


@app.command("push")
def push_command(
    source: Annotated[
        str,
        typer.Argument(
            metavar="RUN_DIR_OR_MODEL",
            help="A run folder or a model.safetensors file.",
            parser=_path("RUN_DIR_OR_MODEL", str),
        ),
    ],
    repo_id: Annotated[
        str, typer.Argument(metavar="ORG/NAME", help="Hugging Face Hub model repository (created if missing).")
    ],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[str | None, typer.Option(help="Branch to push to (created if missing; default main).")] = None,
    dry_run: Annotated[
        str | None,
        typer.Option(
            "--dry-run",
            metavar="DIR",
            parser=_path("--dry-run", str),
            help="Write the files that would be uploaded into DIR instead.",
        ),
    ] = None,
) -> None:
    """Publish a model to the Hugging Face Hub: model.safetensors, samples.png, recipe.toml and a
    generated model card (README.md). Needs `pip install 'vaezoo\\[hub]'` and a token (`hf auth login` or HF_TOKEN)."""
    from vaezoo.sharing.publish import push

    where = push(source, repo_id, private=private, revision=revision, dry_run=dry_run)
    if dry_run is not None:
        for name in sorted(os.listdir(where)):
            err_console.print(f"  {_safe(Path(where) / name)}")
        err_console.print(f"wrote what `vaezoo push` would upload to {_safe(where)}")
    else:
        err_console.print(
            _safe(
                f"pushed to {where}; load it with: vaezoo sample hf://{repo_id}" + (f"@{revision}" if revision else "")
            )
        )


@app.command("card")
def card_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A run folder, " + MODEL_HELP[2:])],
    repo_id: Annotated[
        str | None, typer.Option("--repo", metavar="ORG/NAME", help="Repository name the card's examples load from.")
    ] = None,
) -> None:
    """Print the model card (README.md) that `vaezoo push` would upload."""
    from vaezoo.sharing.card import card_for

    sys.stdout.write(printable(card_for(model, repo_id), lines=True))  # a file's text: no terminal controls


_ARGV: list[str] = []


def main(argv: list[str] | None = None, *, restore_signals: bool = True) -> None:
    """Entry point: user errors become one line on stderr and an exit code (2 input, 1 failed
    run, 130 interrupted); `--debug` / VAEZOO_DEBUG=1 shows the traceback. The console script
    leaves the stop signals (SIGINT, SIGTERM, SIGHUP) ignored on its way out (`restore_signals=False`)."""
    global _ARGV
    _ARGV = list(argv if argv is not None else sys.argv[1:])  # for `run --nproc`, which runs them again
    debug = "--debug" in _ARGV or os.environ.get("VAEZOO_DEBUG") == "1"
    previous = handle_stops(stop_now)  # SIGINT, SIGTERM and SIGHUP, unless the parent ignores them
    failure: BaseException | None = None  # what ended the command, if anything
    try:
        code, line = typer.main.get_command(app)(args=argv, prog_name="vaezoo", standalone_mode=False), None
    except (typer.Abort, KeyboardInterrupt):
        code, line = 130, "vaezoo: interrupted"
    except VaezooError as error:
        failure = error
        if debug:
            traceback.print_exc()
        code, line = error.exit_code, f"vaezoo: error: {error}"
    except OSError as error:  # a full disk, a read-only folder, a file that vanished: the user's to fix
        failure = error
        if debug:
            traceback.print_exc()
        where = f" {error.filename}" if error.filename else ""
        code, line = 2, f"vaezoo: error: cannot read or write{where}: {error.strerror or error}"
    except Exception as error:
        failure = error
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):  # typer/click usage errors
            code, line = error.exit_code, f"vaezoo: error: {error.format_message()} (see `vaezoo --help`)"
        else:  # a bug, not the user's fault: one line unless debugging
            if debug:
                traceback.print_exc()
            code, line = (
                1,
                f"vaezoo: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)",
            )
    except BaseException as error:  # sys.exit or a bare BaseException in a plugin's code: vaezoo never raises them
        failure = error
        if debug:
            traceback.print_exc()
        if isinstance(error, SystemExit) and isinstance(error.__context__, BrokenPipeError):
            code, line = 1, None  # click's exit when the reader of the output went away (`| head`): nothing to say
        else:
            code, line = (
                1,
                f"vaezoo: error: code that vaezoo ran (a plugin's?) raised {type(error).__name__}: {error} (run "
                "with --debug for the traceback)",
            )
    finally:
        for sig in previous:  # a signal now would only cut the last line short
            signal.signal(sig, signal.SIG_IGN)
    if code != 130 and stop_received():  # the interrupt surfaced wrapped in another error
        code, line = 130, "vaezoo: interrupted"
    if code == 130:
        forget_interrupt()
        line = line or "vaezoo: interrupted"  # typer turns a KeyboardInterrupt into a silent 130
    distributed = sys.modules.get("vaezoo.trainer.distributed")  # imported only by commands that use torch
    worker = distributed if distributed is not None and distributed.created_group() else None  # a torchrun worker
    if line and worker is not None and worker.report_to_launcher(line, code, failure):
        line = None  # `run --nproc` prints one line for all ranks
    if line:  # error messages quote files, plugins and options: no terminal controls
        try:
            print(printable(first_line(line, limit=None)), file=sys.stderr, flush=True)
        except OSError:  # the terminal is gone (SIGHUP): the exit code still says what happened
            pass
    for sig, handler in previous.items() if restore_signals else ():
        signal.signal(sig, handler)
    code = code if isinstance(code, int) else 0
    if worker is not None:  # see its exit_worker
        worker.exit_worker(code)
    sys.exit(code)
