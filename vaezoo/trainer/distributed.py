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
variables (or with WORLD_SIZE=1) every function is a no-op and vaezoo runs as a single process."""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.distributed as dist

from vaezoo.errors import RecipeError, VaezooError


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


def current_world() -> World:
    """The world as torchrun describes it in the environment (a single process without it)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    try:
        return World(
            int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))
        )
    except ValueError:
        raise VaezooError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)") from None


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
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
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


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


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
