"""How much a model's samples differ from each other, against the same measure on test images: the
root-mean-square pixel difference over all pairs of 64 samples (drawn after torch.manual_seed(1)) and over
all pairs of 64 test images (pixels in [0, 1]). A collapsed generator (one picture for every latent)
scores near 0; test images score about 0.37 on CIFAR-10.

    python bench/sample_diversity.py runs/X/model.safetensors [more model files] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json

import torch

import vaezoo
from vaezoo.api import load_split_images

COUNT = 64


def pairwise_rms(images: torch.Tensor) -> float:
    """sqrt(mean over pairs of the mean squared pixel difference) of images (N, C, H, W) in [0, 1]."""
    flat = images.flatten(1).double()
    return (torch.pdist(flat).pow(2).mean() / flat.shape[1]).sqrt().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    rows = {}
    for path in args.models:
        model = vaezoo.load(path).eval()
        torch.manual_seed(1)
        with torch.no_grad():
            samples = model.sample(COUNT)
        test, _ = load_split_images(model, "test", args.data_dir, COUNT)
        rows[path] = {"samples": pairwise_rms(samples), "test_images": pairwise_rms(test.float() / 255)}
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
