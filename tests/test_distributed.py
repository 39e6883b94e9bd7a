"""Distributed data-parallel training: 2 CPU processes (gloo) under torchrun against one process with
the same global batch, on a tiny conv model and a few hundred real CIFAR-10 images."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_cli
from familyrun import Family, on_two_ranks, ranks_match_one_process

from vaezoo.trainer import distributed

pytestmark = pytest.mark.slow  # `pytest -m "not slow"` skips it in the inner loop; .ci/run runs everything

TINY_SETS = [
    "encoder.hidden=[8,16]",
    "decoder.hidden=[16,8]",
    "latent_dim=8",
    "train.test_limit=100",
    "train.sample_count=4",
]
TINY = [
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--limit",
    "250",
    "--device",
    "cpu",
    "--seed",
    "3",
    *(a for s in TINY_SETS for a in ("--set", s)),
]
# Plain SGD for the comparison: Adam's first steps are about lr * sign(gradient), so a parameter whose
# gradient is ~0 (a dead ReLU's) moves by +-lr on float noise alone, and one run ends 1e-3 from the other.
SGD = ["--set", 'train.optimizer="sgd"', "--lr", "1e-5"]

# Each rank draws the reparameterisation noise from its own generator, so a 2-process run cannot draw
# the same numbers as one process (nor should it: that would correlate the ranks). To compare the
# arithmetic, this patch switches the noise off (z = mu) in every process of the comparison.
PATCH = """
import torch
torch.randn_like = lambda t, **kw: torch.zeros_like(t, **kw)
"""


def test_ddp_matches_single_process_and_nproc_writes_one_set_of_files(cifar: Path, tmp_path: Path) -> None:
    """`vaezoo run --nproc 2` starts torchrun, whose two ranks with 32 images each per step end within
    1e-4 of one process with 64 per step (SGD), and rank 0 alone writes the run's files and prints.
    Not bit-identical: each rank sums its own shard and gloo then adds the two gradients, a different
    order of float additions than one batched sum (about 1e-7 relative per step). Plain SGD keeps them
    that small; Adam would turn the noise on near-zero gradients into whole steps of size lr."""
    _, two, _, _ = ranks_match_one_process(
        Family("cifar-vae", TINY_SETS), cifar, tmp_path, [*TINY, *SGD], PATCH, TINY_SETS, seed=3
    )
    assert all(t.dtype == torch.float32 for t in two.values())


def test_nproc_rejects_a_batch_that_does_not_split() -> None:
    result = run_cli("run", "cifar-vae", "--batch-size", "64", "--nproc", "3")
    assert result.returncode == 2
    assert "divisible by the 3 processes" in result.stderr and "Traceback" not in result.stderr


def test_shards_cover_every_global_batch_once() -> None:
    order = torch.randperm(250)
    shards = [distributed.shard_order(order, 64, distributed.World(rank, 2, rank)) for rank in range(2)]
    for first, per_rank in zip(range(0, 250, 64), range(0, 125, 32)):
        batch = torch.cat([s[per_rank : per_rank + 32] for s in shards])
        assert torch.equal(batch, order[first : first + 64])
    # a last global batch smaller than the number of ranks is dropped, so that no rank gets nothing
    assert distributed.images_per_epoch(129, 64, distributed.World(0, 2, 0)) == 128
    assert distributed.images_per_epoch(129, 64, distributed.World()) == 129
    assert distributed.batch_loss(torch.ones(32), 64, distributed.World(0, 2, 0)).item() == 1.0  # the shard mean


def test_torchrun_command_drops_nproc() -> None:
    args = distributed.strip_option(["run", "x", "--nproc", "2", "--epochs", "1", "--nproc=4"], "--nproc")
    assert args == ["run", "x", "--epochs", "1"]
    command = distributed.torchrun_command(2, args)
    assert command[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    assert command[-5:] == ["vaezoo", "run", "x", "--epochs", "1"]


CODEBOOK_RUNNER = """
import os, torch, torch.distributed as dist
from vaezoo_defaults.vqvae.codebook import EMACodebook


def fresh():
    torch.manual_seed(1)
    book = EMACodebook(codes=8, dim=4, restart_after=1000)
    book.unused.zero_()  # no restarts: they draw random rows, which differ by rank
    return book

def step(book, rows):
    book.update(rows, book.nearest(rows))
    return book

torch.manual_seed(0)
batch = torch.randn(64, 4) + torch.arange(64).unsqueeze(1) / 16  # the halves differ
rank = int(os.environ["RANK"])
whole, own_half = step(fresh(), batch), step(fresh(), batch.chunk(2)[rank])  # before the group exists
dist.init_process_group("gloo")
joint = step(fresh(), batch.chunk(2)[rank])
same = torch.allclose(joint.embedding, whole.embedding, atol=1e-6)
same = same and torch.allclose(joint.cluster_size, whole.cluster_size)
print((
    f"rank {rank} same_as_whole_batch={same} "
    f"own_half_differs={not torch.allclose(own_half.embedding, whole.embedding, atol=1e-3)}"
))
dist.destroy_process_group()
"""


def test_vqvae_codebook_learns_from_the_global_batch(tmp_path: Path) -> None:
    """Two ranks each holding half a batch update the codebook exactly as one process with all of it:
    the moving-average counts and sums are summed over ranks (DDP alone would keep rank 0's half)."""
    stdout = on_two_ranks(tmp_path, CODEBOOK_RUNNER)
    for rank in (0, 1):
        assert f"rank {rank} same_as_whole_batch=True own_half_differs=True" in stdout, stdout
