"""Training speed of every model family on this machine, in one run: images/s of vaezoo's trainer on the
family's CIFAR-10 recipe (GPU-sized recipes at their CPU-sized `--set` variant, as docs/recipes.md
gives it), with the plain `cifar-vae` recipe in the same run as the yardstick, so the ratios hold even
when the machine is shared. One epoch over the images after a warm-up epoch, median of the repeats.

    python bench/families.py --data-dir ../shared/data/cifar10-images [--images 2048] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from vaezoo.api import make_run
from vaezoo.recipes.resolve import resolve_recipe
from vaezoo.trainer.devices import resolve_device
from vaezoo.trainer.loop import train

# recipe -> --set items that size it for a CPU (the recipes' own text in docs/recipes.md)
FAMILIES = {
    "cifar-vae": [],
    "cifar-iwae": [],
    "cifar-cvae": [],
    "cifar-vqvae": [],
    "cifar-hvae": ["model.width=64", "model.blocks=1", "train.batch_size=32"],
    "cifar-resnet-dlogistic": [],
}


def images_per_s(name: str, sets: list[str], images: int, precision: str, device, data_dir) -> tuple[float, str]:
    """Images per second of one epoch of the recipe over `images` training images, and the precision it ran."""
    recipe = resolve_recipe(
        name,
        [*sets, "train.epochs=1", "train.sample_count=8", f'train.precision="{precision}"'],
        {"train.limit": images, "train.test_limit": 64},
    )
    with tempfile.TemporaryDirectory() as out:
        run = make_run(recipe, device, out_dir=Path(out), data_dir=data_dir)
        train(run)
    return run.history[-1]["images_per_s"], run.precision.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", nargs="*", default=None, help="recipes to measure (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = resolve_device(args.device)
    names = args.only or list(FAMILIES)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    precisions: set[str] = set()
    for name in names:  # warm-up: kernels picked, memory allocated
        images_per_s(name, FAMILIES[name], 256, args.precision, device, args.data_dir)
    for _ in range(args.repeats):  # interleaved, so that a busy moment hits every family alike
        for name in names:
            speed, precision = images_per_s(name, FAMILIES[name], args.images, args.precision, device, args.data_dir)
            speeds[name].append(speed)
            precisions.add(precision)
    median = {name: statistics.median(values) for name, values in speeds.items()}
    result = {
        "device": str(device),
        "precision": ", ".join(sorted(precisions)),  # as the runs resolved it (auto: measured per family)
        "threads": torch.get_num_threads(),  # the runs' train.threads
        "images": args.images,
        "images_per_s": median,
        "all": speeds,
    }
    if "cifar-vae" in median:
        result["vs_cifar_vae"] = {name: value / median["cifar-vae"] for name, value in median.items()}
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return
    print(
        f"{device}, {result['precision']}, {result['threads']} threads, {args.images} images, median of {args.repeats}"
    )
    for name, value in median.items():
        ratio = f"  ({value / median['cifar-vae']:.2f}x cifar-vae)" if "cifar-vae" in median else ""
        print(f"  {name:24s} {value:8.0f} images/s{ratio}")


if __name__ == "__main__":
    main()
