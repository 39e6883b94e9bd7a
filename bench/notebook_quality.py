"""The notebook's recipe trained for its 15 epochs on the same CIFAR-10 copy, to compare test loss with
`vaezoo run cifar-vae`: prints and writes (JSON lines) train and test loss per image after each epoch.

    python bench/notebook_quality.py --data-dir ../shared/data/cifar10-images --out notebook.jsonl
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from train_speed import NotebookDataset, NotebookVAE, notebook_loss

from vaezoo.api import make_dataset
from vaezoo.data import load_split
from vaezoo.recipes.resolve import resolve_recipe


@torch.no_grad()
def test_loss(model: NotebookVAE, loader) -> float:
    model.eval()
    total, count = 0.0, 0
    for x, _ in loader:
        recon, mu, logvar = model(x)
        total += notebook_loss(recon, x, mu, logvar).item()
        count += len(x)
    model.train()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="JSON lines file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dataset = make_dataset(resolve_recipe("cifar-vae"), args.data_dir)
    train_images, _ = load_split(dataset, "train")
    test_images, _ = load_split(dataset, "test")
    train_loader = torch.utils.data.DataLoader(NotebookDataset(train_images), batch_size=128, shuffle=True)
    test_loader = torch.utils.data.DataLoader(NotebookDataset(test_images), batch_size=500)
    model = NotebookVAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        total = 0.0
        for x, _ in train_loader:
            recon, mu, logvar = model(x)
            loss = notebook_loss(recon, x, mu, logvar)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        seconds = time.perf_counter() - started
        line = {
            "epoch": epoch,
            "train_loss": total / len(train_images),
            "test_loss": test_loss(model, test_loader),
            "seconds": seconds,
            "images_per_s": len(train_images) / seconds,
        }
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as handle:
                handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
