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

import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from vaezoo.components import LossParts
from vaezoo.errors import RunFailed, printable

if TYPE_CHECKING:
    from vaezoo.trainer.devices import Precision
    from vaezoo.trainer.distributed import World
    from vaezoo.trainer.loop import Run

WARMUP_STEPS = 3
T = TypeVar("T")


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
    if os.environ.get("CUDA_LAUNCH_BLOCKING", "0") not in ("", "0"):
        return "CUDA_LAUNCH_BLOCKING is set (every launch waits for the GPU, which a capture cannot hold)"
    schedule = getattr(run, "schedule", None)  # built by prepare()
    if schedule is not None and not schedule.constant:
        return "train.lr_schedule changes the learning rate during the run"
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
        if self.skips_on_device is not None and run.skips_on_device is not None:  # both or neither
            run.skips_on_device.copy_(self.skips_on_device)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, run.device)


class CaptureFailed(Exception):
    """The step cannot be captured as a CUDA graph (the message says why); train it eagerly."""


def _first_cause(error: BaseException) -> BaseException:
    """The error that started a chain (a capture that fails raises from inside the failure of its body)."""
    cause = error.__cause__ or error.__context__
    while cause is not None:
        error, cause = cause, cause.__cause__ or cause.__context__
    return error


def _why(error: BaseException) -> str:
    """The first cause of `error`, in one line, with the line of code outside torch that raised it."""
    cause = _first_cause(error)
    frames = [f for f in traceback.extract_tb(cause.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0][:200]}{where}"


def capture_step(step: Callable[[], T], device: torch.device, before_capture: Callable[[], None]) -> tuple[Any, T]:
    """`step` captured as a CUDA graph on `device`: returns the graph and what the captured call returned
    (tensors that each replay overwrites). First WARMUP_STEPS calls on a side stream (lazy optimizer state,
    library workspaces), the last of them with CUDA's synchronisation check on: a step that waits for the
    host (`.item()`, a copy from host memory) is refused there, before a capture that would fail and leave
    CUDA's allocator in a capture; then `before_capture()` and the capture, on a stream of its own that is
    left again whatever happens. Raises CaptureFailed naming why the step was refused; a capture that fails
    after that is RunFailed: CUDA's allocator and random generator may still count it as running, so
    nothing more should run in the process. The synchronisation check holds for the whole process while the
    last warm-up runs: one run per process warms up at a time."""
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(current)
    debug_mode = torch.cuda.get_sync_debug_mode()
    try:
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS - 1):
                step()  # an error here is the step's own: the eager step raises it too
            torch.cuda.set_sync_debug_mode("error")
            try:
                step()
            except (RuntimeError, RunFailed) as error:
                raise CaptureFailed(f"the step waits for the host ({_why(error)})") from None
    finally:
        torch.cuda.set_sync_debug_mode(debug_mode)
        current.wait_stream(side)
    before_capture()
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream(device)
    try:
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            out = step()
    except (RuntimeError, RunFailed) as error:
        raise RunFailed(
            f"capturing the training step as a CUDA graph failed ({_why(error)}); CUDA's state after a failed "
            "capture cannot be trusted, so the run stops here: run it again with --set train.cuda_graph=false"
        ) from None
    return graph, out


class GraphStep:
    """`step(index)`: the eager step `eager(index)` for the batch of images at `index`, replayed from a CUDA
    graph for batches of `batch_size` once `settled()` says the step no longer changes with the step count.
    The call that warms up and captures a graph sets `just_recorded` (the loop times it apart, like a compile).
    `capture=False` runs the same static-buffer steps without a graph (tests check it against eager steps
    on the CPU)."""

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
        self.just_recorded = False

    def __call__(self, index: Tensor) -> LossParts:
        self.just_recorded = False
        if len(index) != self.batch_size or self.failed is not None or not self.settled():
            return self.eager(index)
        if self.index is None:
            self._record(index)
            if self.failed is not None:
                return self.eager(index)
            self.just_recorded = True
        assert self.index is not None  # _record made it
        self.index.copy_(index)
        if self.graph is None or self.parts is None:  # set together
            return self.eager(self.index)
        self.graph.replay()
        return self.parts

    def _record(self, index: Tensor) -> None:
        """Warm up, capture one step into the graph, and put everything back as it was."""
        snapshot = _Snapshot(self.run)
        static = self.index = index.clone()

        def zero_grads() -> None:
            for optimizer in self.run.optimizers.values():
                optimizer.zero_grad(set_to_none=True)

        try:
            if self.capture:
                self.graph, self.parts = capture_step(lambda: self.eager(static), self.run.device, zero_grads)
            else:
                for _ in range(WARMUP_STEPS):
                    self.eager(static)
        except CaptureFailed as failed:
            self.graph, self.parts, self.failed = None, None, str(failed)
            self.run.step_mode = f"eager ({self.failed})"
            print(printable(f"vaezoo: warning: {self.failed}; training eagerly"), file=sys.stderr)
        snapshot.restore()  # not after another error: the run stops and saves nothing of this epoch
