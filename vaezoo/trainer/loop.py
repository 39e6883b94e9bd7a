"""The training loop: one readable loop over shuffled batches of a uint8 tensor on the device. The model
owns its objective (`model(x, y, step).loss`); everything around the loop (progress, the files of each
epoch, the experiment loggers) is a callback, and Ctrl-C / SIGTERM stop it cleanly between two steps."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import LossParts, LRSchedule
from vaezoo.errors import Interrupted, PluginError, RunFailed, VaezooError, error_line
from vaezoo.trainer import distributed
from vaezoo.trainer.evaluate import evaluate
from vaezoo.trainer.run import Run, blame
from vaezoo.trainer.signals import handle_stops
from vaezoo.trainer.step import Step, run_optimizers

LOG_EVERY = 20  # steps between reads of the loss (each read waits for the device)


class Callback:
    """Hooks into the loop; override what you need. Only rank 0 calls them under torchrun."""

    def on_start(self, run: Run) -> None: ...

    def on_step(self, run: Run, batch: int, loss: float, images_per_s: float) -> None: ...

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None: ...

    def on_interrupt(self, run: Run, epoch_rng: Tensor) -> None:
        """The run stops mid-epoch (`run.state` says where; `epoch_rng` is the data order's generator
        state at the start of that epoch)."""

    def on_end(self, run: Run) -> None: ...


class StopRequest:
    """Turns SIGINT/SIGTERM/SIGHUP (a closed terminal) into a flag the loop checks between steps (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = handle_stops(self._handle)  # a signal the parent ignores (nohup) stays ignored
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def prepare(run: Run, resume_from: Path | None = None) -> None:
    """Optimizer, gradient scaler (a no-op unless fp16), data-order generator and RNGs of a run: new,
    or restored from a state.safetensors (`_resume`). Under torchrun each rank draws its own noise from
    here (the data order stays common to all ranks)."""
    settings = run.settings
    run.schedule = make_schedule(run)
    run.optimizers = run_optimizers(run)
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision.scale_grads)
    run.data_rng = torch.Generator().manual_seed(settings.seed)
    if resume_from is None:
        torch.manual_seed(settings.seed)
    else:
        _resume(run, resume_from)
    world = distributed.current_world()
    if world.enabled:
        torch.manual_seed(settings.seed + (world.rank << 32) + run.state.step)


def _resume(run: Run, resume_from: Path) -> None:
    """The state of a state.safetensors, with its metrics history; the recipe's learning rate and weight
    decay take effect."""
    from vaezoo.files.train_state import load_state

    counters, saved_rng, history = load_state(
        resume_from, run.model, run.optimizers, run.scaler, batches=run.batches_per_epoch
    )
    run.state.load_state_dict(counters)
    try:
        run.data_rng.set_state(saved_rng)
    except RuntimeError as error:
        raise VaezooError(f"{resume_from} is damaged: its data-order generator state does not restore") from error
    for name, optimizer in run.optimizers.items():  # --lr on resume takes effect (and is what recipe.toml records)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = run.settings.lr_of(name), run.settings.weight_decay
    run.history = history or [
        row for row in _old_history(resume_from.with_name("metrics.jsonl")) if row.get("epoch", 0) <= run.state.epoch
    ]


def make_schedule(run: Run) -> LRSchedule:
    """The run's learning-rate schedule (`train.lr_schedule`), over the whole run's optimizer steps."""
    from vaezoo.plugins.manager import get_registry
    from vaezoo.recipes.build import instantiate

    table = run.settings.lr_schedule
    steps = {
        "total_steps": run.settings.epochs * run.batches_per_epoch,
        "steps_per_epoch": run.batches_per_epoch,
    }
    schedule = instantiate(get_registry().get("schedules", table["name"]).load(), table, steps, "train.lr_schedule")
    if not isinstance(schedule, LRSchedule):
        raise PluginError(f"schedule {table['name']!r} does not build a vaezoo.LRSchedule")
    return schedule


def apply_schedule(run: Run) -> None:
    """Set every optimizer's learning rate to its base (train.lr, train.group_lr.NAME) times the
    schedule's factor at this step (only when the factor changes)."""
    schedule = run.settings.lr_schedule["name"]
    if run.schedule is None:  # prepare() builds it
        return
    try:
        factor = float(run.schedule.factor(run.state.step, run.history))
    except Exception as error:  # a plugin's schedule
        raise PluginError(f"schedule {schedule!r} failed: {error_line(error)}") from error
    if not (math.isfinite(factor) and factor >= 0):
        raise PluginError(f"schedule {schedule!r} gave the factor {factor} at step {run.state.step}")
    if factor == run.lr_factor:
        return
    run.lr_factor = factor
    for name, optimizer in run.optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = run.settings.lr_of(name) * factor


def early_stop(run: Run) -> str | None:
    """Why the run stops here (train.early_stop_patience epochs without a lower val_loss), or None."""
    patience = run.settings.early_stop_patience
    losses = [row.get("val_loss", math.inf) for row in run.history]
    if not patience or not losses:
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    if len(losses) - 1 - best < patience:
        return None
    return (
        f"stopped early after epoch {len(losses)}: val_loss has not improved for {patience} "
        f"epoch{'' if patience == 1 else 's'} "
        f"(best {losses[best]:.4f} at epoch {run.history[best].get('epoch', best + 1)}: best.safetensors)"
    )


def _old_history(path: Path) -> list[dict[str, Any]]:
    """Per-epoch metrics from a metrics.jsonl, for states written before vaezoo 0.2 kept the history
    (lines that are not JSON objects with an epoch are left out)."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if path.is_file() else []:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    return rows


class Meter:
    """The epoch's bookkeeping beside the steps: the loss sum (on the device, read every LOG_EVERY
    steps), the epoch's seconds, and its images per second, counted after the first call of a compiled
    model or the capture of a CUDA graph (those steps, and the ones before them in the epoch, are timed
    apart as compile_seconds)."""

    def __init__(self, run: Run, world: distributed.World) -> None:
        self.run, self.world = run, world
        self.images = distributed.images_per_epoch(len(run.train_images), run.settings.batch_size, world)

    def start_epoch(self) -> None:
        state = self.run.state
        self.loss_sum = torch.tensor(
            state.loss_sum if self.world.is_main else 0.0, dtype=torch.float64, device=self.run.device
        )
        self.started = self.rate_from = time.perf_counter()
        self.timed_from = self.first_batch = state.batch
        self.slow_in_epoch = False

    def add(self, parts: LossParts, slow: bool = False) -> None:
        """Count a step (its batch is done); `slow`: it compiled or captured a CUDA graph."""
        self.loss_sum += parts.loss.detach().sum()
        if slow:
            self.loss_sum.item()  # wait for the step
            self.rate_from, self.timed_from = time.perf_counter(), self.run.state.batch
            self.compile_seconds, self.slow_in_epoch = self.rate_from - self.started, True

    def _rate(self, seen: int) -> float:
        """Images per second since the slow step (over the whole epoch when no step came after it)."""
        timed = seen - self.timed_from * self.run.settings.batch_size
        since = self.rate_from if timed > 0 else self.started
        timed = timed if timed > 0 else seen - self.first_batch * self.run.settings.batch_size
        return timed / max(time.perf_counter() - since, 1e-9)

    def progress(self) -> tuple[float, float]:
        """Mean loss per image so far in the epoch (rank 0's shard) and images per second."""
        seen = min(self.run.state.batch * self.run.settings.batch_size, self.images)
        mean = _check_finite(self.run, self.loss_sum.item() * self.world.world_size / seen)
        return mean, self._rate(seen)

    def pause(self) -> None:
        """Keep the epoch's loss sum and seconds in the run's state (a stop mid-epoch saves them)."""
        state = self.run.state
        state.loss_sum, state.seconds = (
            distributed.all_reduce_sum(self.loss_sum).item(),
            state.seconds + time.perf_counter() - self.started,
        )

    def end_epoch(self) -> dict[str, Any]:
        """The epoch's train loss, seconds and images per second (and compile_seconds when timed)."""
        train_loss = _check_finite(self.run, distributed.all_reduce_sum(self.loss_sum).item() / self.images)
        timing = {
            "seconds": self.run.state.seconds + time.perf_counter() - self.started,
            "images_per_s": self._rate(self.images),
        }
        if self.slow_in_epoch:
            timing["compile_seconds"] = self.compile_seconds
        return {"train_loss": train_loss, **timing}


def train(run: Run, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train `run.model` up to the recipe's epochs (prepared here unless `prepare` was called);
    returns the last epoch's metrics."""
    settings, state = run.settings, run.state
    world = distributed.current_world()  # rank and world size under torchrun; a single process otherwise
    per_rank_batch = distributed.check_batch_size(settings.batch_size, world)
    if not run.optimizers:
        prepare(run)
    step, meter = Step(run, world), Meter(run, world)
    callbacks = callbacks if world.is_main else ()  # only rank 0 prints and writes
    metrics: dict[str, Any] = run.history[-1] if run.history else {}
    run.model.train()
    for callback in callbacks:
        callback.on_start(run)
    run.stopped_early = early_stop(run)  # a resumed run that had stopped early stays stopped
    with StopRequest() as stop:
        while state.epoch < settings.epochs and run.stopped_early is None:
            epoch_rng = run.data_rng.get_state()
            meter.start_epoch()
            for index in _epoch_order(run, world).split(per_rank_batch)[state.batch :]:
                if _stop_requested(stop, world, state.step, run.device):
                    meter.pause()
                    _interrupt(run, step, callbacks, epoch_rng, stop.signal)
                apply_schedule(run)
                parts = step(index)
                state.step, state.batch = state.step + 1, state.batch + 1
                meter.add(parts, slow=step.slow)
                if state.step % LOG_EVERY == 0:
                    for callback in callbacks:
                        callback.on_step(run, state.batch, *meter.progress())
            step.settle()
            metrics = _end_epoch(run, world, meter.end_epoch())
            for callback in callbacks:
                callback.on_epoch_end(run, metrics)
            run.stopped_early = early_stop(run)
        if not world.enabled and stop.signal is not None and state.epoch < settings.epochs:
            _interrupt(run, step, callbacks, run.data_rng.get_state(), stop.signal)
    for callback in callbacks:
        callback.on_end(run)
    return metrics


def _epoch_order(run: Run, world: distributed.World) -> Tensor:
    """This rank's share of a new shuffle of the training images (drawn from `run.data_rng`), on the device."""
    order = torch.randperm(len(run.train_images), generator=run.data_rng)
    return distributed.shard_order(order, run.settings.batch_size, world).to(run.device)


def _end_epoch(run: Run, world: distributed.World, training: dict[str, Any]) -> dict[str, Any]:
    """Evaluate on the test split, close the epoch in `run.state` and return its metrics
    (`training`: the Meter's train_loss, seconds, images_per_s and compile_seconds)."""
    settings, state = run.settings, run.state
    eval_started = time.perf_counter()
    test_shard, label_shard = distributed.shard_split(run.test_images, world), None
    if run.test_labels is not None:
        label_shard = distributed.shard_split(run.test_labels, world)
    with blame(run, "evaluation"):
        test = evaluate(
            run.model, test_shard, label_shard, batch_size=settings.eval_batch_size, precision=run.precision
        )
    terms = test.pop("terms")
    test = distributed.reduce_means(
        {**test, **{f"terms.{k}": v for k, v in terms.items()}}, len(test_shard), run.device
    )
    _check_finite(run, test["loss"], "the test loss")
    validation = {}
    if run.val_images is not None:
        val_labels = None if run.val_labels is None else distributed.shard_split(run.val_labels, world)
        val_shard = distributed.shard_split(run.val_images, world)
        with blame(run, "evaluation"):
            val = evaluate(
                run.model, val_shard, val_labels, batch_size=settings.eval_batch_size, precision=run.precision
            )
        validation["val_loss"] = distributed.reduce_means({"loss": val["loss"]}, len(val_shard), run.device)["loss"]
        _check_finite(run, validation["val_loss"], "the validation loss")
    _check_weights(run)
    run.model.train()
    state.epoch, state.batch, state.loss_sum, state.seconds = state.epoch + 1, 0, 0.0, 0.0
    metrics = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": training["train_loss"],
        **validation,
        "test_loss": test["loss"],
        "test_recon": test["recon"],
        f"test_{run.model.regularizer}": test["kl"],  # test_kl for an ELBO family
        **({"test_bits_per_dim": test["bits_per_dim"]} if "bits_per_dim" in test else {}),
        **({"test_terms": {k: test[f"terms.{k}"] for k in terms}} if terms else {}),
        **({"skipped_updates": state.skipped} if settings.skip_grad_norm > 0 else {}),
        "lr": settings.lr * (run.lr_factor if run.lr_factor is not None else 1.0),
        "seconds": training["seconds"],
        "images_per_s": training["images_per_s"],
        "precision": run.precision.name,  # a resume may change it: each epoch records its own
        "eval_seconds": time.perf_counter() - eval_started,
        **({"compile_seconds": training["compile_seconds"]} if "compile_seconds" in training else {}),
    }
    run.history.append(metrics)
    return metrics


def _diverged(run: Run, what: str) -> RunFailed:
    """Training diverged: nothing of this epoch is written, the last good checkpoint stays."""
    kept = (
        f"the last good checkpoint is {run.out_dir / 'model.safetensors'} (epoch {run.epoch})"
        if run.epoch
        else "no epoch finished, so there is no checkpoint"
    )
    return RunFailed(
        f"training diverged: {what} in epoch {run.epoch + 1}, batch {run.state.batch}; nothing of this epoch "
        f"was saved and {kept}; try a lower --lr or --precision fp32"
    )


def _check_finite(run: Run, value: float, what: str = "the loss") -> float:
    if math.isfinite(value):
        return value
    raise _diverged(run, f"{what} became {value}")


def _check_weights(run: Run) -> None:
    """Refuse to save non-finite weights: a last step that diverges must not overwrite the last good
    model or state (its loss was computed before the update, so only the weights show it)."""
    tensors = {name: t for name, t in run.model.state_dict().items() if t.is_floating_point() and t.numel()}
    if not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()):
        return  # one read of the device, not one per tensor
    name = next(name for name, t in tensors.items() if not bool(torch.isfinite(t).all()))
    raise _diverged(run, f"the weights became non-finite ({name})")


def _stop_requested(stop: StopRequest, world: distributed.World, step: int, device: torch.device) -> bool:
    """Whether to stop before this step. Under torchrun all ranks must stop at the same step, so
    they agree (one small all-reduce) every LOG_EVERY steps instead of each checking its own flag."""
    if not world.enabled:
        return stop.signal is not None
    return step % LOG_EVERY == 0 and distributed.any_rank(stop.signal is not None, device)


def _interrupt(run: Run, step: Step, callbacks: Sequence[Callback], epoch_rng: Tensor, signum: int | None) -> None:
    """Save the state mid-epoch (never non-finite weights) and stop with Interrupted."""
    step.settle()
    _check_weights(run)
    for callback in callbacks:
        callback.on_interrupt(run, epoch_rng)
    name = signal.Signals(signum or signal.SIGTERM).name
    raise Interrupted(
        f"stopped by {name} in epoch {run.epoch + 1} after {run.state.batch} batches; state saved in "
        f"{run.out_dir / 'state.safetensors'}",
        out_dir=run.out_dir,
        recipe=run.recipe["name"],
        epochs=run.settings.epochs,
    )
