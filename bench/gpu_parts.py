"""The engine of bench/gpu.sh (run that script): the GPU-speed table of cifar-vae in one run, under 8
minutes on an H100/H200, with ratios and a PASS/MISS per target of the "GPU speed" issue:

- the notebook recipe as written (a torchvision dataset of the JPEG files -> PIL -> ToTensor ->
  DataLoader, the notebook's model, fp32);
- a plain PyTorch loop of vaezoo's own cifar-vae network over a uint8 tensor resident on the device,
  eager, fp32 and bf16 autocast (bench/train_speed.py: plain_loop);
- the same loop with the whole step (forward, backward, Adam(capturable=True)) captured as one CUDA graph
  (bench/train_speed.py: graphed_loop);
- `vaezoo run cifar-vae` at fp32 / bf16 / auto with its CUDA-graph step on (the default) and off
  (`--set train.cuda_graph=false`), images/s read from each run's metrics.jsonl;
- the full recipe (`vaezoo run cifar-vae` as a user runs it): wall seconds, test loss, last epoch images/s;
- one short run of each model family's recipe with the precision auto chose.

Every part runs in its own process with a timeout; a part that fails or runs out of time prints its error
in its row and the others go on; the whole run stops starting parts when its budget is spent. The plain
loops and the vaezoo runs are measured in interleaved rounds (plain loops, then the six vaezoo runs, the
order reversed in the next round), and each figure is the median of its repeats, as the other benches do.

    bash bench/gpu.sh --data-dir PATH [--out FILE]                 # an H100/H200: under 8 minutes
    bash bench/gpu.sh --device cpu --quick --data-dir PATH         # a dry run with tiny sizes (minutes)
    python bench/gpu_parts.py --part plain --device cuda ...       # one part alone (prints one JSON line)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaezoo.errors import error_line

BENCH = Path(__file__).resolve().parent
BATCH = 128  # cifar-vae's batch size, of every loop here

PLAIN_TARGET = 130_000  # images/s of the graph-captured plain loop in fp32 on an H200 (the measurement)
HVAE_TARGET = 5_000  # images/s of cifar-hvae
NOISE_FLOOR = 0.03  # "beyond noise": at least 3%, more when the repeats of this run spread wider

FAMILY_RECIPES = [
    "cifar-vae",
    "cifar-iwae",
    "cifar-cvae",
    "cifar-hvae",
    "cifar-vqvae",
    "cifar-resnet-dlogistic",
    "cifar-iaf-vae",
    "cifar-beta-tcvae",
    "cifar-wae",
    "cifar-rae",
    "cifar-aae",
    "cifar-vae-gan",
]
PLAIN = [("eager", "fp32"), ("eager", "bf16"), ("graph", "fp32"), ("graph", "bf16")]
VAEZOO = [(precision, graph) for precision in ("fp32", "bf16", "auto") for graph in (True, False)]
GRAPH_OFF = "train.cuda_graph=false"
STOP_S = 10  # seconds kept back from a part's timeout for stopping it (SIGTERM, then SIGKILL after 5 s)
MIN_PART_S = 15  # a part is not started with less time than this left in the budget


@dataclass(frozen=True)
class Plan:
    """Sizes and time limits of one run of the benchmark."""

    rounds: int  # interleaved rounds of (plain loops, six vaezoo runs)
    plain_images: int
    plain_epochs: int
    plain_repeats: int  # interleaved repeats of the four plain loops inside one process
    notebook_images: int
    notebook_repeats: int
    speed_options: tuple[str, ...]  # `vaezoo run cifar-vae` options of the six speed rows
    full_options: tuple[str, ...]  # of the full-recipe row (none: the recipe as a user runs it)
    family_options: tuple[str, ...]
    timeouts: dict[str, int]  # seconds per process of each part
    budget_s: int  # the whole run: no part starts after it


SPEED_COMMON = ("--set", "train.sample_count=8")
# On an H100/H200 (cifar-vae ~100-150k images/s, so an epoch of the 50k images is ~0.4 s; a `vaezoo run`
# spends ~5-8 s starting: python, torch, CUDA, the cached data). Expected time of each part in the comments;
# the timeouts leave about 3x that. Expected in all: ~6.5 minutes with the data cache warm, ~7.5 cold. Run order:
# data, round 1, cifar-hvae, round 2, notebook, full recipe, the other families: when the 420 s are spent, the
# parts still to come are skipped (their rows say so), so the last families go first.
GPU = Plan(
    rounds=2,  # 2 x (plain loops ~20 s + six vaezoo runs ~10 s each) ~ 160 s
    plain_images=50_000,  # one process: start + data ~8 s, warm-up + 2 captures ~3 s, 3 x 4 loops of ~0.5 s
    plain_epochs=1,
    plain_repeats=3,
    notebook_images=10_000,  # ~5k images/s with PIL in the main process: 3 x 2 s + the folder scan, ~20 s
    notebook_repeats=3,
    # all 50k images, 3 epochs; epochs 2-3 are timed (epoch 1 warms up and captures): ~10 s per run
    speed_options=("--epochs", "3", "--set", "train.test_limit=2000", *SPEED_COMMON),
    full_options=(),  # 15 epochs of 50k + 15 evaluations of the 10k test images: ~25-40 s
    # one short epoch of 10,240 images after a warm-up epoch: ~8-15 s per family, 12 families ~150 s
    family_options=("--epochs", "2", "--limit", "10240", "--set", "train.test_limit=1000", *SPEED_COMMON),
    # prep: decoding the 60k JPEGs into vaezoo's uint8 cache the first time (~30-60 s; ~3 s once cached)
    timeouts={"prep": 180, "plain": 90, "notebook": 90, "speed": 60, "full": 150, "family": 60},
    budget_s=420,  # parts stop by then, leaving a minute of the 8 for a part's stop and the table
)
# A dry run (`--quick`, e.g. on a CPU): every part with tiny sizes, to check that the script works end to end
# (9 minutes on 2 CPU cores shared with other work; most of it the start of each `vaezoo run` and auto's probe).
QUICK = Plan(
    rounds=1,
    plain_images=512,
    plain_epochs=1,
    plain_repeats=1,
    notebook_images=256,
    notebook_repeats=1,
    speed_options=("--epochs", "2", "--limit", "256", "--set", "train.test_limit=128", *SPEED_COMMON),
    full_options=("--epochs", "2", "--limit", "256", "--set", "train.test_limit=128"),
    family_options=("--epochs", "1", "--limit", "64", "--set", "train.test_limit=64", *SPEED_COMMON),
    timeouts={"prep": 300, "plain": 180, "notebook": 120, "speed": 120, "full": 180, "family": 180},
    budget_s=900,
)


# ---------------------------------------------------------------- parts that run in a child process


def _device_and_images(args: argparse.Namespace, count: int):
    from vaezoo.api import make_dataset
    from vaezoo.data import limit_subset, load_split
    from vaezoo.recipes.resolve import resolve_recipe
    from vaezoo.trainer.devices import resolve_device

    device = resolve_device(args.device)
    dataset = make_dataset(resolve_recipe("cifar-vae"), args.data_dir)
    images, _ = limit_subset(*load_split(dataset, "train"), count)
    return device, dataset, images


def part_prep(args: argparse.Namespace) -> dict[str, Any]:
    """The machine, and both splits decoded into vaezoo's cache (the first time only), before any timing."""
    import torch

    import vaezoo
    from vaezoo.data import load_split

    started = time.perf_counter()
    device, dataset, images = _device_and_images(args, 0)
    test, _ = load_split(dataset, "test")
    return {
        "torch": torch.__version__,
        "vaezoo": vaezoo.__version__,
        "device": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
        ),
        "train_images": len(images),
        "test_images": len(test),
        "seconds": time.perf_counter() - started,
    }


def part_plain(args: argparse.Namespace) -> dict[str, Any]:
    """The four plain loops of vaezoo's cifar-vae network, interleaved, after one warm-up call each."""
    sys.path.insert(0, str(BENCH))
    from train_speed import graphed_loop, plain_loop

    from vaezoo.trainer.devices import resolve_precision

    device, _, images = _device_and_images(args, args.images)
    images = images.to(device)

    def measure(kind: str, precision_name: str, data) -> float:
        precision = resolve_precision(precision_name, device)
        if kind == "graph":
            return graphed_loop(data, args.epochs, BATCH, precision, device)
        return plain_loop(data, args.epochs, BATCH, precision, device, network="vaezoo")

    results: dict[str, dict[str, Any]] = {f"{k} {p}": {"values": []} for k, p in PLAIN}
    for kind, precision in PLAIN:  # first calls pick kernels and allocate: not timed
        try:
            measure(kind, precision, images[: 4 * BATCH])
        except Exception as error:  # the row reports it, the other loops go on
            results[f"{kind} {precision}"]["error"] = error_line(error)
    for _ in range(args.repeats):
        for kind, precision in PLAIN:
            entry = results[f"{kind} {precision}"]
            if "error" in entry:
                continue
            try:
                entry["values"].append(measure(kind, precision, images))
            except Exception as error:  # the row reports it
                entry["error"] = error_line(error)
    return {"images": len(images), "epochs": args.epochs, "loops": results}


def _cifar_base(root: Path) -> tuple[str, Path] | None:
    """Where the CIFAR-10 files are under a data folder, as vaezoo's cifar10 dataset looks for them."""
    for base in (root, root / "cifar10", root / "cifar10-images", root / "cifar-10"):
        if (base / "cifar-10-batches-py" / "data_batch_1").is_file():
            return "batches", base
        if (base / "train").is_dir() and (base / "test").is_dir():
            return "folders", base
    return None


def part_notebook(args: argparse.Namespace) -> dict[str, Any]:
    """The notebook recipe as written: torchvision's dataset of the image files (ImageFolder of the JPEG
    class folders; CIFAR10 for the official batches), ToTensor, DataLoader(batch 128, shuffle=True, no
    worker processes), the notebook's model and loss, fp32."""
    import torch
    from torchvision import datasets, transforms

    sys.path.insert(0, str(BENCH))
    from train_speed import notebook_loop

    from vaezoo.data import data_root
    from vaezoo.trainer.devices import resolve_device

    device = resolve_device(args.device)
    found = _cifar_base(data_root(args.data_dir))
    if found is None:
        raise SystemExit(f"no CIFAR-10 class folders or cifar-10-batches-py under {data_root(args.data_dir)}")
    layout, base = found
    if layout == "folders":
        full = datasets.ImageFolder(str(base / "train"), transform=transforms.ToTensor())
    else:
        full = datasets.CIFAR10(str(base), train=True, download=False, transform=transforms.ToTensor())
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(0))[: args.images].tolist()
    notebook_loop(torch.utils.data.Subset(full, order[: 4 * BATCH]), 1, BATCH, device)  # warm-up
    values = [
        notebook_loop(torch.utils.data.Subset(full, order), args.epochs, BATCH, device) for _ in range(args.repeats)
    ]
    return {"images": len(order), "layout": layout, "values": values}


PARTS = {"prep": part_prep, "plain": part_plain, "notebook": part_notebook}


# ---------------------------------------------------------------- the orchestrator


@dataclass
class Outcome:
    seconds: float
    stdout: str = ""
    stderr: str = ""
    error: str | None = None


@dataclass
class Bench:
    args: argparse.Namespace
    plan: Plan
    tmp: Path
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.plan.budget_s - (time.perf_counter() - self.started)

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:5.0f} s] {text}", file=sys.stderr, flush=True)

    def run(self, command: list[str], part: str, label: str) -> Outcome:
        """`command` in its own process group, killed at the part's timeout or the end of the budget."""
        timeout = min(self.plan.timeouts[part], self.left() - STOP_S)
        if timeout < MIN_PART_S:
            return Outcome(0.0, error=f"skipped: the {self.plan.budget_s} s budget was spent")
        self.say(f"{label} ...")
        started = time.perf_counter()
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.tmp,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            stdout, stderr = process.communicate()
            outcome = Outcome(time.perf_counter() - started, stdout, stderr, f"timed out after {timeout:.0f} s")
        except BaseException:  # Ctrl-C: the child goes too
            _stop(process)
            raise
        else:
            outcome = Outcome(time.perf_counter() - started, stdout, stderr)
            if process.returncode:
                outcome.error = _last_error(stderr, stdout, process.returncode)
        self.say(f"{label}: {outcome.error or 'done'} ({outcome.seconds:.0f} s)")
        return outcome

    def child(self, part: str, label: str, **options: Any) -> dict[str, Any]:
        command = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--device", self.args.device]
        command += ["--data-dir", self.args.data_dir]
        command += [f"--{key}={value}" for key, value in options.items()]
        outcome = self.run(command, part, label)
        if outcome.error:
            return {"error": outcome.error}
        try:
            return json.loads([line for line in outcome.stdout.splitlines() if line.startswith("{")][-1])
        except (IndexError, ValueError):
            return {"error": f"no result printed: {_last_error(outcome.stderr, outcome.stdout, 0)}"}

    def vaezoo(self, recipe: str, name: str, part: str, options: tuple[str, ...] | list[str]) -> dict[str, Any]:
        """`vaezoo run RECIPE` as a user runs it, into a folder under the temporary one; what its files say."""
        out = self.tmp / name
        command = [*vaezoo_command(), "run", recipe, "--device", self.args.device, "--data-dir", self.args.data_dir]
        outcome = self.run([*command, "--out", str(out), *options], part, name)
        result: dict[str, Any] = {"wall_s": outcome.seconds}
        if outcome.error:
            text = outcome.stderr + outcome.stdout
            if re.search(r"unknown key train\.cuda_graph\b", text):
                outcome.error = "refused: this vaezoo has no train.cuda_graph setting yet (the CUDA-graph step)"
            result["error"] = outcome.error
            return result
        try:
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            result["epochs"] = [row["images_per_s"] for row in rows]
            result["test_loss"] = rows[-1]["test_loss"]
            result["capture_s"] = next((r["compile_seconds"] for r in rows if "compile_seconds" in r), None)
            train = tomllib.loads((out / "recipe.toml").read_text()).get("train", {})
            result["cuda_graph"] = train.get("cuda_graph")  # None: this vaezoo has no such setting
            result["precision"] = _model_precision(out / "model.safetensors") or train.get("precision")
        except (OSError, ValueError, KeyError, IndexError) as error:
            result["error"] = f"its run folder is incomplete: {error_line(error)}"
        steps = [line for line in outcome.stdout.splitlines() if line.strip().startswith("training step:")]
        if steps:
            result["step"] = steps[-1].strip().removeprefix("training step:").strip()
        failed = [line for line in outcome.stderr.splitlines() if line.endswith("; training eagerly")]
        if failed:  # the capture was tried and refused: the run trained eagerly after all
            why = failed[-1].removeprefix("vaezoo: warning: ").removesuffix("; training eagerly")
            result["step"] = f"eager ({why})"
        if not self.args.keep_runs:
            shutil.rmtree(out, ignore_errors=True)
        return result


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (vaezoo stops cleanly), SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
            process.wait(wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _last_error(stderr: str, stdout: str, returncode: int) -> str:
    lines = [line.strip() for line in (stderr or stdout).splitlines() if line.strip()]
    return (lines[-1][:300] if lines else "") or f"exit {returncode}"


def _model_precision(path: Path) -> str | None:
    from vaezoo.files.model_header import read_metadata

    try:
        return read_metadata(path)[0].get("training", {}).get("precision")
    except Exception:  # only a note of the row
        return None


def vaezoo_command() -> list[str]:
    """The `vaezoo` console script of this Python (a venv's bin/), else one on PATH, else `python -m vaezoo`."""
    beside = Path(sys.executable).parent / "vaezoo"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("vaezoo")
    return [found] if found else [sys.executable, "-m", "vaezoo"]


def cpu_sets(recipe: str) -> list[str]:
    """On a CPU, the CPU-sized variant of a GPU-sized recipe (bench/families.py), as `--set` options."""
    sys.path.insert(0, str(BENCH))
    from families import FAMILIES

    return [option for item in FAMILIES.get(recipe, []) for option in ("--set", item)]


# ---------------------------------------------------------------- statistics and the table


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float]) -> float:
    """(max - min) / median of the repeats: how much this run's measurements of one thing moved."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def timed_epochs(run: dict[str, Any]) -> list[float]:
    """images/s of the epochs after the first (the first warms up and captures), or the only one."""
    epochs = run.get("epochs") or []
    return epochs[1:] or epochs


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def status(error: str) -> str:
    """The images/s cell of a row that has no figure."""
    for word in ("needs CUDA", "skipped", "timed out", "refused"):
        if word in error:
            return word
    return "failed"


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def build_table(bench: Bench, results: dict[str, Any]) -> str:
    plan, args = bench.plan, bench.args
    cuda = args.device.startswith("cuda")
    rows: list[tuple[str, str, str, str]] = []
    notebook = results.get("notebook", {})
    notebook_speed = median(notebook.get("values", []))

    def vs_notebook(speed: float | None) -> str:
        return f"{speed / notebook_speed:.1f}x notebook" if speed and notebook_speed else ""

    def ratios(*parts: str) -> str:
        return "; ".join(part for part in parts if part)

    # notebook
    if "error" in notebook:
        rows.append((NOTEBOOK_ROW, status(notebook["error"]), "", notebook["error"]))
    else:
        rows.append(
            (
                NOTEBOOK_ROW,
                fmt(notebook_speed),
                "1.0x notebook",
                f"{notebook.get('images')} images ({notebook.get('layout')}), median of {plan.notebook_repeats}",
            )
        )

    # plain loops: every repeat of every round
    plain: dict[str, list[float]] = {f"{k} {p}": [] for k, p in PLAIN}
    plain_errors: dict[str, str] = {}
    for number, round_result in enumerate(results.get("plain", []), 1):
        if "error" in round_result:
            for name in plain:
                plain_errors.setdefault(name, f"round {number}: {round_result['error']}")
            continue
        for name, entry in round_result["loops"].items():
            plain[name] += entry["values"]
            if "error" in entry:
                plain_errors.setdefault(name, entry["error"])
    plain_speed = {name: median(values) for name, values in plain.items()}
    for kind, precision in PLAIN:
        name = f"{kind} {precision}"
        label = PLAIN_ROWS[kind].format(precision="fp32" if precision == "fp32" else "bf16 autocast")
        speed = plain_speed[name]
        if speed is None:
            error = plain_errors.get(name, "not run")
            rows.append((label, status(error), "", error))
            continue
        other = plain_speed.get(f"eager {precision}") if kind == "graph" else None
        rows.append(
            (
                label,
                fmt(speed),
                ratios(
                    vs_notebook(speed),
                    f"graph / eager {speed / other:.2f}" if other else "",
                    f"bf16 / fp32 {speed / plain_speed[f'{kind} fp32']:.2f}"
                    if precision == "bf16" and plain_speed[f"{kind} fp32"]
                    else "",
                ),
                f"median of {len(plain[name])} ({plain_images(results)} images x {plan.plain_epochs} epoch)"
                + ("" if kind == "eager" else "; full batches only")
                + (f"; {plain_errors[name]}" if name in plain_errors else ""),
            )
        )

    # vaezoo cifar-vae, six configurations
    speeds: dict[tuple[str, bool], list[float]] = {}
    for precision, graph in VAEZOO:
        runs = results.get("vaezoo", {}).get((precision, graph), [])
        good = [run for run in runs if "error" not in run]
        values = [value for run in good for value in timed_epochs(run)]
        speeds[(precision, graph)] = values
        label = (
            f"vaezoo cifar-vae {precision}, CUDA-graph step on (default)"
            if graph
            else f"vaezoo cifar-vae {precision}, CUDA-graph step off (`--set {GRAPH_OFF}`)"
        )
        if not good:
            error = runs[0]["error"] if runs else "not run"
            rows.append((label, status(error), "", error))
            continue
        speed = median(values)
        chosen = good[-1].get("precision") or precision
        # the plain loop of the same precision, as one CUDA graph when vaezoo's step may be one
        yardstick_name = f"graph {chosen}" if graph and plain_speed.get(f"graph {chosen}") else f"eager {chosen}"
        yardstick = plain_speed.get(yardstick_name)
        fp32 = median(speeds.get(("fp32", graph), []))
        counterpart = median(speeds.get((precision, True), [])) if not graph else None
        notes = [f"median of {len(values)} epoch(s) of {len(good)} run(s)"]
        if precision == "auto":
            notes.insert(0, f"auto chose {chosen}")
        if good[-1].get("step"):
            notes.append(f"step: {good[-1]['step']}")
        elif graph and good[-1].get("cuda_graph") is None:
            notes.append("this vaezoo has no train.cuda_graph setting: eager step")
        elif not cuda:
            notes.append(f"eager step on {args.device}")
        if good[-1].get("capture_s"):
            notes.append(f"capture timed apart {good[-1]['capture_s']:.1f} s")
        if len(good) < len(runs):
            notes.append(f"{len(runs) - len(good)} run(s) failed: {next(r['error'] for r in runs if 'error' in r)}")
        rows.append(
            (
                label,
                fmt(speed),
                ratios(
                    vs_notebook(speed),
                    f"{speed / yardstick:.2f}x plain loop {yardstick_name}" if yardstick else "",
                    f"{speed / fp32:.2f}x vaezoo fp32" if precision != "fp32" and fp32 else "",
                    f"off / on {speed / counterpart:.2f}" if counterpart else "",
                ),
                "; ".join(notes),
            )
        )

    # the full recipe
    full = results.get("full", {})
    label = "`vaezoo run cifar-vae` full recipe" + (
        f" (quick: `{' '.join(plan.full_options)}`)" if plan.full_options else " (15 epochs, 50k images)"
    )
    if "error" in full or not full:
        rows.append((label, status(full.get("error", "not run")), "", full.get("error", "not run")))
    else:
        last = full["epochs"][-1]
        notes = [
            f"wall {full['wall_s']:.1f} s for the whole command",
            f"test loss {full['test_loss']:.2f}",
            f"precision {full.get('precision')}",
            *([f"step: {full['step']}"] if full.get("step") else []),
            "images/s of the last epoch",
        ]
        rows.append((label, fmt(last), vs_notebook(last), "; ".join(notes)))

    # the families
    families = results.get("families", {})
    yardstick = families.get("cifar-vae", {})
    base = yardstick["epochs"][-1] if yardstick.get("epochs") else None
    for recipe in FAMILY_RECIPES:
        run = families.get(recipe)
        label = f"family recipe `{recipe}`, one short epoch"
        if run is None:
            rows.append((label, "not run", "", ""))
            continue
        if "error" in run:
            rows.append((label, status(run["error"]), "", run["error"]))
            continue
        speed = run["epochs"][-1]
        notes = [f"precision {run.get('precision')}", *([f"step: {run['step']}"] if run.get("step") else [])]
        if run.get("sets"):
            notes.append("CPU variant " + " ".join(run["sets"][1::2]))
        rows.append((label, fmt(speed), f"{speed / base:.2f}x cifar-vae" if base else "", "; ".join(notes)))

    lines = ["| what | images/s | ratios | notes |", "|---|---:|---|---|"]
    lines += [f"| {cell(a)} | {cell(b)} | {cell(c)} | {cell(d)} |" for a, b, c, d in rows]

    # the targets
    targets = ["| target | measured | result |", "|---|---|---|"]
    graph_plain, vaezoo_fp32 = plain_speed.get("graph fp32"), median(speeds.get(("fp32", True), []))
    if graph_plain and vaezoo_fp32:
        ratio = vaezoo_fp32 / graph_plain
        measured = f"{ratio:.2f} ({vaezoo_fp32:,.0f} / {graph_plain:,.0f} images/s)"
        verdict = "PASS" if ratio >= 1.0 else "MISS"
    else:
        measured = "needs both rows" if cuda else "the graph-captured plain loop needs CUDA"
        verdict = "n/a"
    targets.append(
        f"| vaezoo fp32 (graph on) / graph-captured plain loop fp32 >= 1.0 (>= {PLAIN_TARGET:,} images/s on an H200) "
        f"| {measured} | {verdict} |"
    )
    for graph in (True, False):
        fp32, auto = speeds.get(("fp32", graph), []), speeds.get(("auto", graph), [])
        state = "on" if graph else "off"
        if fp32 and auto:
            noise = max(NOISE_FLOOR, spread(fp32), spread(auto))
            ratio = median(auto) / median(fp32)
            verdict = "PASS" if ratio >= 1 - noise else "MISS"
            measured = f"{ratio:.2f} (noise {noise:.0%}: the larger of 3% and the spread of their repeats)"
        else:
            measured, verdict = "needs both rows", "n/a"
        targets.append(f"| auto / fp32 (graph {state}) never below 1 beyond noise | {measured} | {verdict} |")
    hvae = families.get("cifar-hvae", {})
    if hvae.get("epochs"):
        speed = hvae["epochs"][-1]
        extra = f" ({hvae.get('precision')}{', CPU variant' if hvae.get('sets') else ''})"
        targets.append(
            f"| cifar-hvae >= {HVAE_TARGET:,} images/s | {speed:,.0f}{extra} | "
            f"{'PASS' if speed >= HVAE_TARGET else 'MISS'} |"
        )
    else:
        targets.append(f"| cifar-hvae >= {HVAE_TARGET:,} images/s | {hvae.get('error', 'not run')} | n/a |")
    if not cuda:
        targets += ["", f"A dry run on {args.device}: the targets are judged on an H100/H200."]
    return "\n".join(lines) + "\n\n" + "\n".join(targets)


def plain_images(results: dict[str, Any]) -> int | str:
    return next((r["images"] for r in results.get("plain", []) if "images" in r), "?")


NOTEBOOK_ROW = (
    "notebook recipe as written (torchvision dataset of the JPEG files -> PIL -> ToTensor -> DataLoader, fp32)"
)
PLAIN_ROWS = {
    "eager": "plain PyTorch loop, uint8 tensor resident on the device, eager, {precision}",
    "graph": "the same plain loop, the whole step (forward, backward, Adam(capturable=True)) as one CUDA graph, "
    "{precision}",
}


def orchestrate(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else GPU
    if args.budget_s:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    if args.rounds:
        plan = dataclasses.replace(plan, rounds=args.rounds)
    tmp = Path(tempfile.mkdtemp(prefix="vaezoo-gpu-bench-"))
    bench = Bench(args, plan, tmp)
    results: dict[str, Any] = {"plain": [], "vaezoo": {}, "families": {}}
    interrupted = False

    def table() -> str:
        prep = results.get("prep", {})
        header = [
            f"# bench/gpu.sh{' --quick' if args.quick else ''}: {prep.get('device', args.device)}, "
            f"torch {prep.get('torch', '?')}, vaezoo {prep.get('vaezoo', '?')}, {platform.node() or 'this machine'}",
            "",
            f"{time.perf_counter() - bench.started:.0f} s in all (budget {plan.budget_s} s); batch {BATCH}; "
            f"{plan.rounds} interleaved round(s) of the plain loops and the vaezoo runs; medians of the repeats. "
            "Ratios measured in this run are what to read.",
            "",
            "",
        ]
        return "\n".join(header) + build_table(bench, results) + "\n"

    def save() -> None:
        """The table so far into --out after each part: a run stopped from outside keeps what it measured."""
        if args.out:
            Path(args.out).write_text(table())

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):  # a job scheduler's stop: the table of what was measured
        if signal.getsignal(sig) is not signal.SIG_IGN:  # under nohup a closed terminal stays ignored
            signal.signal(sig, stop)
    try:
        prep = bench.child("prep", "data and machine")
        if "error" in prep:
            print(f"gpu.sh: cannot start: {prep['error']} (a dry run: --device cpu --quick)", file=sys.stderr)
            return 1
        results["prep"] = prep
        save()
        family_sets = {r: cpu_sets(r) for r in FAMILY_RECIPES} if args.device == "cpu" else {}

        def family(recipe: str) -> None:
            sets = family_sets.get(recipe, [])
            # cifar-hvae's KL warm-up (200 steps) keeps its step eager into epoch 2 of 160 steps: its graph is
            # captured there, so the epoch reported is a third, all replays
            more = ["--epochs", "3"] if recipe == "cifar-hvae" and not args.quick else []
            run = bench.vaezoo(recipe, f"family-{recipe}", "family", [*plan.family_options, *more, *sets])
            results["families"][recipe] = {**run, "sets": sets}
            save()

        for round_ in range(plan.rounds):
            plain_options = {"images": plan.plain_images, "epochs": plan.plain_epochs, "repeats": plan.plain_repeats}
            results["plain"].append(bench.child("plain", f"round {round_ + 1}: plain loops", **plain_options))
            save()
            for precision, graph in VAEZOO if round_ % 2 == 0 else VAEZOO[::-1]:
                options = ["--precision", precision, *plan.speed_options, *([] if graph else ["--set", GRAPH_OFF])]
                name = f"round{round_ + 1}-{precision}-graph-{'on' if graph else 'off'}"
                results["vaezoo"].setdefault((precision, graph), []).append(
                    bench.vaezoo("cifar-vae", name, "speed", options)
                )
                save()
            if round_ == 0:
                family("cifar-hvae")  # judged by the issue: measured early
        results["notebook"] = bench.child(
            "notebook",
            "notebook recipe",
            images=plan.notebook_images,
            epochs=1,
            repeats=plan.notebook_repeats,
        )
        save()
        results["full"] = bench.vaezoo("cifar-vae", "full-recipe", "full", list(plan.full_options))
        save()
        for recipe in FAMILY_RECIPES:
            if recipe not in results["families"]:
                family(recipe)
    except KeyboardInterrupt:
        interrupted = True
        print("gpu.sh: interrupted: the table of what was measured so far", file=sys.stderr)
    finally:
        if not args.keep_runs:
            shutil.rmtree(tmp, ignore_errors=True)
    text = table()
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.keep_runs:
        print(f"run folders kept in {tmp}", file=sys.stderr)
    return 130 if interrupted else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("VAEZOO_DATA_DIR"))
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that every part works")
    parser.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default: 2, quick: 1)")
    parser.add_argument("--budget-s", type=int, default=0, help="no part starts after this (default: 420, quick: 900)")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--keep-runs", action="store_true", help="keep the vaezoo run folders (printed at the end)")
    # one part in this process (what the orchestrator starts)
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("--data-dir PATH is needed (the CIFAR-10 folder), or VAEZOO_DATA_DIR")
    args.data_dir = str(Path(args.data_dir).expanduser().resolve())
    if args.part:
        print(json.dumps(PARTS[args.part](args)))
        return
    raise SystemExit(orchestrate(args))


if __name__ == "__main__":
    main()
