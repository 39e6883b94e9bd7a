"""The training loop: one readable loop over shuffled batches of a uint8 tensor on the device. The model
owns its objective (`model(x, y, step).loss`); everything around the loop (progress, the files of each
epoch, TensorBoard) is a callback, and Ctrl-C / SIGTERM stop it cleanly between two steps."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import (
    LossParts,
    LRSchedule,
    Model,
    broken_contract,
    checked_groups,
    checked_parts,
    checked_update,
)
from vaezoo.data import to_float
from vaezoo.errors import Interrupted, PluginError, RecipeError, RunFailed, VaezooError
from vaezoo.trainer import distributed
from vaezoo.trainer.devices import Precision
from vaezoo.trainer.evaluate import evaluate
from vaezoo.trainer.graph_step import GraphStep, graph_blocker
from vaezoo.trainer.signals import handle_stops

LOG_EVERY = 20  # steps between reads of the loss (each read waits for the device)
CAPTURABLE_RUN_EAGERLY = "This instance was constructed with capturable=True"  # torch's warning, by design here


@dataclass
class TrainState:
    """Where a run is: epochs completed, batches done in the current epoch (with their loss sum and
    seconds), optimizer steps taken, updates skipped. Saved in state.safetensors for `--resume`."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    seconds: float = 0.0
    skipped: int = 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        for key, value in saved.items():
            if hasattr(self, key):
                setattr(self, key, type(getattr(self, key))(value))


@dataclass
class Run:
    """Everything one training run works with; callbacks receive it."""

    model: Model
    recipe: dict[str, Any]
    train_images: Tensor
    test_images: Tensor
    out_dir: Path
    device: torch.device
    precision: Precision
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    state: TrainState = field(default_factory=TrainState)
    history: list[dict[str, Any]] = field(default_factory=list)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)  # by name (Model.parameter_groups)
    scaler: Any = None
    data_rng: torch.Generator = field(default_factory=torch.Generator)  # the data order's; seeded by prepare()
    step_mode: str = "eager"  # "CUDA graph", or "eager" and why (graph_step.graph_blocker), set by train()
    skips_on_device: Tensor | None = None  # updates skipped since last counted, when the device decides skips
    val_images: Tensor | None = None  # held out of the training split by train.val_fraction
    val_labels: Tensor | None = None
    schedule: LRSchedule | None = None  # train.lr_schedule, built by prepare()
    lr_factor: float | None = None  # the schedule's factor at the last step (None: not applied yet)
    stopped_early: str | None = None  # why train.early_stop_patience ended the run before its epochs
    pictures: dict[str, Tensor] = field(default_factory=dict)  # the last epoch's grids (HWC uint8) by name, set
    # by the run files before the other callbacks hear of the epoch's end (samples, reconstructions, interpolations)

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def step(self) -> int:
        return self.state.step

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_images) / self.recipe["train"]["batch_size"])


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


def make_optimizer(
    params: Any,
    train: dict[str, Any],
    lr: float | None = None,
    betas: tuple[float, float] | None = None,
    capturable: bool = False,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """The recipe's optimizer over `params` (a module's parameters, or a list) that require grads
    (`capturable`: Adam's step count on the device, for a CUDA graph; `fused`: Adam's fused kernel, which
    can also skip an update on the device)."""
    params = [p for p in (params.parameters() if isinstance(params, torch.nn.Module) else params) if p.requires_grad]
    lr = train["lr"] if lr is None else lr
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=train["weight_decay"])
    cls = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    # fused Adam must be capturable too to be captured in a graph (torch refuses the capture otherwise)
    device_step = {"fused": True, "capturable": True} if fused else {"capturable": True} if capturable else {}
    extra: dict[str, Any] = ({"betas": betas} if betas else {}) | device_step
    return cls(params, lr=lr, weight_decay=train["weight_decay"], **extra)


def make_optimizers(
    model: Model, train: dict[str, Any], capturable: bool = False, fused: bool = False
) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per `model.parameter_groups()` (checked: `components.checked_groups`), each at
    `train.group_lr.NAME` or `train.lr`."""
    groups = checked_groups(model, model.parameter_groups())
    unknown = sorted(set(train["group_lr"]) - set(groups))
    if unknown:
        raise RecipeError(
            f"train.group_lr.{unknown[0]}: model {model.recipe['model']['name']!r} has no optimizer "
            f"{unknown[0]!r} (its optimizers: {', '.join(groups)})"
        )
    return {
        name: make_optimizer(group.params, train, train["group_lr"].get(name), group.betas, capturable, fused)
        for name, group in groups.items()
    }


def owns_step(model: Model) -> bool:
    """Whether the family has its own training_step (several optimizers, a step that alternates)."""
    return type(model).training_step is not Model.training_step


def memory_format(model: torch.nn.Module, settings: dict[str, Any]) -> torch.memory_format:
    """channels-last for models with convolutions when train.channels_last is on (measured faster on
    CPU: docs/performance.md), the default layout otherwise."""
    convolutional = any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())
    return torch.channels_last if settings["channels_last"] and convolutional else torch.contiguous_format


def training_net(
    model: Model, device: torch.device, world: distributed.World, settings: dict[str, Any]
) -> torch.nn.Module:
    """What the one-loss step calls: the model in its memory format, in DistributedDataParallel under
    torchrun, compiled with train.compile (the first call compiles; the loop reports that time as
    compile_seconds). A family with its own training_step gets its model as it is (its updates
    average their gradients over ranks themselves)."""
    model.to(memory_format=memory_format(model, settings))
    if owns_step(model):
        if settings["compile"]:
            raise RecipeError(
                f"train.compile: model {model.recipe['model']['name']!r} has its own training_step, which "
                "vaezoo does not compile (remove train.compile)"
            )
        return model
    net = distributed.wrap(model, device, world)
    # torch.compile of a Module gives an OptimizedModule (a Module); torch types its result as a function
    return torch.compile(net) if settings["compile"] else net  # type: ignore[return-value]


class Updater:
    """`update(name, per_image_loss)`: one step of the named optimizer, as the recipe says: the
    batch-mean loss (scaled so that the ranks of torchrun together take the global batch's mean),
    backward (through the gradient scaler under fp16), gradients averaged over ranks for a family's
    own training_step (DDP does it for the one-loss step), clipping at train.grad_clip, skipping at
    train.skip_grad_norm, the optimizer's step."""

    def __init__(self, run: Run, world: distributed.World) -> None:
        self.run, self.world = run, world
        self.sync_gradients = world.enabled and owns_step(run.model)
        self.global_batch = 0  # images in this step over all ranks: set by the loop
        self.batch = 0  # images in this step on this rank: set by the loop
        self.calls = 0  # updates so far (the loop checks that a family's own step makes one)

    def __call__(self, name: str, per_image_loss: Tensor) -> None:
        run, settings = self.run, self.run.recipe["train"]
        optimizer = run.optimizers.get(name)
        if optimizer is None:
            raise PluginError(
                f"model family {run.recipe['model']['name']!r} stepped an optimizer {name!r} it does not "
                f"declare (its optimizers: {', '.join(run.optimizers)})"
            )
        per_image_loss = checked_update(run.model, name, per_image_loss, self.batch)
        self.calls += 1
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            run.device.type, enabled=False
        ):  # backward outside autocast, also when a training_step calls
            run.scaler.scale(distributed.batch_loss(per_image_loss, self.global_batch, self.world)).backward()
        if self.sync_gradients:
            distributed.average_gradients(params)
        clip, skip = settings["grad_clip"], settings["skip_grad_norm"]
        if clip > 0 or skip > 0:
            run.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            if skip > 0 and run.skips_on_device is not None:  # decided on the device: no host sync (CUDA graph)
                skipped = (~(norm < skip)).float()  # a non-finite norm is skipped too
                # Adam's fused kernel reads found_inf as it does from torch's GradScaler: where it is 1 the
                # parameters, moments and step count stay as they were
                optimizer.found_inf = skipped  # type: ignore[attr-defined]  # torch's Optimizer type lacks it
                run.skips_on_device += skipped
            elif skip > 0 and not bool(norm < skip):  # one host sync per step, only when skipping is on
                run.state.skipped += 1
                optimizer.zero_grad(set_to_none=True)
        if not optimizer.defaults.get("capturable"):
            run.scaler.step(optimizer)
            return
        with warnings.catch_warnings():  # a capturable Adam's KL warm-up, warm-up and last batches run eagerly
            warnings.filterwarnings("ignore", message=CAPTURABLE_RUN_EAGERLY)
            run.scaler.step(optimizer)


def optimizer_flags(run: Run) -> tuple[bool, bool]:
    """(capturable, fused) for the run's Adam: capturable when its step will be a CUDA graph, and fused
    too when train.skip_grad_norm is on (the skip is then decided on the device: Updater)."""
    world = distributed.current_world()
    capturable = run.device.type == "cuda" and graph_blocker(run, world, owns_step(run.model)) is None
    return capturable, capturable and run.recipe["train"]["skip_grad_norm"] > 0


def prepare(run: Run, resume_from: Path | None = None) -> None:
    """Optimizer, gradient scaler (a no-op unless fp16), data-order generator and RNGs of a run: new,
    or restored from a state.safetensors (with its metrics history; the recipe's learning rate and
    weight decay take effect)."""
    from vaezoo.files.train_state import load_state

    settings = run.recipe["train"]
    run.schedule = make_schedule(run)
    capturable, fused = optimizer_flags(run)
    run.optimizers = make_optimizers(run.model, settings, capturable, fused)
    run.skips_on_device = torch.zeros((), device=run.device) if fused else None
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision.scale_grads)
    run.data_rng = torch.Generator().manual_seed(settings["seed"])
    if resume_from is None:
        torch.manual_seed(settings["seed"])
        return
    # checked against this run first; the optimizers keep this run's device flags (load_state)
    counters, saved_rng, history = load_state(
        resume_from, run.model, run.optimizers, run.scaler, batches=run.batches_per_epoch
    )
    run.state.load_state_dict(counters)
    try:
        run.data_rng.set_state(saved_rng)
    except RuntimeError:
        raise VaezooError(f"{resume_from} is damaged: its data-order generator state does not restore") from None
    for name, optimizer in run.optimizers.items():  # --lr on resume takes effect (and is what recipe.toml records)
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = (
                settings["group_lr"].get(name, settings["lr"]),
                settings["weight_decay"],
            )
    run.history = history or [
        row for row in _old_history(resume_from.with_name("metrics.jsonl")) if row.get("epoch", 0) <= run.state.epoch
    ]


def make_schedule(run: Run) -> LRSchedule:
    """The run's learning-rate schedule (`train.lr_schedule`), over the whole run's optimizer steps."""
    from vaezoo.plugins.manager import get_registry
    from vaezoo.recipes.build import instantiate

    table = run.recipe["train"]["lr_schedule"]
    steps = {
        "total_steps": run.recipe["train"]["epochs"] * run.batches_per_epoch,
        "steps_per_epoch": run.batches_per_epoch,
    }
    schedule = instantiate(get_registry().get("schedules", table["name"]).load(), table, steps, "train.lr_schedule")
    if not isinstance(schedule, LRSchedule):
        raise PluginError(f"schedule {table['name']!r} does not build a vaezoo.LRSchedule")
    return schedule


def apply_schedule(run: Run) -> None:
    """Set every optimizer's learning rate to its base (train.lr, train.group_lr.NAME) times the
    schedule's factor at this step (only when the factor changes)."""
    settings = run.recipe["train"]
    assert run.schedule is not None, "prepare() builds the schedule"
    try:
        factor = float(run.schedule.factor(run.state.step, run.history))
    except Exception as error:  # a plugin's schedule
        raise PluginError(
            f"schedule {settings['lr_schedule']['name']!r} failed: {type(error).__name__}: {error}"
        ) from error
    if not (math.isfinite(factor) and factor >= 0):
        raise PluginError(
            f"schedule {settings['lr_schedule']['name']!r} gave the factor {factor} at step {run.state.step}"
        )
    if factor == run.lr_factor:
        return
    run.lr_factor = factor
    for name, optimizer in run.optimizers.items():
        for group in optimizer.param_groups:
            group["lr"] = settings["group_lr"].get(name, settings["lr"]) * factor


def early_stop(run: Run) -> str | None:
    """Why the run stops here (train.early_stop_patience epochs without a lower val_loss), or None."""
    patience = run.recipe["train"]["early_stop_patience"]
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

    def __init__(self, run: Run, world: distributed.World, images: int, compiling: bool) -> None:
        self.run, self.world, self.images, self.compiling = run, world, images, compiling
        self.compile_seconds: float | None = None

    def start_epoch(self) -> None:
        state = self.run.state
        self.loss_sum = torch.tensor(
            state.loss_sum if self.world.is_main else 0.0, dtype=torch.float64, device=self.run.device
        )
        self.started = self.rate_from = time.perf_counter()
        self.timed_from = self.first_batch = state.batch
        self.slow_in_epoch = False

    def add(self, parts: LossParts, slow: bool = False) -> None:
        """Count a step (its batch is done); `slow`: it captured a CUDA graph."""
        self.loss_sum += parts.loss.detach().sum()
        if slow or (self.compile_seconds is None and self.compiling):
            self.loss_sum.item()  # wait for the step
            self.rate_from, self.timed_from = time.perf_counter(), self.run.state.batch
            self.compile_seconds, self.slow_in_epoch = self.rate_from - self.started, True

    def _rate(self, seen: int) -> float:
        """Images per second since the slow step (over the whole epoch when no step came after it)."""
        timed = seen - self.timed_from * self.run.recipe["train"]["batch_size"]
        since = self.rate_from if timed > 0 else self.started
        timed = timed if timed > 0 else seen - self.first_batch * self.run.recipe["train"]["batch_size"]
        return timed / max(time.perf_counter() - since, 1e-9)

    def progress(self) -> tuple[float, float]:
        """Mean loss per image so far in the epoch (rank 0's shard) and images per second."""
        seen = min(self.run.state.batch * self.run.recipe["train"]["batch_size"], self.images)
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
        if self.slow_in_epoch and self.compile_seconds is not None:  # set together
            timing["compile_seconds"] = self.compile_seconds
        return {"train_loss": train_loss, **timing}


def make_step(
    run: Run, net: torch.nn.Module, update: Updater, images: int, world: distributed.World
) -> Callable[[Tensor], LossParts]:
    """`step(index)`: one training step at `run.state.step` on the training images at `index`, under the
    run's precision, through the family's own training_step, or the one-loss step through `net` (DDP,
    compile) otherwise; replayed from a CUDA graph where the run allows it (`run.step_mode` says)."""
    model, state, settings = run.model, run.state, run.recipe["train"]
    own_step = model.training_step if owns_step(model) else None
    layout, labels = memory_format(model, settings), run.train_labels if model.conditional else None
    blocker = graph_blocker(run, world, own_step is not None)
    first = True

    def step(index: Tensor) -> LossParts:
        nonlocal first
        x = to_float(run.train_images.index_select(0, index), layout)
        y = None if labels is None else labels.index_select(0, index)
        update.global_batch = min(settings["batch_size"], images - state.batch * settings["batch_size"])
        update.batch, update.calls = len(x), 0
        with blame(run, "a training step"):
            with run.precision.autocast(run.device, cache=blocker is not None):  # no weight cache in a graph
                parts = checked_parts(
                    model, net(x, y, state.step) if own_step is None else own_step(x, y, state.step, update), len(x)
                )
            if own_step is None:
                update("model", parts.loss)
        if first and update.calls == 0:  # a training_step that steps nothing would train nothing, silently
            raise broken_contract(
                model,
                f"its training_step called update() for none of its optimizers ({', '.join(run.optimizers)}) in "
                "the first step, so nothing would train: call update(name, per_image_loss) for each optimizer it steps",
            )
        first = False
        run.scaler.update()
        return parts

    run.step_mode = "CUDA graph" if blocker is None else f"eager ({blocker})"
    if blocker is not None:
        return step
    return GraphStep(run, step, distributed.check_batch_size(settings["batch_size"], world), kl_settled(run))


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
    last = run.recipe["train"]["epochs"] * run.batches_per_epoch
    final = [schedule(last) for schedule in schedules]
    settled = False

    def check() -> bool:
        nonlocal settled
        settled = settled or [schedule(run.state.step) for schedule in schedules] == final
        return settled

    return check


def train(run: Run, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train `run.model` up to the recipe's epochs (prepared here unless `prepare` was called);
    returns the last epoch's metrics."""
    model, settings, state = run.model, run.recipe["train"], run.state
    world = distributed.current_world()  # rank and world size under torchrun; a single process otherwise
    per_rank_batch = distributed.check_batch_size(settings["batch_size"], world)
    if not run.optimizers:
        prepare(run)
    if world.enabled:  # each rank draws its own noise (the data order stays common to all ranks)
        torch.manual_seed(settings["seed"] + (world.rank << 32) + state.step)
    images = distributed.images_per_epoch(len(run.train_images), settings["batch_size"], world)
    step = make_step(run, training_net(model, run.device, world, settings), Updater(run, world), images, world)
    meter = Meter(run, world, images, settings["compile"])
    callbacks = callbacks if world.is_main else ()  # only rank 0 prints and writes
    metrics: dict[str, Any] = run.history[-1] if run.history else {}
    model.train()
    for callback in callbacks:
        callback.on_start(run)
    run.stopped_early = early_stop(run)  # a resumed run that had stopped early stays stopped
    with StopRequest() as stop:
        while state.epoch < settings["epochs"] and run.stopped_early is None:
            epoch_rng = run.data_rng.get_state()
            order = distributed.shard_order(
                torch.randperm(len(run.train_images), generator=run.data_rng), settings["batch_size"], world
            )
            meter.start_epoch()
            for index in order.to(run.device).split(per_rank_batch)[state.batch :]:
                if _stop_requested(stop, world, state.step, run.device):
                    meter.pause()
                    _interrupt(run, callbacks, epoch_rng, stop.signal)
                apply_schedule(run)
                parts = step(index)
                state.step, state.batch = state.step + 1, state.batch + 1
                meter.add(parts, slow=getattr(step, "just_recorded", False))  # a GraphStep that captured
                if state.step % LOG_EVERY == 0:
                    for callback in callbacks:
                        callback.on_step(run, state.batch, *meter.progress())
            _count_skips(run)
            metrics = _end_epoch(run, world, meter.end_epoch())
            for callback in callbacks:
                callback.on_epoch_end(run, metrics)
            run.stopped_early = early_stop(run)
        if not world.enabled and stop.signal is not None and state.epoch < settings["epochs"]:
            _interrupt(run, callbacks, run.data_rng.get_state(), stop.signal)
    for callback in callbacks:
        callback.on_end(run)
    return metrics


def _end_epoch(run: Run, world: distributed.World, training: dict[str, Any]) -> dict[str, Any]:
    """Evaluate on the test split, close the epoch in `run.state` and return its metrics
    (`training`: the Meter's train_loss, seconds, images_per_s and compile_seconds)."""
    settings, state = run.recipe["train"], run.state
    eval_started = time.perf_counter()
    test_shard, label_shard = distributed.shard_split(run.test_images, world), None
    if run.test_labels is not None:
        label_shard = distributed.shard_split(run.test_labels, world)
    with blame(run, "evaluation"):
        test = evaluate(
            run.model, test_shard, label_shard, batch_size=settings["eval_batch_size"], precision=run.precision
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
                run.model, val_shard, val_labels, batch_size=settings["eval_batch_size"], precision=run.precision
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
        **({"skipped_updates": state.skipped} if settings["skip_grad_norm"] > 0 else {}),
        "lr": settings["lr"] * (run.lr_factor if run.lr_factor is not None else 1.0),
        "seconds": training["seconds"],
        "images_per_s": training["images_per_s"],
        "precision": run.precision.name,  # a resume may change it: each epoch records its own
        "eval_seconds": time.perf_counter() - eval_started,
        **({"compile_seconds": training["compile_seconds"]} if "compile_seconds" in training else {}),
    }
    run.history.append(metrics)
    return metrics


@contextlib.contextmanager
def blame(run: Run, what: str) -> Iterator[None]:
    """An error raised inside the model (a plugin's shapes gone wrong) as one line naming the family
    and the plugin distribution that provides it."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        from vaezoo.plugins.kinds import MODEL_PARTS

        family = run.recipe["model"]["name"]
        entry = run.model.registry_entries.get("model")  # recorded by build_model; none for a model built by hand
        source = f"plugin {entry.plugin.name!r} from {entry.plugin.distribution}" if entry else "built by hand"
        parts = ", ".join(f"{key} {run.recipe[key]['name']!r}" for key in MODEL_PARTS if key in run.recipe)
        raise RunFailed(
            f"model {family!r} ({source}{'; ' + parts if parts else ''}) failed in {what}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from error


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


def _count_skips(run: Run) -> None:
    """Add the updates skipped on the device to `run.state.skipped` (one read, at an epoch's end or a stop)."""
    if run.skips_on_device is not None:
        run.state.skipped += int(run.skips_on_device.item())
        run.skips_on_device.zero_()


def _interrupt(run: Run, callbacks: Sequence[Callback], epoch_rng: Tensor, signum: int | None) -> None:
    """Save the state mid-epoch (never non-finite weights) and stop with Interrupted."""
    _count_skips(run)
    _check_weights(run)
    for callback in callbacks:
        callback.on_interrupt(run, epoch_rng)
    name = signal.Signals(signum or signal.SIGTERM).name
    raise Interrupted(
        f"stopped by {name} in epoch {run.epoch + 1} after {run.state.batch} batches; state saved in "
        f"{run.out_dir / 'state.safetensors'}",
        out_dir=run.out_dir,
        recipe=run.recipe["name"],
        epochs=run.recipe["train"]["epochs"],
    )
