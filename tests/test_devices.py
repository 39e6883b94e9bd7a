"""Devices and precision: what `auto` picks, and clear errors for what a device cannot do."""

from __future__ import annotations

import json

import pytest
import torch
from tinydata import tiny_cifar  # noqa: F401  (fixture)

from vaezoo.errors import VaezooError
from vaezoo.trainer import devices, graph_step


def test_auto_on_cpu_follows_native_bf16(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.resolve_precision("auto", cpu).name == "fp32"
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.resolve_precision("auto", cpu) == devices.Precision("bf16", torch.bfloat16)


def test_precisions_a_device_cannot_do_are_errors():
    cpu = torch.device("cpu")
    with pytest.raises(VaezooError, match="fp16 needs a CUDA device"):
        devices.resolve_precision("fp16", cpu)
    with pytest.raises(VaezooError, match="unknown precision"):
        devices.resolve_precision("fp8", cpu)


def test_devices():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(VaezooError, match="unknown device"):
        devices.resolve_device("tpu:0:1")
    if not torch.cuda.is_available():
        with pytest.raises(VaezooError, match="CUDA is not available"):
            devices.resolve_device("cuda:0")


def _never(precisions):
    raise AssertionError("no probe expected")


def test_auto_measures_and_keeps_fp32_unless_the_reduced_precision_is_clearly_faster(monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert devices.resolve_precision("auto", cpu, _never, "k").name == "fp32"  # nothing to try: no probe
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    asked = []

    def timer(seconds):
        def measure(precisions):
            asked.append([p.name for p in precisions])
            return seconds

        return measure

    assert devices.resolve_precision("auto", cpu, timer([1.0, 0.95]), "a").name == "fp32"  # within noise: fp32
    assert devices.resolve_precision("auto", cpu, timer([1.0, 0.5]), "b").name == "bf16"
    assert devices.resolve_precision("auto", cpu, timer([1.0, 2.0]), "c").name == "fp32"
    assert asked == [["fp32", "bf16"]] * 3
    assert devices.resolve_precision("auto", cpu, _never, "b").name == "bf16"  # cached per device and key
    assert devices.resolve_precision("auto", cpu, _never, "a").name == "fp32"


def test_the_probe_leaves_the_run_as_it_was(tiny_cifar, tmp_path, monkeypatch):
    """`fit` with auto trains exactly as with the precision it chose: the probe's steps change no
    weight, buffer or random generator."""
    from safetensors.torch import load_file
    from tinydata import fit_tiny

    monkeypatch.setenv("VAEZOO_CACHE_DIR", str(tmp_path / "cache"))
    auto = fit_tiny(tiny_cifar, tmp_path / "auto", precision="auto")
    cached = tmp_path / "cache" / "precision.json"
    chosen = json.loads(cached.read_text()) if cached.exists() else {}
    assert (list(chosen.values()) in (["fp32"], ["bf16"])) if devices.cpu_has_native_bf16() else (chosen == {})
    explicit = fit_tiny(tiny_cifar, tmp_path / "explicit", precision=_trained_precision(tmp_path / "auto"))
    ours, theirs = (
        load_file(tmp_path / "auto" / "model.safetensors"),
        load_file(tmp_path / "explicit" / "model.safetensors"),
    )
    assert (
        all(torch.equal(ours[k], theirs[k]) for k in ours)
        and explicit.metrics["test_loss"] == auto.metrics["test_loss"]
    )


def _trained_precision(run_dir):
    from safetensors import safe_open

    with safe_open(str(run_dir / "model.safetensors"), "pt") as handle:
        return json.loads(handle.metadata()["vaezoo.training"])["precision"]


def _small_vae():
    from vaezoo.recipes.build import build_model
    from vaezoo.recipes.resolve import resolve_recipe

    torch.manual_seed(0)
    return build_model(resolve_recipe("cifar-vae", ["encoder.hidden=[8]", "decoder.hidden=[8]"]), (3, 32, 32))


@pytest.mark.parametrize(("refused", "timed_as_graphs"), [(set(), {"fp32", "bf16"}), ({"bf16"}, set())])
def test_the_probe_times_graphs_only_where_every_precision_is_captured(monkeypatch, refused, timed_as_graphs):
    """Captured precisions are timed by replays; where one is refused, all are timed eagerly, alike."""
    model, x = _small_vae(), torch.rand(4, 3, 32, 32)
    replayed: list[str] = []

    def fake_replay(model, step, precision, device, graphs):  # what capture_step gives on CUDA
        if precision.name in refused:
            return None
        return lambda: replayed.append(precision.name) or step(precision, cache=False)

    monkeypatch.setattr(graph_step, "_replay", fake_replay)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    precisions = [devices.resolve_precision(name, torch.device("cpu")) for name in ("fp32", "bf16")]
    seconds = graph_step.time_steps(model, x, None, torch.device("cpu"), rounds=2, captured=lambda p: True)(precisions)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert set(replayed) == timed_as_graphs
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
