"""Devices and numeric precision: `auto|cpu|cuda|cuda:N|mps` and `auto|fp32|bf16|fp16`."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from vaezoo.errors import VaezooError


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a `--device` value; auto picks cuda, then mps, then cpu."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaezooError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VaezooError(f"device {name!r} asked for but CUDA is not available here: use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VaezooError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise VaezooError("device 'mps' asked for but Apple MPS is not available here: use --device cpu or auto")
    elif device.type != "cpu":
        raise VaezooError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


@dataclass(frozen=True)
class Precision:
    """How to run forward passes: an autocast dtype (None for fp32) and whether grads need scaling."""

    name: str
    dtype: torch.dtype | None
    scale_grads: bool = False

    def autocast(self, device: torch.device):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


@cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 instructions (x86 AVX512-BF16 or AMX, Arm BF16), read from Linux's
    /proc/cpuinfo; False where that cannot be read."""
    try:
        words = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def auto_precision(device: torch.device) -> str:
    """The fastest precision whose test loss stays within 1% of fp32 (bench/precision.py,
    docs/performance.md): bf16 on CUDA (fp16 where bf16 is missing), bf16 on a CPU with native bf16
    instructions (without them bf16 autocast measured 15x slower than fp32), fp32 elsewhere."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The precision for a `--precision` value on `device`; errors where the device cannot do it."""
    if name == "auto":
        name = auto_precision(device)
    if name == "fp32":
        return Precision("fp32", None)
    if name == "bf16":
        if device.type == "mps":
            raise VaezooError("bf16 autocast is not supported on mps by vaezoo: use --precision fp32")
        return Precision("bf16", torch.bfloat16)
    if name == "fp16":
        if device.type != "cuda":
            raise VaezooError(f"fp16 needs a CUDA device (gradient scaling), not {device.type}: use bf16 or fp32")
        return Precision("fp16", torch.float16, scale_grads=True)
    raise VaezooError(f"unknown precision {name!r}: use auto, fp32, bf16 or fp16")
