"""The training step, the one object the loop calls: `step(index) -> LossParts` trains on the training images
at `index`. Behind it: the family's own training_step or the one-loss step (in DistributedDataParallel under
torchrun, compiled with train.compile), the optimizers and their `Updater`, and the CUDA graph that replays
the step where the run allows it (vaezoo.trainer.graph_step)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vaezoo.components import (
    LossParts,
    Model,
    broken_contract,
    checked_groups,
    checked_parts,
    checked_update,
)
from vaezoo.data import to_float
from vaezoo.errors import PluginError, RecipeError
from vaezoo.trainer import devices, distributed, graph_step
from vaezoo.trainer.devices import Precision
from vaezoo.trainer.run import Run, blame
from vaezoo.trainer.settings import TrainSettings


def make_optimizer(
    params: Any,
    settings: TrainSettings,
    lr: float | None = None,
    betas: tuple[float, float] | None = None,
    capturable: bool = False,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """The recipe's optimizer over `params` (a module's parameters, or a list) that require grads
    (`capturable`: Adam's step count on the device, for a CUDA graph; `fused`: Adam's fused kernel, which
    can also skip an update on the device)."""
    params = [p for p in (params.parameters() if isinstance(params, torch.nn.Module) else params) if p.requires_grad]
    lr = settings.lr if lr is None else lr
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=settings.weight_decay)
    cls = torch.optim.AdamW if settings.optimizer == "adamw" else torch.optim.Adam
    # fused Adam must be capturable too to be captured in a graph (torch refuses the capture otherwise)
    device_step = {"fused": True, "capturable": True} if fused else {"capturable": True} if capturable else {}
    extra: dict[str, Any] = ({"betas": betas} if betas else {}) | device_step
    return cls(params, lr=lr, weight_decay=settings.weight_decay, **extra)


def make_optimizers(
    model: Model, settings: TrainSettings, capturable: bool = False, fused: bool = False
) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per `model.parameter_groups()` (checked: `components.checked_groups`), each at
    `train.group_lr.NAME` or `train.lr`."""
    groups = checked_groups(model, model.parameter_groups())
    unknown = sorted(set(settings.group_lr) - set(groups))
    if unknown:
        raise RecipeError(
            f"train.group_lr.{unknown[0]}: model {model.recipe['model']['name']!r} has no optimizer "
            f"{unknown[0]!r} (its optimizers: {', '.join(groups)})"
        )
    return {
        name: make_optimizer(group.params, settings, settings.group_lr.get(name), group.betas, capturable, fused)
        for name, group in groups.items()
    }


def run_optimizers(run: Run) -> dict[str, torch.optim.Optimizer]:
    """The run's optimizers, with the device flags its step wants (`graph_step.optimizer_flags`)."""
    flags = graph_step.optimizer_flags(run, distributed.current_world(), owns_step(run.model))
    return make_optimizers(run.model, run.settings, *flags)


def owns_step(model: Model) -> bool:
    """Whether the family has its own training_step (several optimizers, a step that alternates)."""
    return type(model).training_step is not Model.training_step


def memory_format(model: torch.nn.Module, channels_last: bool) -> torch.memory_format:
    """channels-last for models with convolutions when train.channels_last is on (measured faster on
    CPU: docs/performance.md), the default layout otherwise."""
    convolutional = any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in model.modules())
    return torch.channels_last if channels_last and convolutional else torch.contiguous_format


def training_net(
    model: Model, device: torch.device, world: distributed.World, settings: TrainSettings
) -> torch.nn.Module:
    """What the one-loss step calls: the model in its memory format, in DistributedDataParallel under
    torchrun, compiled with train.compile (the first call compiles; the loop reports that time as
    compile_seconds). A family with its own training_step gets its model as it is (its updates
    average their gradients over ranks themselves)."""
    model.to(memory_format=memory_format(model, settings.channels_last))
    if owns_step(model):
        if settings.compile:
            raise RecipeError(
                f"train.compile: model {model.recipe['model']['name']!r} has its own training_step, which "
                "vaezoo does not compile (remove train.compile)"
            )
        return model
    net = distributed.wrap(model, device, world)
    return torch.compile(net) if settings.compile else net  # type: ignore[return-value]  # compile keeps a Module


class Updater:
    """`update(name, per_image_loss)`: one step of the named optimizer, as the recipe says: the
    batch-mean loss (scaled so that the ranks of torchrun together take the global batch's mean),
    backward (through the gradient scaler under fp16), gradients averaged over ranks for a family's
    own training_step (DDP does it for the one-loss step), clipping at train.grad_clip, skipping at
    train.skip_grad_norm (on the device where the optimizers are fused: `skips`), the optimizer's step."""

    def __init__(self, run: Run, world: distributed.World) -> None:
        self.run, self.world = run, world
        self.sync_gradients = world.enabled and owns_step(run.model)
        fused = all(optimizer.defaults.get("fused") for optimizer in run.optimizers.values())
        self.skips = graph_step.DeviceSkips(run.device) if fused and run.settings.skip_grad_norm > 0 else None
        self.global_batch = 0  # images in this step over all ranks: set by the step
        self.batch = 0  # images in this step on this rank: set by the step
        self.calls = 0  # updates so far (the step checks that a family's own step makes one)

    def __call__(self, name: str, per_image_loss: Tensor) -> None:
        run = self.run
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
        clip, skip = run.settings.grad_clip, run.settings.skip_grad_norm
        if clip > 0 or skip > 0:
            run.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf)
            if skip > 0 and self.skips is not None:  # decided on the device: no host sync (CUDA graph)
                self.skips.decide(optimizer, norm < skip)
            elif skip > 0 and not bool(norm < skip):  # one host sync per step, only when skipping is on
                run.state.skipped += 1
                optimizer.zero_grad(set_to_none=True)
        graph_step.step_optimizer(run.scaler, optimizer)


class Step:
    """`step(index) -> LossParts`: one training step at `run.state.step` on the training images at `index`,
    under the run's precision, through the family's own training_step, or the one-loss step through the
    training net (DDP, compile) otherwise; replayed from a CUDA graph where the run allows it (`run.step_mode`
    says which, and why not). `slow`: the last call compiled or captured (the loop times it apart);
    `settle()` adds to `run.state` what the step counts on the device (updates skipped there)."""

    def __init__(self, run: Run, world: distributed.World) -> None:
        settings = run.settings
        self.run, self.own_step = run, run.model.training_step if owns_step(run.model) else None
        self.net = training_net(run.model, run.device, world, settings)
        self.update = Updater(run, world)
        self.layout = memory_format(run.model, settings.channels_last)
        self.labels = run.train_labels if run.model.conditional else None
        self.images = distributed.images_per_epoch(len(run.train_images), settings.batch_size, world)
        self.compiling, self.first, self.slow = settings.compile, True, False
        blocker = graph_step.graph_blocker(run, world, self.own_step is not None)
        self.cache = blocker is not None  # autocast's weight cache, never in a graph
        run.step_mode = "CUDA graph" if blocker is None else f"eager ({blocker})"
        self.call = self.eager
        if blocker is None:
            batch = distributed.check_batch_size(settings.batch_size, world)
            self.call = graph_step.GraphStep(run, self.eager, batch, graph_step.kl_settled(run), self.update.skips)

    def __call__(self, index: Tensor) -> LossParts:
        compiled = self.compiling and self.first
        parts = self.call(index)
        self.slow = compiled or getattr(self.call, "just_recorded", False)  # a GraphStep that captured
        return parts

    def eager(self, index: Tensor) -> LossParts:
        """The step as it runs without a graph."""
        run, update, model, state = self.run, self.update, self.run.model, self.run.state
        batch_size = run.settings.batch_size
        x = to_float(run.train_images.index_select(0, index), self.layout)
        y = None if self.labels is None else self.labels.index_select(0, index)
        update.global_batch = min(batch_size, self.images - state.batch * batch_size)
        update.batch, update.calls = len(x), 0
        with blame(run, "a training step"):
            with run.precision.autocast(run.device, cache=self.cache):
                out = self.net(x, y, state.step) if self.own_step is None else self.own_step(x, y, state.step, update)
                parts = checked_parts(model, out, len(x))
            if self.own_step is None:
                update("model", parts.loss)
        if self.first and update.calls == 0:  # a training_step that steps nothing would train nothing, silently
            raise broken_contract(
                model,
                f"its training_step called update() for none of its optimizers ({', '.join(run.optimizers)}) in "
                "the first step, so nothing would train: call update(name, per_image_loss) for each optimizer it steps",
            )
        self.first = False
        run.scaler.update()
        return parts

    def settle(self) -> None:
        """Add the updates skipped on the device to `run.state.skipped` (one read: an epoch's end, a stop)."""
        if self.update.skips is not None:
            self.run.state.skipped += self.update.skips.take()


def measured_precision(run: Run) -> Precision:
    """`--precision auto` for this run's model: fp32 or the device's reduced precision, whichever a short
    timed probe of a training step on a real batch finds faster (vaezoo.trainer.devices.auto_precision),
    each timed as a CUDA graph where the run would capture its step at that precision. The probe takes
    the global batch, as a single process would: the choice does not depend on --nproc."""
    model, recipe, device, settings = run.model, run.recipe, run.device, run.settings
    layout = memory_format(model, settings.channels_last)
    model.to(memory_format=layout)
    n = max(1, min(settings.batch_size, len(run.train_images)))
    x = to_float(run.train_images[:n], layout)
    y = run.train_labels[:n] if model.conditional and run.train_labels is not None else None
    shape = {key: value for key, value in recipe.items() if key not in ("name", "summary", "train")}
    graph = [settings.cuda_graph, settings.compile] if device.type == "cuda" else []
    key = hashlib.sha256(
        json.dumps([shape, settings.batch_size, settings.channels_last, *graph], sort_keys=True).encode()
    ).hexdigest()[:16]

    def replay(precision: Precision, step: Callable[[], None]) -> Callable[[], None] | None:
        if graph_step.graph_blocker(run, distributed.World(), owns_step(model), precision) is not None:
            return None
        return graph_step.replay_of(step, device, lambda: model.zero_grad(set_to_none=True))

    return devices.resolve_precision("auto", device, devices.time_steps(model, x, y, device, replay=replay), key)
