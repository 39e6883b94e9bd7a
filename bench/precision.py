"""Precision and fast paths on real CIFAR-10 images, measured in one run: vaezoo's trainer per
configuration (fp32, bf16, fp16 on CUDA, fp32 + torch.compile, ...) against the plain PyTorch loop and
the notebook recipe (bench/train_speed.py), with the test loss after the same epochs and the same seed
(so that `auto` can be checked: fastest option within 1% of fp32's test loss), sampling speed and peak
memory. Each configuration runs in its own process (a clean peak-memory reading).

    python bench/precision.py --data-dir ../shared/data/cifar10-images --images 10000 --epochs 2
    python bench/precision.py --configs fp32,bf16,fp32+compile --device cpu --json
    python bench/precision.py --device cuda --configs fp32,bf16,fp16,bf16+compile
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def run_one(config: str, args: argparse.Namespace) -> dict:
    """One configuration in this process: images/s, test loss, sampling images/s, peak memory."""
    import torch

    sys.path.insert(0, str(BENCH))
    from train_speed import notebook_recipe, plain_loop, vaezoo_run

    from vaezoo.api import make_dataset
    from vaezoo.data import limit_subset, load_split
    from vaezoo.recipes.resolve import resolve_recipe
    from vaezoo.trainer.devices import resolve_device, resolve_precision

    device = resolve_device(args.device)
    recipe = resolve_recipe("cifar-vae")
    dataset = make_dataset(recipe, args.data_dir)
    images, _ = limit_subset(*load_split(dataset, "train"), args.images)
    test_images, _ = limit_subset(*load_split(dataset, "test"), args.test_images)
    name, *flags = config.split("+")
    result: dict = {"config": config, "device": str(device)}
    if name in ("notebook", "plain"):
        fp32 = resolve_precision("fp32", device)
        speed = (
            notebook_recipe(images, args.epochs, args.batch_size, device)
            if name == "notebook"
            else plain_loop(images, args.epochs, args.batch_size, fp32, device)
        )
        result["images_per_s"] = speed
    else:
        precision = resolve_precision(name, device)
        sets = [
            *(["train.compile=true"] if "compile" in flags else []),
            *(["train.channels_last=false"] if "nocl" in flags else []),
        ]
        run = vaezoo_run(images, test_images, args.epochs, args.batch_size, precision.name, device, sets, args.seed)
        model = run.model
        result["precision"] = precision.name
        result["images_per_s"] = sum(m["images_per_s"] for m in run.history) / len(run.history)
        result["test_loss"] = run.history[-1]["test_loss"]
        result["compile_seconds"] = run.history[0].get("compile_seconds")
        model.eval()
        with torch.no_grad(), precision.autocast(device):
            model.sample(args.sample_batch)  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(args.sample_repeats):
                images_out = model.sample(args.sample_batch)
            images_out.sum().item()
        result["sample_images_per_s"] = args.sample_repeats * args.sample_batch / (time.perf_counter() - started)
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        result["peak_memory_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        result["memory_kind"] = "process max RSS"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--configs",
        default=None,
        help=(
            "comma-separated: fp32, bf16, fp16, auto, NAME+compile, NAME+nocl (channels-last off), plain, "
            "notebook (default: all that the device can do)"
        ),
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="interleaved rounds over the configurations; the median round is reported",
    )
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--sample-repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.configs, args)))
        return
    cuda = args.device.startswith("cuda")
    configs = (
        args.configs.split(",")
        if args.configs
        else ["fp32", "fp32+nocl", "bf16", *(["fp16"] if cuda else []), "fp32+compile", "plain", "notebook"]
    )
    passthrough = [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("configs", "child", "json", "repeats") and v is not None
    ]
    rounds: dict[str, list[dict]] = {config: [] for config in configs}
    for _ in range(args.repeats):
        for config in configs:
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, __file__, "--child", f"--configs={config}", *passthrough],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                rounds[config].append(
                    {
                        "config": config,
                        "error": done.stderr.strip().splitlines()[-1]
                        if done.stderr.strip()
                        else f"exit {done.returncode}",
                    }
                )
            else:
                rounds[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"  {config}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    results = []
    for runs in rounds.values():  # the round with the median training speed
        ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["images_per_s"])
        results.append({**ok[len(ok) // 2], "all_images_per_s": [r["images_per_s"] for r in ok]} if ok else runs[0])
    by = {r["config"]: r for r in results if "error" not in r}
    base = by.get("fp32")
    for r in results:
        if "error" in r:
            continue
        if base:
            r["vs_fp32"] = r["images_per_s"] / base["images_per_s"]
            if "test_loss" in r:
                r["test_loss_vs_fp32"] = r["test_loss"] / base["test_loss"] - 1
        if "notebook" in by:
            r["vs_notebook"] = r["images_per_s"] / by["notebook"]["images_per_s"]
        if "plain" in by:
            r["vs_plain"] = r["images_per_s"] / by["plain"]["images_per_s"]
    import torch  # only for the versions line

    summary = {
        "machine": f"{platform.processor() or platform.machine()}, {args.device}, torch {torch.__version__}",
        "images": args.images,
        "epochs": args.epochs,
        "results": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(markdown(summary))


def markdown(summary: dict) -> str:
    lines = [
        f"{summary['machine']}; {summary['images']} CIFAR-10 images x {summary['epochs']} epochs, same seed",
        "",
        "| configuration | train images/s | vs fp32 | vs plain loop | vs notebook | test loss | vs fp32 loss "
        "| compile s | sample images/s | peak memory MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def fmt(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    for r in summary["results"]:
        if "error" in r:
            lines.append(f"| {r['config']} | failed: {r['error']} | | | | | | | | |")
            continue
        loss_change = r.get("test_loss_vs_fp32")
        lines.append(
            f"| {r['config']} | {fmt(r['images_per_s'], '.0f')} | {fmt(r.get('vs_fp32'), '.2f')} | "
            f"{fmt(r.get('vs_plain'), '.2f')} | {fmt(r.get('vs_notebook'), '.2f')} | "
            f"{fmt(r.get('test_loss'), '.1f')} | "
            f"{fmt(loss_change * 100 if loss_change is not None else None, '+.2f')}"
            f"{'%' if loss_change is not None else ''} | "
            f"{fmt(r.get('compile_seconds'), '.1f')} | {fmt(r.get('sample_images_per_s'), '.0f')} | "
            f"{fmt(r.get('peak_memory_mb'), '.0f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
