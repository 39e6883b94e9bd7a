"""Training speed on real CIFAR-10 images, measured in one run: vaezoo's trainer vs a plain PyTorch
loop of the same model over the same in-memory tensor vs the notebook's recipe (a torchvision dataset
that makes a PIL image per item + ToTensor + DataLoader). Prints images/s and ratios.

    python bench/train_speed.py --data-dir ../shared/data/cifar10-images --images 10000 --repeats 3
    python bench/train_speed.py --precision bf16     # vaezoo and the plain loop under bf16 autocast
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import vaezoo
from vaezoo.api import make_dataset
from vaezoo.data import limit_subset, load_split
from vaezoo.recipes.build import build_model
from vaezoo.recipes.resolve import resolve_recipe
from vaezoo.trainer.devices import resolve_device, resolve_precision
from vaezoo.trainer.loop import Run, train


class NotebookVAE(nn.Module):
    """The seed notebook's model, written out by hand."""

    def __init__(self, latent_dim: int = 20) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(128 * 4 * 4, latent_dim)
        self.fc_logvar = nn.Linear(128 * 4 * 4, latent_dim)
        self.fc_dec = nn.Linear(latent_dim, 128 * 4 * 4)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 64, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = self.fc_mu(h), self.fc_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(torch.relu(self.fc_dec(z)).view(-1, 128, 4, 4)), mu, logvar


def notebook_loss(recon, x, mu, logvar):
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timers start and stop on a drained queue)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_vae_network(device) -> nn.Module:
    """vaezoo's cifar-vae network itself (the `vae` family with the `conv` encoder and decoder of
    plugins/vaezoo_defaults/conv), built from the recipe; `vae_objective` trains it by hand."""
    torch.manual_seed(0)
    return build_model(resolve_recipe("cifar-vae"), (3, 32, 32)).to(device)


def vae_objective(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The cifar-vae objective written out by hand over the network's encoder and decoder: BCE (from
    logits, in float32) + KL, summed over pixels, averaged over the batch, as vaezoo trains it."""
    mu, logvar = model.encoder(x)
    z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
    out = model.decoder(z)
    mu, logvar = mu.float(), logvar.float()
    bce = F.binary_cross_entropy_with_logits(out.float(), x, reduction="sum")
    return (bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())) / len(x)


def plain_loop(
    images: torch.Tensor, epochs: int, batch_size: int, precision, device, network: str = "notebook"
) -> float:
    """Images/s of a hand-written loop over the same uint8 tensor, converted per batch. `network`:
    "notebook" (NotebookVAE and the notebook's loss) or "vaezoo" (`cifar_vae_network`, `vae_objective`)."""
    torch.manual_seed(0)
    if network == "notebook":
        model = NotebookVAE().to(device)

        def objective(x: torch.Tensor) -> torch.Tensor:
            with precision.autocast(device):
                recon, mu, logvar = model(x)
            return notebook_loss(recon.float(), x, mu.float(), logvar.float())
    else:
        model = cifar_vae_network(device)

        def objective(x: torch.Tensor) -> torch.Tensor:
            with precision.autocast(device):
                return vae_objective(model, x)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = images.to(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), device=device)
        for i in range(0, len(images), batch_size):
            loss = objective(images[order[i : i + batch_size]].float().div_(255))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    loss.item()
    return epochs * len(images) / (time.perf_counter() - start)


def graphed_loop(images: torch.Tensor, epochs: int, batch_size: int, precision, device, warmup_steps: int = 3) -> float:
    """Images/s of the plain loop of `cifar_vae_network` with the WHOLE step (forward, backward,
    Adam(capturable=True)) captured as one CUDA graph and replayed, as PyTorch's CUDA graphs notes show
    it for a whole network: warm-up steps on a side stream, zero_grad(set_to_none=True), capture under
    torch.cuda.graph, then per batch `static_input.copy_(batch)` and `graph.replay()`. Autocast runs
    inside the capture without its weight cache. Full batches only (the graph has one shape)."""
    if device.type != "cuda":
        raise RuntimeError(f"needs CUDA (torch.cuda.CUDAGraph), not {device.type}")
    model = cifar_vae_network(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    images = images.to(device)
    static_input = images[:batch_size].clone()  # uint8: becomes float inside the graph
    loss_sum = torch.zeros((), device=device)

    def step() -> None:
        x = static_input.float().div_(255)
        with torch.autocast("cuda", dtype=precision.dtype, enabled=precision.dtype is not None, cache_enabled=False):
            loss = vae_objective(model, x)
        loss.backward()
        optimizer.step()
        loss_sum.add_(loss.detach())

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup_steps):
            optimizer.zero_grad(set_to_none=True)
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    optimizer.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        step()
    batches = len(images) // batch_size
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), device=device)
        for i in range(batches):
            static_input.copy_(images.index_select(0, order[i * batch_size : (i + 1) * batch_size]))
            graph.replay()
    loss_sum.item()
    return epochs * batches * batch_size / (time.perf_counter() - start)


class NotebookDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: a PIL image from a uint8 array, then ToTensor."""

    def __init__(self, images: torch.Tensor) -> None:
        from torchvision import transforms

        self.arrays = images.permute(0, 2, 3, 1).numpy()
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.arrays[index])), 0


def notebook_recipe(images: torch.Tensor, epochs: int, batch_size: int, device) -> float:
    """Images/s of the notebook: Dataset + ToTensor + DataLoader(shuffle=True), fp32."""
    return notebook_loop(NotebookDataset(images), epochs, batch_size, device)


def notebook_loop(dataset, epochs: int, batch_size: int, device) -> float:
    """Images/s of the notebook's loop over a torchvision-style `dataset` of (image tensor, label)
    items: DataLoader(shuffle=True), NotebookVAE, the notebook's loss, fp32."""
    torch.manual_seed(0)
    model = NotebookVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            x = x.to(device)
            recon, mu, logvar = model(x)
            loss = notebook_loss(recon, x, mu, logvar)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    loss.item()
    return epochs * len(dataset) / (time.perf_counter() - start)


def vaezoo_run(
    images, test_images, epochs: int, batch_size: int, precision_name: str, device, sets=(), seed: int = 0
) -> Run:
    """vaezoo's own trainer on the cifar-vae recipe; the returned run's history has images/s (train
    time only, as metrics.jsonl reports it) and the test loss of each epoch."""
    options = {
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.precision": precision_name,
        "train.sample_count": 8,
        "train.seed": seed,
    }
    recipe = resolve_recipe("cifar-vae", list(sets), options)
    torch.manual_seed(seed)
    model = build_model(recipe, images.shape[1:]).to(device)
    with tempfile.TemporaryDirectory() as out:
        run = Run(
            model,
            recipe,
            images.to(device),
            test_images.to(device),
            Path(out),
            device,
            resolve_precision(precision_name, device),
        )
        train(run)
    return run


def vaezoo_trainer(images, test_images, epochs: int, batch_size: int, precision_name: str, device, sets=()) -> float:
    """Images/s of vaezoo's trainer, averaged over epochs."""
    history = vaezoo_run(images, test_images, epochs, batch_size, precision_name, device, sets).history
    return statistics.fmean(m["images_per_s"] for m in history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--images", type=int, default=10000, help="training images per epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the median is reported")
    parser.add_argument(
        "--precision", default="fp32", help="precision of vaezoo and the plain loop (the notebook stays fp32)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-notebook", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    recipe = resolve_recipe("cifar-vae")
    dataset = make_dataset(recipe, args.data_dir)
    images, _ = limit_subset(*load_split(dataset, "train"), args.images)
    test_images, _ = limit_subset(*load_split(dataset, "test"), 500)
    runs: dict[str, list[float]] = {"vaezoo": [], "plain": [], "notebook": []}
    warm_up = images[: 4 * args.batch_size]  # first calls allocate and pick kernels: not timed
    vaezoo_trainer(warm_up, test_images[:64], 1, args.batch_size, precision.name, device)
    plain_loop(warm_up, 1, args.batch_size, precision, device)
    for _ in range(args.repeats):
        runs["vaezoo"].append(vaezoo_trainer(images, test_images, args.epochs, args.batch_size, precision.name, device))
        runs["plain"].append(plain_loop(images, args.epochs, args.batch_size, precision, device))
        if not args.skip_notebook:
            runs["notebook"].append(notebook_recipe(images, args.epochs, args.batch_size, device))
    median = {k: statistics.median(v) for k, v in runs.items() if v}
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "torch": torch.__version__,
        "vaezoo": vaezoo.__version__,
        "precision": precision.name,
        "images": len(images),
        "images_per_s": median,
        "all_runs": runs,
        "vaezoo_vs_plain": median["vaezoo"] / median["plain"],
    }
    if "notebook" in median:
        result["vaezoo_vs_notebook"] = median["vaezoo"] / median["notebook"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['machine']}, torch {result['torch']}, {precision.name}, {len(images)} images x "
        f"{args.epochs} epoch(s), median of {args.repeats}"
    )
    for name, value in median.items():
        print(f"  {name:9s} {value:8.0f} images/s")
    print(f"  vaezoo / plain loop : {result['vaezoo_vs_plain']:.3f}")
    if "vaezoo_vs_notebook" in result:
        print(f"  vaezoo / notebook   : {result['vaezoo_vs_notebook']:.3f}")


if __name__ == "__main__":
    main()
