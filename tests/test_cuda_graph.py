"""The training step replayed from a CUDA graph (vaezoo/trainer/graph_step.py).

On the CPU these tests run the graph step's own logic without a graph (`GraphStep(capture=False)`: the
static index buffer, the warm-up steps and the putting back of weights, optimizer state and random
generators, eager last batches, a KL warm-up left eager until it settles) and require the very same
numbers as the eager loop, bit for bit. The tests that capture a real graph need CUDA and are skipped
without it (these machines have none)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from tinydata import fit_tiny

from vaezoo import LossParts, Model
from vaezoo.errors import RecipeError
from vaezoo.recipes.resolve import resolve_recipe
from vaezoo.testing import check_graph_safe
from vaezoo.trainer import loop
from vaezoo.trainer.devices import Precision
from vaezoo.trainer.distributed import World
from vaezoo.trainer.graph_step import GraphStep, graph_blocker
from vaezoo_defaults.schedules.schedules import Constant, Cosine

REAL = {"limit": 200, "test_limit": 100}  # 200 images in batches of 16: 12 full batches and one of 8


class Recording(GraphStep):
    """A GraphStep without a graph that notes at which steps it recorded."""

    recorded_at: list[int] = []

    def _record(self, index: torch.Tensor) -> None:
        Recording.recorded_at.append(self.run.state.step)
        super()._record(index)


def emulate_graphs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From here on every run takes the graph step (as if on CUDA), which runs its static steps without a
    graph; returns the list of steps at which it recorded."""
    Recording.recorded_at = []
    monkeypatch.setattr(loop, "graph_blocker", lambda run, world, own_step: None)
    monkeypatch.setattr(loop, "GraphStep", functools.partial(Recording, capture=False))
    return Recording.recorded_at


def _epochs(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _captured(run: Path) -> bool:
    """Whether the run captured its step (the epoch of the capture times it apart as compile_seconds)."""
    return any("compile_seconds" in epoch for epoch in _epochs(run))


def _same_run(eager: Path, graphed: Path) -> None:
    for name in ("model.safetensors", "state.safetensors"):
        a, b = load_file(eager / name), load_file(graphed / name)
        assert a.keys() == b.keys()
        different = [key for key in a if not torch.equal(a[key], b[key])]
        assert not different, f"{name}: {different[:5]}"


def test_the_graph_steps_take_the_same_steps_as_the_eager_loop(
    cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eager = fit_tiny(cifar, tmp_path / "eager", 2, **REAL)
    recorded_at = emulate_graphs(monkeypatch)
    graphed = fit_tiny(cifar, tmp_path / "graph", 2, **REAL)
    assert recorded_at == [0]  # recorded once, at the first full batch; the last batch of 8 ran eagerly
    first = _epochs(tmp_path / "graph")[0]
    assert 0 < first["compile_seconds"] <= first["seconds"]  # the capture's step is timed apart, inside the epoch
    assert not _captured(tmp_path / "eager") and "compile_seconds" not in _epochs(tmp_path / "graph")[1]
    assert graphed.metrics["train_loss"] == eager.metrics["train_loss"]
    assert graphed.metrics["test_loss"] == eager.metrics["test_loss"]
    _same_run(tmp_path / "eager", tmp_path / "graph")


def test_a_kl_warm_up_stays_eager_until_its_weight_settles(
    cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warm_up = ['loss={name="beta-kl", beta=1.0, warmup_steps=17}']
    eager = fit_tiny(cifar, tmp_path / "eager", 2, sets=warm_up, **REAL)
    recorded_at = emulate_graphs(monkeypatch)
    graphed = fit_tiny(cifar, tmp_path / "graph", 2, sets=warm_up, **REAL)
    assert recorded_at == [17]  # the first full batch at the settled weight
    assert graphed.metrics["train_loss"] == eager.metrics["train_loss"]
    _same_run(tmp_path / "eager", tmp_path / "graph")


def test_a_resumed_graph_run_continues_exactly(cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emulate_graphs(monkeypatch)
    whole = fit_tiny(cifar, tmp_path / "whole", 2, **REAL)
    fit_tiny(cifar, tmp_path / "parts", 1, **REAL)
    resumed = fit_tiny(cifar, tmp_path / "parts", 2, resume=tmp_path / "parts", **REAL)
    assert resumed.metrics["train_loss"] == whole.metrics["train_loss"]
    _same_run(tmp_path / "whole", tmp_path / "parts")


def test_skipped_updates_decided_on_the_device_are_the_host_s(
    cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.skip_grad_norm in a graph: Adam's fused kernel skips where the norm says so, without a host
    read; the same updates are skipped as by the eager loop's host check, and the run trains alike."""
    skip = ["train.skip_grad_norm=100"]  # gradient norms here run from about 30 to 190
    host = fit_tiny(cifar, tmp_path / "host", 2, sets=skip, **REAL)
    monkeypatch.setattr(loop, "optimizer_flags", lambda run: (True, True))  # what prepare chooses on CUDA
    emulate_graphs(monkeypatch)
    device = fit_tiny(cifar, tmp_path / "device", 2, sets=skip, **REAL)
    assert 0 < host.metrics["skipped_updates"] < host.metrics["step"]
    assert device.metrics["skipped_updates"] == host.metrics["skipped_updates"]
    assert device.metrics["train_loss"] == pytest.approx(host.metrics["train_loss"], rel=1e-4)  # fused vs foreach


def test_a_resume_keeps_its_own_optimizer_flags(cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch restores a saved optimizer's flags with its state: a run resumed where its step is captured
    and skips on the device (fused + capturable Adam) from a state saved eagerly, and back, takes this
    run's flags, with Adam's step counts where they want them (a saved plain Adam made the device skip
    fail: found_inf given to a non-fused Adam)."""
    skip = ["train.skip_grad_norm=100"]
    prepared: list[dict] = []
    prepare = loop.prepare

    def recording(run: loop.Run, resume_from: Path | None = None) -> None:
        prepare(run, resume_from)
        (group,) = run.optimizers["model"].param_groups
        steps = {state["step"].device.type for state in run.optimizers["model"].state.values()}
        prepared.append({"capturable": group["capturable"], "fused": bool(group["fused"]), "steps": steps})

    monkeypatch.setattr(loop, "prepare", recording)
    fit_tiny(cifar, tmp_path / "run", 1, sets=skip, **REAL)
    with monkeypatch.context() as on_cuda:
        on_cuda.setattr(loop, "optimizer_flags", lambda run: (True, True))
        emulate_graphs(on_cuda)
        device = fit_tiny(cifar, tmp_path / "run", 2, sets=skip, resume=tmp_path / "run", **REAL)
    plain = fit_tiny(cifar, tmp_path / "run", 3, sets=skip, resume=tmp_path / "run", **REAL)
    assert prepared[1] == {"capturable": True, "fused": True, "steps": {"cpu"}}  # the parameters' device
    assert prepared[2] == {"capturable": False, "fused": False, "steps": {"cpu"}}
    assert device.metrics["step"] == 26 and plain.metrics["step"] == 39


def _blocker(**change) -> str | None:
    settings = {
        "cuda_graph": True,
        "compile": False,
        "skip_grad_norm": 0.0,
        "optimizer": "adam",
        **change.pop("train", {}),
    }
    run = SimpleNamespace(
        recipe={"train": settings, "model": {"name": "fam"}},
        device=torch.device(change.pop("device", "cuda")),
        model=SimpleNamespace(cuda_graph=change.pop("cuda_graph", True)),
        precision=change.pop("precision", Precision("bf16", torch.bfloat16)),
        schedule=change.pop("schedule", None),
    )
    return graph_blocker(run, change.pop("world", World()), change.pop("own_step", False))


def test_what_keeps_a_run_eager_is_named() -> None:
    assert _blocker() is None
    assert _blocker(device="cpu") == "the device is cpu, not CUDA"
    assert _blocker(train={"cuda_graph": False}) == "train.cuda_graph is false"
    assert _blocker(cuda_graph=False) == "model family 'fam' does not declare cuda_graph = True"
    assert _blocker(own_step=True) == "model family 'fam' has its own training_step"
    assert "torchrun" in _blocker(world=World(0, 2, 0))
    assert "gradient scaler" in _blocker(precision=Precision("fp16", torch.float16, scale_grads=True))
    assert "train.compile" in _blocker(train={"compile": True})
    assert _blocker(train={"skip_grad_norm": 100.0}) is None  # adam skips on the device
    assert "train.skip_grad_norm with sgd" in _blocker(train={"skip_grad_norm": 100.0, "optimizer": "sgd"})
    steps = {"total_steps": 100, "steps_per_epoch": 10}
    assert _blocker(schedule=Cosine(**steps)) == "train.lr_schedule changes the learning rate during the run"
    assert _blocker(schedule=Constant(**steps)) is None


def test_cuda_launch_blocking_keeps_the_step_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "1")
    assert "CUDA_LAUNCH_BLOCKING" in _blocker()
    monkeypatch.setenv("CUDA_LAUNCH_BLOCKING", "0")
    assert _blocker() is None


def test_train_cuda_graph_is_a_boolean_setting() -> None:
    assert resolve_recipe("cifar-vae")["train"]["cuda_graph"] is True
    assert resolve_recipe("cifar-vae", ["train.cuda_graph=false"])["train"]["cuda_graph"] is False
    with pytest.raises(RecipeError, match="train.cuda_graph"):
        resolve_recipe("cifar-vae", ["train.cuda_graph='yes'"])


# ---- on a CUDA GPU ----------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN's deterministic algorithms: two CUDA runs compared bit for bit must not differ by the order of
    atomic additions in a convolution's backward pass."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def _fit_cuda(cifar: Path, out: Path, epochs: int, graph: bool, resume: Path | None = None, precision: str = "fp32"):
    from tinydata import TINY_SETS

    import vaezoo

    options = {"train.epochs": epochs, "train.precision": precision, **{f"train.{k}": v for k, v in REAL.items()}}
    return vaezoo.fit(
        "cifar-vae",
        sets=[*TINY_SETS, f"train.cuda_graph={str(graph).lower()}"],
        options=options,
        out=out,
        data_dir=cifar,
        device="cuda",
        resume=resume,
    )


@pytest.mark.cuda
@needs_cuda
def test_on_cuda_the_captured_step_matches_the_eager_step(cifar: Path, tmp_path: Path) -> None:
    eager = _fit_cuda(cifar, tmp_path / "eager", 2, graph=False)
    graphed = _fit_cuda(cifar, tmp_path / "graph", 2, graph=True)
    assert _captured(tmp_path / "graph") and not _captured(tmp_path / "eager")
    assert graphed.metrics["train_loss"] == pytest.approx(eager.metrics["train_loss"], rel=1e-4)
    assert graphed.metrics["test_loss"] == pytest.approx(eager.metrics["test_loss"], rel=1e-4)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.usefixtures("deterministic")
def test_on_cuda_a_resumed_captured_run_continues_exactly(cifar: Path, tmp_path: Path) -> None:
    whole = _fit_cuda(cifar, tmp_path / "whole", 2, graph=True)
    _fit_cuda(cifar, tmp_path / "parts", 1, graph=True)
    assert _captured(tmp_path / "whole") and _captured(tmp_path / "parts")
    resumed = _fit_cuda(cifar, tmp_path / "parts", 2, graph=True, resume=tmp_path / "parts")
    assert resumed.metrics["train_loss"] == whole.metrics["train_loss"]
    _same_run(tmp_path / "whole", tmp_path / "parts")


@pytest.mark.cuda
@needs_cuda
@pytest.mark.usefixtures("deterministic")
def test_on_cuda_the_precision_probe_times_captured_steps_and_changes_nothing(
    cifar: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from vaezoo.trainer import graph_step

    timed: list[bool] = []
    real = graph_step._replay
    monkeypatch.setattr(graph_step, "_replay", lambda *args: timed.append(True) or real(*args))
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    auto = _fit_cuda(cifar, tmp_path / "auto", 1, graph=True, precision="auto")
    assert timed == [True, True]  # fp32 and bf16 each timed as a graph (fp16 would stay eager)
    (chosen,) = json.loads((tmp_path / "cache" / "precision.json").read_text()).values()
    explicit = _fit_cuda(cifar, tmp_path / "explicit", 1, graph=True, precision=chosen)
    assert _captured(tmp_path / "auto") and _captured(tmp_path / "explicit")
    assert auto.metrics["test_loss"] == explicit.metrics["test_loss"]
    _same_run(tmp_path / "auto", tmp_path / "explicit")


@pytest.mark.cuda
@needs_cuda
def test_on_cuda_a_step_that_waits_for_the_host_is_refused_before_any_capture() -> None:
    from vaezoo.trainer import graph_step

    cuda, x = torch.device("cuda"), torch.ones(4, device="cuda")
    with pytest.raises(graph_step.CaptureFailed, match="the step waits for the host"):
        graph_step.capture_step(lambda: (x * 2).sum().item(), cuda, lambda: None)
    # refused in the warm-up (CaptureFailed, not the RunFailed of a failed capture): capturing goes on
    graph, total = graph_step.capture_step(lambda: (x * 2).sum(), cuda, lambda: None)
    x.fill_(3.0)
    graph.replay()
    assert total.item() == 24.0


class _Reads(Model):
    """A family that declares cuda_graph = True but reads a value back to the host in training."""

    cuda_graph = True

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.w = how, torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor, y=None, step=None) -> LossParts:
        per_image = (x.flatten(1) * self.w).sum(1)
        if self.how == "item" and per_image.mean().item() > 0:
            per_image = per_image * 1.0
        if self.how == "if" and per_image.mean() > 0:
            per_image = per_image * 1.0
        if self.how == "mask":
            per_image = per_image + per_image[per_image > 0].sum()
        if self.how == "copy":
            per_image = per_image + per_image.new_tensor(2.0)  # a blocking copy from the host on CUDA
        if self.how == "step" and step is not None:
            per_image = per_image * (1 + step % 2)  # a schedule of its own, not through kl_weight
        return LossParts(per_image, per_image, per_image * 0)


@pytest.mark.parametrize(
    ("how", "read"),
    [
        ("item", "item at"),
        ("if", "__bool__ at"),
        ("mask", "__getitem__ at"),
        ("copy", "new_tensor at"),
        ("step", "changes with the step count"),
    ],
)
def test_a_family_that_reads_on_the_host_fails_its_cuda_graph_declaration(how: str, read: str) -> None:
    with pytest.raises(AssertionError, match=f"_Reads declares cuda_graph = True .*{read}"):
        check_graph_safe(_Reads(how), torch.rand(2, 3, 4, 4))
    check_graph_safe(_Reads("none"), torch.rand(2, 3, 4, 4))  # the same family without the read passes
