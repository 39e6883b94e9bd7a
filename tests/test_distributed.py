"""Distributed data-parallel training: 2 CPU processes (gloo) under torchrun against one process with
the same global batch, on a tiny conv model and a few hundred real CIFAR-10 images."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from familyrun import Family, on_two_ranks, ranks_match_one_process

from vaezoo.errors import VaezooError
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


# A family that breaks on one rank only: it raises in its first training step there.
FAULTY_PLUGIN = """
import os
import torch
from torch import nn
import vaezoo

VAEZOO_PLUGIN_API = ">=1,<2"


class Faulty(vaezoo.Model):
    def __init__(self, *, in_shape, num_classes=0):
        super().__init__()
        self.shape = tuple(in_shape)
        self.level = nn.Parameter(torch.zeros(1))

    def forward(self, x, y=None, step=None):
        if step is not None and os.environ.get("RANK") == "1":
            raise ValueError("the faulty family broke on this rank")
        loss = (x.flatten(1) - self.level.sigmoid()).pow(2).sum(1)
        return vaezoo.LossParts(loss, loss, torch.zeros_like(loss))

    def sample(self, n, y=None, temperature=1.0):
        return self.level.sigmoid().expand(n, *self.shape).clone()

    def reconstruct(self, x, y=None):
        return self.level.sigmoid().expand_as(x).clone()


@vaezoo.hookimpl
def register_models(register):
    register("faulty", Faulty)
"""


def test_one_faulty_rank_is_one_line_naming_it(cifar: Path, tmp_path: Path) -> None:
    """A plugin raising on rank 1 only is one line naming rank 1 and its error (exit
    1): not rank 0's "Connection reset by peer", not torchrun's report; no worker is left behind."""
    root = tmp_path / "plugin"
    info = root / "faulty_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (root / "faulty_plugin.py").write_text(FAULTY_PLUGIN)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vaezoo]\nfaulty = faulty_plugin\n")
    recipe = tmp_path / "faulty.toml"
    recipe.write_text('name = "faulty"\ndataset = { name = "cifar10" }\nmodel = { name = "faulty" }\n')
    out = tmp_path / "run"
    options = ["--epochs", "1", "--limit", "32", "--set", "train.test_limit=16", "--set", "train.batch_size=16"]
    result = run_cli(
        "run",
        str(recipe),
        "--nproc",
        "2",
        *options,
        "--set",
        "train.sample_count=4",
        "--device",
        "cpu",
        "--data-dir",
        str(cifar),
        "--out",
        str(out),
        env={"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])},
        timeout=300,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("vaezoo:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("vaezoo: error: rank 1: model 'faulty'") and "the faulty family broke" in errors[0]
    assert (
        "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr and "by peer" not in result.stderr
    )
    assert len(result.stderr.splitlines()) < 16, result.stderr  # the start-up lines and bar, no torchrun report
    workers = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert workers == [], workers


class _Failure:
    """torchrun's ProcessFailure, as far as `failure_line` reads it."""

    def __init__(self, exitcode: int, pid: int = 4242) -> None:
        self.exitcode, self.pid = exitcode, pid

    def signal_name(self) -> str:
        return signal.Signals(-self.exitcode).name


def test_the_launcher_names_a_killed_or_hung_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `run --nproc` prints when a worker is killed (rank 0 only saw its peer go
    away) or hangs (rank 0 gave up after VAEZOO_COLLECTIVE_TIMEOUT), from the ranks' reports."""
    peer = {"rank": 0, "code": 1, "peer": True, "timeout": False, "line": "vaezoo: error: ... Connection reset by peer"}
    (tmp_path / "rank-0.json").write_text(json.dumps(peer))
    code, line = distributed.failure_line({0: _Failure(1), 1: _Failure(-signal.SIGKILL)}, tmp_path)
    assert (
        code == 1 and line.startswith("vaezoo: error: rank 1 (pid 4242) was killed by SIGKILL") and "--resume" in line
    )
    monkeypatch.setenv("VAEZOO_COLLECTIVE_TIMEOUT", "5")
    (tmp_path / "rank-0.json").write_text(json.dumps({**peer, "timeout": True, "line": "vaezoo: error: timed out"}))
    code, line = distributed.failure_line({0: _Failure(1), 1: _Failure(-signal.SIGKILL)}, tmp_path)
    assert "rank 1 did not answer within VAEZOO_COLLECTIVE_TIMEOUT=5 s" in line
    monkeypatch.setenv("VAEZOO_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(VaezooError, match="VAEZOO_COLLECTIVE_TIMEOUT='soon'"):
        distributed.collective_timeout()
