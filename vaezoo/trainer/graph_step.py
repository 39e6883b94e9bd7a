"""The training step captured as one CUDA graph: the batch gathered by index, forward, backward, clipping and
the optimizer's update, replayed with a single launch. A small VAE on a fast GPU is bound by kernel launches,
not arithmetic; replaying a graph removes the launches (and the Python) from the step.

Captured: the default one-loss step of a model family that declares `cuda_graph = True` (its training forward
never reads a value back to the host and depends on `step` only through its loss's KL weight), on CUDA, in
one process, without the fp16 gradient scaler or train.compile (`graph_blocker` names
what keeps a run eager, and the run's output says it). A KL warm-up runs eagerly until its weight stops
changing, and the last, smaller batch of an epoch runs eagerly too; the rest replays the graph. The
reparameterisation noise comes from the CUDA generator, which graph replays advance like eager steps; Adam
runs with `capturable=True` (its step count on the device), or fused when train.skip_grad_norm decides on
the device whether to skip an update; autocast runs without its weight cache.

Before the capture, a few warm-up steps run on a side stream (lazy optimizer state, library workspaces); the
weights, buffers, optimizer state and random generators are then put back as they were, so that a captured
run takes the same steps as an eager one."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vaezoo.components import LossParts
from vaezoo.errors import RunFailed, printable

if TYPE_CHECKING:
    from vaezoo.trainer.devices import Precision
    from vaezoo.trainer.distributed import World
    from vaezoo.trainer.loop import Run

WARMUP_STEPS = 3


def graph_blocker(run: Run, world: World, own_step: bool, precision: Precision | None = None) -> str | None:
    """Why this run's step cannot be captured as a CUDA graph (at `precision`, the run's by default), or
    None when it can."""
    settings, family = run.recipe["train"], run.recipe["model"]["name"]
    if run.device.type != "cuda":
        return f"the device is {run.device.type}, not CUDA"
    if not settings["cuda_graph"]:
        return "train.cuda_graph is false"
    if not run.model.cuda_graph:
        return f"model family {family!r} does not declare cuda_graph = True"
    if own_step:
        return f"model family {family!r} has its own training_step"
    if world.enabled:
        return "training runs under torchrun (DistributedDataParallel)"
    if (precision or run.precision).scale_grads:
        return "fp16 steps through the gradient scaler"
    if settings["compile"]:
        return "train.compile is on (torch.compile runs the step)"
    if settings["skip_grad_norm"] > 0 and settings["optimizer"] == "sgd":
        return "train.skip_grad_norm with sgd reads the gradient norm on the host (adam skips on the device)"
    return None


class _Snapshot:
    """Weights, buffers, optimizer state and random generators, to put back in place after the warm-up
    (optimizer state that did not exist yet is zeroed: Adam's moments and step count start at zero)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.model = {k: v.detach().clone() for k, v in run.model.state_dict(keep_vars=True).items()}
        self.optimizers = {
            name: {
                id(p): {k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p].items()}
                for group in optimizer.param_groups
                for p in group["params"]
                if p in optimizer.state
            }
            for name, optimizer in run.optimizers.items()
        }
        self.cpu_rng = torch.get_rng_state()
        self.skipped = run.state.skipped
        self.skips_on_device = None if run.skips_on_device is None else run.skips_on_device.clone()
        self.cuda_rng = torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None

    @torch.no_grad()
    def restore(self) -> None:
        run = self.run
        for key, value in run.model.state_dict(keep_vars=True).items():
            value.detach().copy_(self.model[key])
        for name, optimizer in run.optimizers.items():
            saved = self.optimizers[name]
            for group in optimizer.param_groups:
                for p in group["params"]:
                    before = saved.get(id(p), {})
                    for key, value in optimizer.state.get(p, {}).items():
                        if torch.is_tensor(value):
                            value.copy_(before[key]) if key in before else value.zero_()
        torch.set_rng_state(self.cpu_rng)
        run.state.skipped = self.skipped
        if self.skips_on_device is not None:
            run.skips_on_device.copy_(self.skips_on_device)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, run.device)


class GraphStep:
    """`step(index)`: the eager step `eager(index)` for the batch of images at `index`, replayed from a CUDA
    graph for batches of `batch_size` once `settled()` says the step no longer changes with the step count.
    The first such call warms up and captures (timed apart by the loop, like a compile). `capture=False`
    runs the same static-buffer steps without a graph (tests check it against eager steps on the CPU)."""

    def __init__(
        self,
        run: Run,
        eager: Callable[[Tensor], LossParts],
        batch_size: int,
        settled: Callable[[], bool],
        *,
        capture: bool = True,
    ) -> None:
        self.run, self.eager, self.batch_size, self.settled, self.capture = run, eager, batch_size, settled, capture
        self.index: Tensor | None = None
        self.parts: LossParts | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None

    def __call__(self, index: Tensor) -> LossParts:
        if len(index) != self.batch_size or self.failed is not None or not self.settled():
            return self.eager(index)
        if self.index is None:
            self._record(index)
            if self.failed is not None:
                return self.eager(index)
        self.index.copy_(index)
        if self.graph is None:
            return self.eager(self.index)
        self.graph.replay()
        return self.parts

    def _record(self, index: Tensor) -> None:
        """Warm up on a side stream, capture one step into the graph, and put everything back."""
        snapshot = _Snapshot(self.run)
        self.index = index.clone()
        try:
            with self._side_stream():
                for _ in range(WARMUP_STEPS):
                    self.eager(self.index)
            if self.capture:
                self.graph = torch.cuda.CUDAGraph()
                for optimizer in self.run.optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                try:
                    with torch.cuda.graph(self.graph):
                        self.parts = self.eager(self.index)
                except (RuntimeError, RunFailed) as error:  # a host read the graph cannot hold: train eagerly
                    cause = error.__cause__ or error
                    self.graph, self.parts = None, None
                    first_line = (str(cause).splitlines() or [""])[0][:200]
                    self.failed = f"capturing the step failed: {type(cause).__name__}: {first_line}"
                    print(printable(f"vaezoo: warning: {self.failed}; training eagerly"), file=sys.stderr)
        finally:
            snapshot.restore()

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        if not self.capture:
            yield
            return
        side = torch.cuda.Stream(self.run.device)
        side.wait_stream(torch.cuda.current_stream(self.run.device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(self.run.device).wait_stream(side)
