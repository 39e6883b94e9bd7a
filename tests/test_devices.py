"""Devices and precision: what `auto` picks, and clear errors for what a device cannot do."""

from __future__ import annotations

import pytest
import torch

from vaezoo import devices
from vaezoo.errors import VaezooError


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
