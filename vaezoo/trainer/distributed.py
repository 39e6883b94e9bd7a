"""Distributed data-parallel training on torch.distributed, started by torchrun.

`torchrun --nproc-per-node N -m vaezoo run RECIPE` (or `vaezoo run RECIPE --nproc N`) starts N
processes with RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in their environment. Each process:

- joins the process group (backend nccl on CUDA, gloo otherwise) on device cuda:LOCAL_RANK on GPU
  machines, the CPU elsewhere;
- draws the same permutation of the training images as every other rank (the data generator is seeded
  by train.seed) and takes its own shard of every global batch (train.batch_size images);
- trains the model wrapped in DistributedDataParallel, whose gradient averaging over ranks equals the
  single-process gradient of the global batch mean (see `batch_loss`);
- evaluates its shard of the test split; train and test metrics are summed over ranks;
- writes nothing unless it is rank 0.

Nothing here is home-made communication: every collective is torch.distributed's. Without torchrun's
variables (or with WORLD_SIZE=1) every function is a no-op and vaezoo runs as a single process.

`vaezoo run --nproc N` runs torchrun's agent through `launch`, which turns a failed world into one line:
each worker writes its error line into a folder the agent gives it (`RANK_ERRORS`) instead of
printing it, and the agent names the rank whose failure was its own (not a peer's that went away) or the
rank that died without a word (killed by a signal). A collective waits at most
VAEZOO_COLLECTIVE_TIMEOUT seconds (default 600) for the other ranks."""

from __future__ import annotations

import atexit
import datetime
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from vaezoo.errors import RecipeError, VaezooError, first_line, printable


@dataclass(frozen=True)
class World:
    """This process's place in the world: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_created_group = False  # whether vaezoo created the process group (and so destroys it)
RANK_ERRORS = "VAEZOO_RANK_ERRORS"  # set by `launch`: the folder where each worker writes its error line
DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0


def collective_timeout() -> datetime.timedelta:
    """How long a collective waits for the other ranks: VAEZOO_COLLECTIVE_TIMEOUT seconds (default 600),
    a finite number above 0."""
    text = os.environ.get("VAEZOO_COLLECTIVE_TIMEOUT") or None
    try:
        seconds = float(text) if text is not None else DEFAULT_COLLECTIVE_TIMEOUT_S
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= 10**7):
        raise VaezooError(
            f"VAEZOO_COLLECTIVE_TIMEOUT={text!r} is not a number of seconds above 0 "
            f"(default {DEFAULT_COLLECTIVE_TIMEOUT_S:g})"
        )
    return datetime.timedelta(seconds=seconds)


def current_world() -> World:
    """The world as torchrun describes it in the environment (a single process without it)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    try:
        return World(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError as error:
        raise VaezooError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from error


def is_main() -> bool:
    """True on rank 0, and in a single process: the one that writes files and prints progress."""
    return current_world().is_main


def setup(device_name: str = "auto") -> tuple[World, torch.device | None]:
    """Join the process group if torchrun started this process; returns the world and the device
    this rank must use (None when not distributed: the caller resolves `device_name` as usual)."""
    global _created_group
    world = current_world()
    if not world.enabled:
        return world, None
    if not dist.is_available():
        raise VaezooError("this torch build has no torch.distributed: run without torchrun")
    name = (device_name or "auto").lower()
    use_cuda = torch.cuda.is_available() and (name == "auto" or name.startswith("cuda"))
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaezooError(
            f"--device {device_name} asked for but CUDA is not available on this machine: use --device cpu"
        )
    if name not in ("auto", "cpu") and not name.startswith("cuda"):
        raise VaezooError(f"distributed training runs on cpu or cuda, not {device_name!r}")
    if use_cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise VaezooError(
                f"LOCAL_RANK {world.local_rank} but this machine has {torch.cuda.device_count()} GPU(s): use "
                f"--nproc-per-node {torch.cuda.device_count()}"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=collective_timeout())
        _created_group = True
        atexit.register(teardown)
    return current_world(), device


def teardown() -> None:
    """Leave the process group vaezoo created (a group the caller made is left alone)."""
    global _created_group
    if _created_group and dist.is_initialized():
        dist.destroy_process_group()
    _created_group = False


def exit_worker(code: int) -> NoReturn:
    """End a process that joined a world vaezoo set up: leave the group, flush, and exit without the
    interpreter's finalization. DistributedDataParallel's reducer keeps the gloo backend (and its
    worker threads) alive past destroy_process_group; a worker thread that frees the last reference to
    a finished collective's tensors during finalization needs the GIL that is going away and aborts the
    process (SIGABRT, about 1 run in 12 on a loaded 2-core machine). Every file is written by then."""
    teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def lost_a_peer(error: BaseException | None) -> bool:
    """Whether `error` (or an error it came from) is a collective that failed: another rank went away,
    or did not answer within the collective timeout."""
    while error is not None:
        text = str(error)
        if isinstance(error, dist.DistError) or any(mark in text for mark in ("/gloo/", "NCCL", "by peer")):
            return True
        error = error.__cause__ or error.__context__
    return False


def report_to_launcher(line: str, code: int, error: BaseException | None) -> bool:
    """In a worker of `launch`: write this rank's error `line` (with its exit code and whether it is a
    peer's failure seen from here) for the launcher to choose from, and return True; elsewhere False
    (the caller prints the line)."""
    folder = os.environ.get(RANK_ERRORS)
    if not folder or not os.path.isdir(folder):
        return False
    rank = current_world().rank
    peer = lost_a_peer(error)
    report = {"rank": rank, "code": code, "line": line, "peer": peer, "timeout": peer and "timed out" in line.lower()}
    try:
        Path(folder, f"rank-{rank}.json").write_text(json.dumps(report))
    except OSError:
        return False
    return True


def launch(torchrun_args: Sequence[str]) -> int:
    """Run torchrun's agent with `torchrun_args` in this process and return the exit code; a failed
    world is one line on stderr naming the rank that caused it (`failure_line`), without torchrun's
    report and logs."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # its warnings about stopping the others
    folder = Path(tempfile.mkdtemp(prefix="vaezoo-ranks-"))
    os.environ[RANK_ERRORS] = str(folder)
    try:
        torchrun.run(torchrun.parse_args(list(torchrun_args)))
        return 0
    except ChildFailedError as error:
        code, line = failure_line(error.failures, folder)
    except (SignalException, KeyboardInterrupt):  # the workers were stopped by the signal and saved their state
        code, line = (
            130,
            next(
                (r["line"] for r in sorted(_reports(folder).values(), key=lambda r: r["rank"]) if r["code"] == 130),
                "vaezoo: interrupted",
            ),
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(printable(first_line(line, limit=None)), file=sys.stderr, flush=True)  # a worker's text
    return code


def failure_line(failures: Mapping[int, Any], folder: Path) -> tuple[int, str]:
    """The exit code and the one line for a world whose ranks in `failures` (torchrun's ProcessFailure
    by global rank) failed, from the reports of `report_to_launcher` in `folder`: a rank's own error
    first, then a rank killed by a signal, then what a rank saw of its peers."""
    reports = _reports(folder)
    own = [r for rank, r in sorted(reports.items()) if not r["peer"] and r["code"] != 130]
    if own:
        return int(own[0]["code"]), _with_rank(own[0]["line"], own[0]["rank"])
    silent = [rank for rank in sorted(failures) if rank not in reports or reports[rank]["code"] == 130]
    waited = [r["rank"] for r in reports.values() if r.get("timeout")]
    if waited and silent:
        seconds = os.environ.get("VAEZOO_COLLECTIVE_TIMEOUT") or f"{DEFAULT_COLLECTIVE_TIMEOUT_S:g}"
        return 1, (
            f"vaezoo: error: rank {silent[0]} did not answer within VAEZOO_COLLECTIVE_TIMEOUT={seconds} s (it "
            f"hung?): rank {min(waited)} gave up waiting and the run stopped (the run folder keeps its last saved "
            "state: --resume it)"
        )
    for rank, failure in sorted(failures.items()):
        if rank not in reports and failure.exitcode < 0:
            return 1, (
                f"vaezoo: error: rank {rank} (pid {failure.pid}) was killed by {failure.signal_name()}; the other "
                "ranks stopped (the run folder keeps its last saved state: --resume it)"
            )
    for rank, failure in sorted(failures.items()):
        if rank not in reports:
            return 1, f"vaezoo: error: rank {rank} (pid {failure.pid}) ended with exit code {failure.exitcode}"
    if reports:
        first = min(reports.values(), key=lambda r: (r["code"] == 130, r["rank"]))
        return int(first["code"]), _with_rank(first["line"], first["rank"])
    return 1, "vaezoo: error: the distributed run failed"


def _reports(folder: Path) -> dict[int, dict[str, Any]]:
    """The reports `report_to_launcher` wrote into `folder`, by rank."""
    reports = {}
    for path in folder.glob("rank-*.json"):
        try:
            report = json.loads(path.read_text())
            reports[int(report["rank"])] = report
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return reports


def _with_rank(line: str, rank: int) -> str:
    """`vaezoo: error: rank N: ...` for a worker's `vaezoo: error: ...` line."""
    head, _, rest = line.partition(": error: ")
    return f"{head}: error: rank {rank}: {rest}" if rest else f"{line} (rank {rank})"


def created_group() -> bool:
    """Whether this process joined a world through `setup` (and so ends through `exit_worker`)."""
    return _created_group


def check_batch_size(batch_size: int, world: World | None = None) -> int:
    """The per-rank batch size: the global train.batch_size split evenly over the ranks."""
    world = world or current_world()
    if batch_size % world.world_size:
        raise RecipeError(
            f"train.batch_size {batch_size} is the global batch and must be divisible by the "
            f"{world.world_size} processes: use --batch-size "
            f"{max(world.world_size, batch_size // world.world_size * world.world_size)}"
        )
    return batch_size // world.world_size


def shard(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's part of one global batch of indices (near-equal contiguous parts)."""
    if not world.enabled:
        return indices
    return torch.tensor_split(indices, world.world_size)[world.rank]


def batch_loss(per_image: torch.Tensor, global_batch: int, world: World) -> torch.Tensor:
    """The scalar to backpropagate for a rank's per-image losses: their mean in a single process.
    DDP averages gradients over ranks, so each rank's sum is scaled by world_size / global_batch,
    which gives exactly the gradient of the global batch mean (`global_batch`: images in this step
    over all ranks; the last batch of an epoch may be smaller)."""
    if not world.enabled:
        return per_image.mean()
    return per_image.sum() * (world.world_size / global_batch)


def wrap(model: torch.nn.Module, device: torch.device, world: World) -> torch.nn.Module:
    """The model in DistributedDataParallel (the model itself when not distributed)."""
    if not world.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def average_gradients(params: list[torch.Tensor]) -> None:
    """Average the gradients of `params` over ranks, in one all-reduce, as DDP does for the one-loss
    step (a family's own training_step updates outside DDP). Parameters without a gradient (unused
    by this update) are left out; every rank runs the same step, so they are the same on all ranks."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place (nothing when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank (all ranks must call it at the same point)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def reduce_means(metrics: Mapping[str, float], count: int, device: torch.device) -> dict[str, float]:
    """Means over each rank's `count` items -> means over all items of all ranks."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return dict(metrics)
    keys = sorted(metrics)
    sums = torch.tensor([count, *(metrics[k] * count for k in keys)], dtype=torch.float64, device=device)
    all_reduce_sum(sums)
    total = max(1.0, sums[0].item())
    return {k: v / total for k, v in zip(keys, sums[1:].tolist())}


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. the output folder, whose default name holds the time)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def launch_command(torchrun: Sequence[str]) -> list[str]:
    """The command that runs the `torchrun_command` `torchrun` through `launch` (one line for a failure)."""
    code = "import sys; from vaezoo.trainer.distributed import launch; sys.exit(launch(sys.argv[1:]))"
    return [sys.executable, "-c", code, *torchrun[3:]]


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The command that runs `vaezoo ARGS` in `nproc` processes on this machine through torchrun."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        "-m",
        "vaezoo",
        *args,
    ]


def strip_option(args: Sequence[str], option: str) -> list[str]:
    """`args` without `--option VALUE` / `--option=VALUE`."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def images_per_epoch(n_train: int, batch_size: int, world: World) -> int:
    """Training images used per epoch: all of them, except that a last global batch smaller than the
    number of ranks is dropped (every rank needs a non-empty shard, or the ranks fall out of step)."""
    rest = n_train % batch_size
    return n_train - rest if world.enabled and 0 < rest < world.world_size else n_train


def shard_order(order: torch.Tensor, batch_size: int, world: World) -> torch.Tensor:
    """This rank's indices for the epoch: its shard of every global batch of `order`, one after the
    other, so that batches of batch_size / world_size of the result are the shards in turn."""
    if not world.enabled:
        return order
    order = order[: images_per_epoch(len(order), batch_size, world)]
    return torch.cat([shard(order[first : first + batch_size], world) for first in range(0, len(order), batch_size)])


def shard_split(images: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous part of an evaluation split."""
    return shard(images, world)
