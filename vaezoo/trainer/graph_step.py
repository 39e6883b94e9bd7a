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
run takes the same steps as an eager one. `replay_of` captures a step as the run would, so that
`vaezoo.trainer.devices.time_steps` times it as a graph for `--precision auto`."""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import Tensor

from vaezoo.components import LossParts
from vaezoo.errors import RunFailed, error_line, printable
from vaezoo.trainer.devices import Precision
from vaezoo.trainer.distributed import World
from vaezoo.trainer.run import Run

WARMUP_STEPS = 3
CAPTURABLE_RUN_EAGERLY = "This instance was constructed with capturable=True"  # torch's warning, by design here
T = TypeVar("T")


def graph_blocker(run: Run, world: World, own_step: bool, precision: Precision | None = None) -> str | None:
    """Why this run's step cannot be captured as a CUDA graph (at `precision`, the run's by default), or
    None when it can."""
    settings, family = run.settings, run.recipe["model"]["name"]
    if run.device.type != "cuda":
        return f"the device is {run.device.type}, not CUDA"
    if not settings.cuda_graph:
        return "train.cuda_graph is false"
    if not run.model.cuda_graph:
        return f"model family {family!r} does not declare cuda_graph = True"
    if own_step:
        return f"model family {family!r} has its own training_step"
    if world.enabled:
        return "training runs under torchrun (DistributedDataParallel)"
    if (precision or run.precision).scale_grads:
        return "fp16 steps through the gradient scaler"
    if settings.compile:
        return "train.compile is on (torch.compile runs the step)"
    if os.environ.get("CUDA_LAUNCH_BLOCKING", "0") not in ("", "0"):
        return "CUDA_LAUNCH_BLOCKING is set (every launch waits for the GPU, which a capture cannot hold)"
    schedule = getattr(run, "schedule", None)  # built by prepare()
    if schedule is not None and not schedule.constant:
        return "train.lr_schedule changes the learning rate during the run"
    if settings.skip_grad_norm > 0 and settings.optimizer == "sgd":
        return "train.skip_grad_norm with sgd reads the gradient norm on the host (adam skips on the device)"
    return None


def optimizer_flags(run: Run, world: World, own_step: bool) -> tuple[bool, bool]:
    """(capturable, fused) for the run's Adam: capturable when its step will be a CUDA graph, and fused
    too when train.skip_grad_norm is on (the skip is then decided on the device: DeviceSkips)."""
    capturable = run.device.type == "cuda" and graph_blocker(run, world, own_step) is None
    return capturable, capturable and run.settings.skip_grad_norm > 0


def kl_settled(run: Run) -> Callable[[], bool]:
    """Whether the KL weights of the step have reached the values they keep to the end of the run (the
    loss component's `kl_weight(step)` where the family applies it, and the family's own `kl_weight(step)`
    if it has one): until then a step depends on the step count and is not captured. Assumes a schedule,
    once at its final weight, stays there (a warm-up does)."""
    loss = getattr(run.model, "loss", None)
    candidates = [getattr(run.model, "kl_weight", None)]
    if run.model.applies_kl_weight:
        candidates.append(getattr(loss, "kl_weight", None))
    schedules: list[Callable[[int], float]] = [schedule for schedule in candidates if callable(schedule)]
    last = run.settings.epochs * run.batches_per_epoch
    final = [schedule(last) for schedule in schedules]
    settled = False

    def check() -> bool:
        nonlocal settled
        settled = settled or [schedule(run.state.step) for schedule in schedules] == final
        return settled

    return check


class DeviceSkips:
    """Updates skipped at train.skip_grad_norm, decided on the device (no host read in a step: a CUDA graph
    holds it) and counted there until `take()` reads them (an epoch's end, a stop)."""

    def __init__(self, device: torch.device) -> None:
        self.count = torch.zeros((), device=device)

    def decide(self, optimizer: torch.optim.Optimizer, keep: Tensor) -> None:
        """Skip `optimizer`'s next update unless `keep` (a bool tensor; a non-finite norm is skipped too)."""
        skipped = (~keep).float()
        # Adam's fused kernel reads found_inf as it does from torch's GradScaler: where it is 1 the
        # parameters, moments and step count stay as they were
        optimizer.found_inf = skipped  # type: ignore[attr-defined]  # torch's Optimizer type lacks it
        self.count += skipped

    def take(self) -> int:
        """The updates skipped since the last take."""
        skipped = int(self.count.item())
        self.count.zero_()
        return skipped


def step_optimizer(scaler: Any, optimizer: torch.optim.Optimizer) -> None:
    """`scaler.step(optimizer)`; a capturable Adam's KL warm-up, warm-up and last batches run eagerly, which
    torch warns of, by design here."""
    if not optimizer.defaults.get("capturable"):
        scaler.step(optimizer)
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CAPTURABLE_RUN_EAGERLY)
        scaler.step(optimizer)


class _Snapshot:
    """Weights, buffers, optimizer state and random generators, to put back in place after the warm-up
    (optimizer state that did not exist yet is zeroed: Adam's moments and step count start at zero)."""

    def __init__(self, run: Run, skips: DeviceSkips | None) -> None:
        self.run, self.skips = run, skips
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
        self.skip_count = None if skips is None else skips.count.clone()
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
        if self.skips is not None and self.skip_count is not None:
            self.skips.count.copy_(self.skip_count)
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
    return f"{error_line(cause, 200)}{where}"


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
                raise CaptureFailed(f"the step waits for the host ({_why(error)})") from error
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
        ) from error
    return graph, out


def replay_of(
    step: Callable[[], Any], device: torch.device, before_capture: Callable[[], None]
) -> Callable[[], None] | None:
    """`step` captured as a CUDA graph as the trainer captures it (`capture_step`), returned as its replay
    (which holds the graph); None where the step is refused (the run then trains eagerly too)."""
    try:
        graph, _ = capture_step(step, device, before_capture)
    except CaptureFailed:
        before_capture()
        return None
    return graph.replay


class GraphStep:
    """`step(index)`: the eager step `eager(index)` for the batch of images at `index`, replayed from a CUDA
    graph for batches of `batch_size` once `settled()` says the step no longer changes with the step count.
    The call that warms up and captures a graph sets `just_recorded` (the loop times it apart, like a compile);
    `skips` (the step's DeviceSkips) is put back after the warm-up with the rest. `capture=False` runs the
    same static-buffer steps without a graph (tests check it against eager steps on the CPU)."""

    def __init__(
        self,
        run: Run,
        eager: Callable[[Tensor], LossParts],
        batch_size: int,
        settled: Callable[[], bool],
        skips: DeviceSkips | None = None,
        *,
        capture: bool = True,
    ) -> None:
        self.run, self.eager, self.batch_size, self.settled, self.capture = run, eager, batch_size, settled, capture
        self.skips = skips
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
        buffer = cast(Tensor, self.index)  # the index buffer _record made, which the graph reads
        buffer.copy_(index)
        if self.graph is None or self.parts is None:
            return self.eager(buffer)
        self.graph.replay()
        return self.parts

    def _record(self, index: Tensor) -> None:
        """Warm up, capture one step into the graph (reading the index buffer `self.index`), and put
        everything back as it was."""
        snapshot = _Snapshot(self.run, self.skips)
        self.index = captured = index.clone()

        def zero_grads() -> None:
            for optimizer in self.run.optimizers.values():
                optimizer.zero_grad(set_to_none=True)

        try:
            if self.capture:
                self.graph, self.parts = capture_step(lambda: self.eager(captured), self.run.device, zero_grads)
            else:
                for _ in range(WARMUP_STEPS):
                    self.eager(captured)
        except CaptureFailed as failed:
            self.graph, self.parts, self.failed = None, None, str(failed)
            self.run.step_mode = f"eager ({self.failed})"
            print(printable(f"vaezoo: warning: {self.failed}; training eagerly"), file=sys.stderr)
        snapshot.restore()  # not after another error: the run stops and saves nothing of this epoch
