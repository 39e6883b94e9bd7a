"""The `vaezoo` command: thin typer commands over the Python API. Importing this module does not
import torch; commands that need it import it when they run."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

import vaezoo
from vaezoo.errors import VaezooError
from vaezoo.signals import forget_interrupt, stop_now

app = typer.Typer(
    name="vaezoo",
    help="A plugin-based model zoo for variational autoencoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

MAX_PICTURES = 10_000  # images in one grid: 10,000 CIFAR-sized tiles make a 3,400 x 3,400 picture
KIND_HELP = "one of recipes, models, encoders, decoders, priors, losses, datasets"
MODEL_HELP = "A model.safetensors file, hf://ORG/NAME[@REVISION] or an https:// URL (optionally #sha256=HEX)."


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"vaezoo {vaezoo.__version__} (torch {version('torch')})")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the versions of vaezoo and torch.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors (also VAEZOO_DEBUG=1).")] = False,
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


def _table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    """A borderless rich table with a bold header."""
    table = Table(box=None, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


@app.command("list")
def list_command(
    kind: Annotated[Optional[str], typer.Argument(help=f"What to list: {KIND_HELP}.")] = None,
    pattern: Annotated[Optional[str], typer.Argument(help="Glob on the name, e.g. '*resnet*'.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List recipes and components."""
    from vaezoo.registry import KINDS, list_components

    if kind is not None and kind not in KINDS:
        if pattern is None and any(ch in kind for ch in "*?["):
            kind, pattern = None, kind  # `vaezoo list '*vae*'`
        else:
            raise VaezooError(f"unknown kind {kind!r}: use {KIND_HELP}")
    items = list_components(kind, pattern)
    if as_json:
        _print_json(items)
        return
    table = _table(("kind", "name", "plugin", "summary"), [(i["kind"], i["name"], i["plugin"], i["summary"]) for i in items])
    console.print(table if items else "nothing matches")


@app.command("plugins")
def plugins_command(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """List loaded plugins: name, distribution, version, what each registers."""
    from vaezoo.plugins import get_registry
    from vaezoo.registry import KINDS

    rows = []
    for info in get_registry().plugins:
        registers = {kind: sorted(info.registers.get(kind, [])) for kind in KINDS}
        rows.append({"name": info.name, "distribution": info.distribution, "version": info.version, "status": "failed" if info.error else "ok", "error": info.error, "registers": registers, **registers})
    if as_json:
        _print_json(rows)
        return
    lines = []
    for row in rows:
        what = "; ".join(f"{kind}: {', '.join(names)}" for kind, names in row["registers"].items() if names)
        lines.append((row["name"], row["distribution"], row["version"], f"[red]failed: {row['error']}[/red]" if row["error"] else what))
    console.print(_table(("plugin", "distribution", "version", "registers"), lines))


@app.command("run")
def run_command(
    recipe: Annotated[str, typer.Argument(help="Recipe name (`vaezoo list recipes`) or a recipe .toml file.")],
    epochs: Annotated[Optional[int], typer.Option(help="Total number of epochs (with --resume: train up to this epoch).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    latent_dim: Annotated[Optional[int], typer.Option(help="Size of the latent space.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32, bf16 or fp16.")] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Data folder (default: VAEZOO_DATA_DIR, else a user folder).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Train on N images drawn at random with a fixed seed.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/<recipe>-<UTC time>).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (repeatable runs on CPU).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE override, dotted key, TOML value (repeatable).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder from its state.safetensors.")] = None,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Also log scalars and image grids to OUT/tensorboard (needs the tensorboard extra: pip install 'vaezoo\\[tensorboard]').")] = False,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model (compile time reported apart as compile_seconds).")] = False,
    nproc: Annotated[Optional[int], typer.Option(min=1, help="Train in N processes on this machine through torchrun (DistributedDataParallel; one per GPU).")] = None,
) -> None:
    """Train a recipe, evaluate on the test split, write the model, metrics and pictures (samples,
    reconstructions, interpolations, loss curve)."""
    from vaezoo.api import fit
    from vaezoo.progress import RichProgress

    extra = []
    if tensorboard:
        from vaezoo.tensorboard_log import TensorBoardLogger

        extra.append(TensorBoardLogger())  # fails here, before training, if tensorboard is missing

    options = {"train.epochs": epochs, "train.batch_size": batch_size, "train.lr": lr, "latent_dim": latent_dim, "train.precision": precision, "train.limit": limit, "train.seed": seed, "train.compile": compile_ or None}
    if nproc is not None:
        raise typer.Exit(_run_torchrun(nproc, recipe, set_ or [], options, resume))
    from vaezoo import distributed
    from vaezoo.errors import Interrupted

    progress = RichProgress(err_console)  # the loop calls callbacks on rank 0 only
    try:
        result = fit(recipe, sets=set_ or [], options=options, out=out, data_dir=data_dir, device=device, resume=resume, callbacks=[progress, *extra])
    except Interrupted as stopped:
        raise Interrupted(f"{stopped}; resume with: {_resume_command(stopped, data_dir, device)}") from None
    finally:
        progress.close()
    if not distributed.is_main():
        return
    metrics = result.metrics
    err_console.print(f"[green]done[/green]: {result.out_dir}  test loss {metrics.get('test_loss', float('nan')):.2f} nats/image after {metrics.get('epoch', 0)} epochs")
    for name in ("model.safetensors", "state.safetensors", "metrics.jsonl", "samples.png", "reconstructions.png", "interpolations.png", "loss.png", "tensorboard", "recipe.toml"):
        if (result.out_dir / name).exists():
            err_console.print(f"  {result.out_dir / name}")


def _resume_command(stopped, data_dir: Optional[Path], device: str) -> str:
    """The command that continues an interrupted run where it stopped."""
    import shlex

    from vaezoo import distributed

    command = ["vaezoo", "run", stopped.recipe, "--resume", str(stopped.out_dir), "--epochs", str(stopped.epochs)]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    if device != "auto":
        command += ["--device", device]
    job = distributed.world()
    if job.enabled:
        command += ["--nproc", str(job.world_size)]
    return shlex.join(command)


def _run_torchrun(nproc: int, recipe: str, sets: list[str], options: dict, resume: Optional[Path]) -> int:
    """`vaezoo run ... --nproc N`: check the recipe here (one clear line for a bad one), then run the
    same command without --nproc under torchrun on this machine; returns torchrun's exit code."""
    import subprocess

    from vaezoo import distributed
    from vaezoo.recipes import resolve_recipe

    if resume is None:
        resolved = resolve_recipe(recipe, sets, options)
        distributed.check_batch_size(resolved["train"]["batch_size"], distributed.World(0, nproc, 0))
    command = distributed.torchrun_command(nproc, distributed.strip_option(_ARGV or sys.argv[1:], "--nproc"))
    err_console.print(f"starting {nproc} processes: {' '.join(command[1:])}")
    torchrun = subprocess.Popen(command)
    try:
        return torchrun.wait()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM here: torchrun passes SIGINT on to its workers, which save their state
        torchrun.send_signal(signal.SIGINT)
        try:
            torchrun.wait(timeout=120)
        except subprocess.TimeoutExpired:
            torchrun.kill()
            torchrun.wait()
        raise


@app.command("sample")
def sample_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=MAX_PICTURES, help="Number of images.")] = 64,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("samples.png"),
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same picture.")] = 0,
    temperature: Annotated[float, typer.Option(min=0.0, help="Scale of the prior samples.")] = 1.0,
    label: Annotated[Optional[str], typer.Option(help="Class to draw (a name or an index), for conditional models; without it they draw the classes in turn.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
) -> None:
    """Decode N samples of the model into a grid image."""
    from vaezoo.checkpoint import load
    from vaezoo.images import save_grid
    from vaezoo.sample import parse_label, sample_images

    loaded = load(model, device=device)
    index = parse_label(loaded, label)
    save_grid(sample_images(loaded, n, seed=seed, temperature=temperature, label=index), out)
    what = f" of class {loaded.classes[index]!r}" if index is not None else ""
    err_console.print(f"wrote {n} samples{what} to {out}")


@app.command("reconstruct")
def reconstruct_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=MAX_PICTURES, help="Number of test images.")] = 16,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("reconstructions.png"),
    seed: Annotated[int, typer.Option(help="Random seed choosing the test images.")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Data folder (default: VAEZOO_DATA_DIR, else a user folder).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
) -> None:
    """Test images (top rows) above their reconstructions (bottom rows), as a grid image."""
    from vaezoo.api import reconstruct_file

    reconstruct_file(model, out, n=n, seed=seed, data_dir=data_dir, device=device)
    err_console.print(f"wrote {n} test images and their reconstructions to {out}")


@app.command("interpolate")
def interpolate_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=1000, help="Number of image pairs (rows).")] = 8,
    steps: Annotated[int, typer.Option(min=2, max=100, help="Images per row, from one image of the pair to the other.")] = 10,
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("interpolations.png"),
    seed: Annotated[int, typer.Option(help="Random seed choosing the test image pairs.")] = 0,
    data_dir: Annotated[Optional[Path], typer.Option(help="Data folder (default: VAEZOO_DATA_DIR, else a user folder).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "cpu",
) -> None:
    """Decoded straight lines in latent space between pairs of test images (rows = pairs)."""
    from vaezoo.api import interpolate_file

    interpolate_file(model, out, pairs=n, steps=steps, seed=seed, data_dir=data_dir, device=device)
    err_console.print(f"wrote {n} interpolations of {steps} steps to {out}")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    data_dir: Annotated[Optional[Path], typer.Option(help="Data folder (default: VAEZOO_DATA_DIR, else a user folder).")] = None,
    split: Annotated[str, typer.Option(help="Which split to evaluate.")] = "test",
    limit: Annotated[Optional[int], typer.Option(min=0, help="Evaluate on N images drawn with a fixed seed (0: all).")] = None,
    iw_samples: Annotated[int, typer.Option("--iw-samples", min=0, help="Also estimate the NLL with K importance samples per image (IWAE bound; 0: off).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the posterior samples.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Test-split metrics of a saved model: negative ELBO per image (nats) and its parts, the
    importance-weighted NLL (--iw-samples), bits/dim (discrete likelihoods only), MSE and PSNR."""
    from vaezoo.api import evaluate_file

    metrics = evaluate_file(model, data_dir=data_dir, split=split, limit=limit or 0, device=device, iw_samples=iw_samples, seed=seed)
    if as_json:
        _print_json(metrics)
        return
    table = Table(box=None, show_header=False)
    rows = []
    for key, value in metrics.items():
        if key == "terms":  # the family's own terms, under the KL they usually split
            rows += [(f"  {term}", term_value) for term, term_value in value.items()]
        elif key not in ("bits_per_dim_note", "iw_note"):
            rows.append((key, value))
    for key, value in rows:
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else "n/a (see note)" if value is None else str(value))
    console.print(table)
    for note in ("iw_note", "bits_per_dim_note"):
        if note in metrics:
            console.print(f"note: {metrics[note]}")


@app.command("inspect")
def inspect_command(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """What a checkpoint holds: recipe, components and their plugins, shapes, metrics, sha256."""
    from vaezoo.modelfile import describe, is_conditional

    info = describe(model)
    if as_json:
        _print_json(info)
        return
    recipe = info["recipe"]
    console.print(f"[bold]{info['path']}[/bold]  sha256 {info['sha256']}")
    console.print(f"recipe {recipe.get('name')!r}: {recipe.get('summary', '')}")
    family = info["model"]
    provider = f" from {family['distribution']} {family.get('version', '')} (plugin {family.get('plugin')!r})" if family.get("distribution") else " (format 1: vaezoo 0.1)"
    console.print(f"model family {family['name']!r}{provider}")
    console.print(f"vaezoo {info['vaezoo_version']}, format {info['format_version']}, data {info['data']['shape']}, {info['tensors']} tensors, {info['parameters']:,} parameters")
    if is_conditional({"recipe": recipe, "data": info["data"]}):
        console.print(f"class-conditional (sample --label): {', '.join(f'{i} {name}' for i, name in enumerate(info['data'].get('classes', [])))}")
    components = [(r["kind"], r["name"], r["distribution"], r["version"]) for r in info["components"]]
    console.print(_table(("component", "name", "distribution", "version"), components))
    training = info["training"]
    if training:
        console.print(f"trained {training.get('epochs')} epochs, {training.get('steps')} steps ({training.get('precision')} on {training.get('device')})")
    for key, value in info["metrics"].items():
        console.print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")


@app.command("push")
def push_command(
    source: Annotated[str, typer.Argument(metavar="RUN_DIR_OR_MODEL", help="A run folder or a model.safetensors file.")],
    repo_id: Annotated[str, typer.Argument(metavar="ORG/NAME", help="Hugging Face Hub model repository (created if missing).")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    revision: Annotated[Optional[str], typer.Option(help="Branch to push to (created if missing; default main).")] = None,
    dry_run: Annotated[Optional[str], typer.Option("--dry-run", metavar="DIR", help="Write the files that would be uploaded into DIR instead.")] = None,
) -> None:
    """Publish a model to the Hugging Face Hub: model.safetensors, samples.png, recipe.toml and a
    generated model card (README.md). Needs `pip install 'vaezoo\\[hub]'` and a token (`hf auth login` or HF_TOKEN)."""
    from vaezoo.hub import push

    where = push(source, repo_id, private=private, revision=revision, dry_run=dry_run)
    if dry_run is not None:
        for name in sorted(os.listdir(where)):
            err_console.print(f"  {Path(where) / name}")
        err_console.print(f"wrote what `vaezoo push` would upload to {where}")
    else:
        err_console.print(f"pushed to {where}; load it with: vaezoo sample hf://{repo_id}" + (f"@{revision}" if revision else ""))


@app.command("card")
def card_command(
    model: Annotated[str, typer.Argument(help="A run folder, " + MODEL_HELP[2:])],
    repo_id: Annotated[Optional[str], typer.Option("--repo", metavar="ORG/NAME", help="Repository name the card's examples load from.")] = None,
) -> None:
    """Print the model card (README.md) that `vaezoo push` would upload."""
    from vaezoo.card import card_for

    sys.stdout.write(card_for(model, repo_id))


class _Plain:
    """Typer's runtime coercion for a `str` or `bool` parameter whose value already has that type,
    without pydantic: typer 0.29 builds a pydantic TypeAdapter for each parameter it processes, and
    importing pydantic is most of the start-up time of `vaezoo list`. Anything else goes to typer."""

    def __init__(self, param, typer_coercion) -> None:
        self.param, self.typer_coercion = param, typer_coercion

    def coerce(self, value, param, ctx):
        if value is None or isinstance(value, self.param.type_descriptor.annotation):
            return value
        self.param._runtime_param = None  # typer's own coercion replaces this one
        return self.typer_coercion(self.param).coerce(value, param=param, ctx=ctx)


def _fast_command():
    """The click command of `app`; plain str/bool parameters are coerced without importing pydantic
    (if typer's internals change, typer's own coercion is used)."""
    core = getattr(typer, "core", None)
    parameter = getattr(core, "_TyperParameter", None)
    typer_coercion = getattr(parameter, "get_runtime_param", None)
    if typer_coercion is not None and not getattr(typer_coercion, "vaezoo_plain", False):

        def get_runtime_param(self):
            descriptor = getattr(self, "type_descriptor", None)
            if self._runtime_param is None and descriptor is not None and descriptor.annotation in (str, bool) and not self.multiple and self.nargs == 1:
                self._runtime_param = _Plain(self, typer_coercion)
            return typer_coercion(self) if self._runtime_param is None else self._runtime_param

        get_runtime_param.vaezoo_plain = True
        parameter.get_runtime_param = get_runtime_param
    return typer.main.get_command(app)


_ARGV: list[str] = []


def main(argv: list[str] | None = None, *, restore_signals: bool = True) -> None:
    """Entry point: user errors become one line on stderr and an exit code (2 input, 1 failed
    run, 130 interrupted); `--debug` / VAEZOO_DEBUG=1 shows the traceback. The console script
    leaves SIGINT / SIGTERM ignored on its way out (`restore_signals=False`)."""
    global _ARGV
    _ARGV = list(argv if argv is not None else sys.argv[1:])  # for `run --nproc`, which runs them again
    debug = "--debug" in _ARGV or os.environ.get("VAEZOO_DEBUG") == "1"
    previous = {sig: signal.signal(sig, stop_now) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code, line = _fast_command()(args=argv, prog_name="vaezoo", standalone_mode=False), None
    except (typer.Abort, KeyboardInterrupt):
        code, line = 130, "vaezoo: interrupted"
    except VaezooError as error:
        if debug:
            traceback.print_exc()
        code, line = error.exit_code, f"vaezoo: error: {error}"
    except OSError as error:  # a full disk, a read-only folder, a file that vanished: the user's to fix
        if debug:
            traceback.print_exc()
        where = f" {error.filename}" if error.filename else ""
        code, line = 2, f"vaezoo: error: cannot read or write{where}: {error.strerror or error}"
    except Exception as error:
        if hasattr(error, "format_message") and hasattr(error, "exit_code"):  # typer/click usage errors
            code, line = error.exit_code, f"vaezoo: error: {error.format_message()} (see `vaezoo --help`)"
        else:  # a bug, not the user's fault: one line unless debugging
            if debug:
                traceback.print_exc()
            code, line = 1, f"vaezoo: internal error: {type(error).__name__}: {error} (run with --debug for the traceback)"
    finally:
        for sig in previous:  # a signal now would only cut the last line short
            signal.signal(sig, signal.SIG_IGN)
    if code == 130:
        forget_interrupt()
        line = line or "vaezoo: interrupted"  # typer turns a KeyboardInterrupt into a silent 130
    if line:
        print(line.splitlines()[0], file=sys.stderr)
    for sig, handler in previous.items() if restore_signals else ():
        signal.signal(sig, handler)
    code = code if isinstance(code, int) else 0
    distributed = sys.modules.get("vaezoo.distributed")  # imported only by commands that use torch
    if distributed is not None and distributed.created_group():  # a torchrun worker: see its exit_worker
        distributed.exit_worker(code)
    sys.exit(code)
