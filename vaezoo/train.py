"""The training loop: one readable loop over shuffled batches of a uint8 tensor on the device, with
callbacks for progress, an evaluation and a checkpoint at the end of every epoch, and a clean stop on
Ctrl-C / SIGTERM."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo import distributed
from vaezoo.checkpoint import save as save_model
from vaezoo.data import shuffled_batches
from vaezoo.devices import Precision
from vaezoo.errors import Interrupted, RunFailed, VaezooError
from vaezoo.evaluate import evaluate
from vaezoo.files import append_line_atomic
from vaezoo.images import save_grid
from vaezoo.model import VAE
from vaezoo.pictures import write_epoch_pictures
from vaezoo.state import load_state, save_state

LOG_EVERY = 20  # steps between reads of the loss (each read waits for the device)
SAMPLE_SEED = 0


@dataclass
class Run:
    """Everything one training run works with; callbacks receive it."""

    model: VAE
    recipe: dict[str, Any]
    train_images: Tensor
    test_images: Tensor
    out_dir: Path
    device: torch.device
    precision: Precision
    resume_command: str = ""
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_images) / self.recipe["train"]["batch_size"])


class Callback:
    """Hooks into the loop; override what you need."""

    def on_start(self, run: Run) -> None: ...

    def on_step(self, run: Run, batch: int, loss: float, images_per_s: float) -> None: ...

    def on_epoch_end(self, run: Run, metrics: dict[str, Any]) -> None: ...

    def on_end(self, run: Run) -> None: ...


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_optimizer(model: torch.nn.Module, train: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=train["lr"], momentum=0.9, weight_decay=train["weight_decay"])
    cls = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=train["lr"], weight_decay=train["weight_decay"])


def training_summary(run: Run, metrics: dict[str, Any]) -> dict[str, Any]:
    return {"epochs": run.epoch, "steps": run.step, "precision": run.precision.name, "device": run.device.type, "train_images": len(run.train_images), "metrics": metrics}


def write_epoch_outputs(run: Run, metrics: dict[str, Any]) -> None:
    """model.safetensors, metrics.jsonl, samples.png and the pictures of vaezoo.pictures
    (reconstructions, interpolations, loss curve) for the epoch just finished."""
    save_model(run.model, run.out_dir / "model.safetensors", run.recipe, training_summary(run, metrics))
    append_line_atomic(run.out_dir / "metrics.jsonl", json.dumps(metrics))
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(SAMPLE_SEED)
        save_grid(run.model.sample(run.recipe["train"]["sample_count"]), run.out_dir / "samples.png")
    write_epoch_pictures(run.model, run.test_images, run.history, run.out_dir)


def memory_format(model: VAE, settings: dict[str, Any]) -> torch.memory_format:
    """channels-last for models with convolutions when train.channels_last is on (measured faster on
    CPU: docs/performance.md), the default layout otherwise."""
    convolutional = any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())
    return torch.channels_last if settings["channels_last"] and convolutional else torch.contiguous_format


def fast_model(model: VAE, device: torch.device, job: distributed.World, settings: dict[str, Any]) -> torch.nn.Module:
    """What the loop calls: the model in its memory format, in DistributedDataParallel under torchrun,
    compiled with train.compile (the first call compiles; the loop reports that time as compile_seconds)."""
    model.to(memory_format=memory_format(model, settings))
    net = distributed.wrap(model, device, job)
    return torch.compile(net) if settings["compile"] else net


def train(run: Run, callbacks: Sequence[Callback] = (), resume_from: Path | None = None) -> dict[str, Any]:
    """Train `run.model` for the recipe's epochs; returns the last epoch's metrics."""
    model, settings, device = run.model, run.recipe["train"], run.device
    job = distributed.world()  # rank and world size under torchrun; a single process otherwise
    distributed.check_batch_size(settings["batch_size"], job)
    optimizer = make_optimizer(model, settings)
    scaler = torch.amp.GradScaler(device.type) if run.precision.scale_grads else None
    data_rng = torch.Generator().manual_seed(settings["seed"])
    counters = {"epoch": 0, "batch": 0, "step": 0, "loss_sum": 0.0, "seconds": 0.0}
    if resume_from is not None:
        counters, saved_rng = load_state(resume_from, model, optimizer, scaler)
        data_rng.set_state(saved_rng)
        if counters["epoch"] >= settings["epochs"]:
            raise VaezooError(f"{run.out_dir} is already trained to epoch {counters['epoch']}: pass --epochs N with N > {counters['epoch']} to train further")
    else:
        torch.manual_seed(settings["seed"])
    if job.enabled:  # each rank draws its own noise (the data order stays common to all ranks)
        torch.manual_seed(settings["seed"] + (job.rank << 32) + counters["step"])
    run.epoch, run.step = counters["epoch"], counters["step"]
    net, compile_seconds = fast_model(model, device, job, settings), None
    batch_size, n_train = settings["batch_size"], len(run.train_images)
    n_used = distributed.images_per_epoch(n_train, batch_size, job)  # == n_train in a single process
    callbacks = callbacks if job.is_main else ()  # only rank 0 prints
    model.train()
    for callback in callbacks:
        callback.on_start(run)
    metrics: dict[str, Any] = run.history[-1] if run.history else {}
    with StopRequest() as stop:
        for epoch in range(run.epoch, settings["epochs"]):
            epoch_rng = data_rng.get_state()
            order = distributed.shard_order(torch.randperm(n_train, generator=data_rng), batch_size, job)
            first_batch = counters["batch"] if epoch == counters["epoch"] else 0
            loss_sum = torch.tensor(counters["loss_sum"] if first_batch and job.is_main else 0.0, dtype=torch.float64, device=device)
            seconds_before = counters["seconds"] if first_batch else 0.0
            started = time.perf_counter()
            batch = timed_from = first_batch
            batches = shuffled_batches(run.train_images, order, batch_size // job.world_size, first_batch, memory_format(model, settings))
            for batch, x in enumerate(batches, start=first_batch):
                if _stop_requested(stop, job, run.step, device):
                    _stop(run, optimizer, scaler, epoch_rng, epoch, batch, loss_sum, seconds_before + time.perf_counter() - started, stop.signal)
                with run.precision.autocast(device):
                    parts = net(x, run.step)
                if job.enabled:  # DDP averages the ranks' gradients: this gives the global batch mean's
                    loss = parts.loss.sum() * distributed.shard_scale(min(batch_size, n_used - batch * batch_size), job)
                else:
                    loss = parts.loss.mean()
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if settings["grad_clip"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), settings["grad_clip"])
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                loss_sum += parts.loss.detach().sum()
                run.step += 1
                if compile_seconds is None and settings["compile"]:  # the first call compiles: timed apart
                    loss_sum.item()
                    compile_seconds, started, timed_from = time.perf_counter() - started, time.perf_counter(), batch + 1
                if run.step % LOG_EVERY == 0:
                    seen = min((batch + 1) * batch_size, n_used)
                    mean = _check_finite(run, loss_sum.item() * job.world_size / seen, epoch, batch)  # rank 0's shard
                    elapsed = time.perf_counter() - started
                    rate = (seen - timed_from * batch_size) / max(elapsed, 1e-9)
                    for callback in callbacks:
                        callback.on_step(run, batch + 1, mean, rate)
            elapsed = time.perf_counter() - started
            train_loss = _check_finite(run, distributed.all_reduce_sum(loss_sum).item() / n_used, epoch, batch)
            eval_started = time.perf_counter()
            test_shard = distributed.shard_split(run.test_images, job)
            test = evaluate(model, test_shard, batch_size=settings["eval_batch_size"], precision=run.precision)
            test = distributed.reduce_means(test, len(test_shard), device)
            model.train()
            run.epoch = epoch + 1
            metrics = {
                "epoch": run.epoch,
                "step": run.step,
                "train_loss": train_loss,
                "test_loss": test["loss"],
                "test_recon": test["recon"],
                "test_kl": test["kl"],
                **({"test_bits_per_dim": test["bits_per_dim"]} if "bits_per_dim" in test else {}),
                "seconds": seconds_before + elapsed,
                "images_per_s": (n_used - timed_from * batch_size) / max(elapsed, 1e-9),
                "eval_seconds": time.perf_counter() - eval_started,
                **({"compile_seconds": compile_seconds} if compile_seconds and timed_from > first_batch else {}),
            }
            run.history.append(metrics)
            counters = {"epoch": run.epoch, "batch": 0, "step": run.step, "loss_sum": 0.0, "seconds": 0.0}
            if job.is_main:  # one set of files, whatever the number of processes
                write_epoch_outputs(run, metrics)
                save_state(run.out_dir / "state.safetensors", model, optimizer, counters, data_rng.get_state(), scaler)
            for callback in callbacks:
                callback.on_epoch_end(run, metrics)
        if not job.enabled and stop.signal is not None and run.epoch < settings["epochs"]:
            _stop(run, optimizer, scaler, data_rng.get_state(), run.epoch, 0, None, 0.0, stop.signal)
    for callback in callbacks:
        callback.on_end(run)
    return metrics


def _check_finite(run: Run, value: float, epoch: int, batch: int) -> float:
    if math.isfinite(value):
        return value
    kept = f"the last good checkpoint is {run.out_dir / 'model.safetensors'} (epoch {run.epoch})" if run.epoch else "no epoch finished, so there is no checkpoint"
    raise RunFailed(f"training diverged: the loss became {value} in epoch {epoch + 1}, batch {batch + 1}; {kept}; try a lower --lr or --precision fp32")


def _stop_requested(stop: StopRequest, job: distributed.World, step: int, device: torch.device) -> bool:
    """Whether to stop before this step. Under torchrun all ranks must stop at the same step, so
    they agree (one small all-reduce) every LOG_EVERY steps instead of each checking its own flag."""
    if not job.enabled:
        return stop.signal is not None
    return step % LOG_EVERY == 0 and distributed.any_rank(stop.signal is not None, device)


def _stop(run: Run, optimizer, scaler, epoch_rng: Tensor, epoch: int, batch: int, loss_sum: Tensor | None, seconds: float, signum: int | None) -> None:
    loss_total = distributed.all_reduce_sum(loss_sum).item() if loss_sum is not None else 0.0
    counters = {"epoch": epoch, "batch": batch, "step": run.step, "loss_sum": loss_total, "seconds": seconds}
    if distributed.is_main():
        save_state(run.out_dir / "state.safetensors", run.model, optimizer, counters, epoch_rng, scaler)
    name = signal.Signals(signum or signal.SIGTERM).name
    raise Interrupted(f"stopped by {name} in epoch {epoch + 1} after {batch} batches; state saved in {run.out_dir / 'state.safetensors'}; resume with: {run.resume_command}")
