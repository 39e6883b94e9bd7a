"""Devices and numeric precision: `auto|cpu|cuda|cuda:N|mps` and `auto|fp32|bf16|fp16`."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import torch

from vaezoo.components import checked_parts
from vaezoo.errors import VaezooError, printable
from vaezoo.files.atomic import read_regular_bytes, write_text_atomic


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a `--device` value; auto picks cuda, then mps, then cpu."""
    name = name.strip().lower()
    if not name:
        raise VaezooError("--device is empty: use auto, cpu, cuda, cuda:N or mps")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise VaezooError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise VaezooError(f"device {name!r} asked for but CUDA is not available here: use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise VaezooError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise VaezooError("device 'mps' asked for but Apple MPS is not available here: use --device cpu or auto")
    elif device.type != "cpu":
        raise VaezooError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return device


def start_cuda(device: torch.device) -> None:
    """Make CUDA's context and cuBLAS's handle on `device` in a background thread (about a second on
    a large GPU), so that they overlap whatever the caller does next (loading the data). Errors are
    left to the caller's first use of the device, which reports them."""

    def start() -> None:
        with contextlib.suppress(Exception):
            torch.ones(2, 2, device=device).matmul(torch.ones(2, 2, device=device))

    if device.type == "cuda":
        threading.Thread(target=start, name="vaezoo-cuda-start", daemon=True).start()


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """CUDA's current device is `device` inside (its streams and graphs on `cuda:N` too); nothing changes
    for another device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def resolve_threads(setting: int | str) -> int:
    """The CPU threads for `train.threads`: N as given; `auto` takes OMP_NUM_THREADS where it is set to
    a positive number (torchrun sets 1 per worker), else half the CPUs this process may use, at least
    one: on a shared or busy machine a thread per CPU measured up to 30x slower (docs/performance.md)."""
    if setting != "auto":
        return int(setting)
    with contextlib.suppress(ValueError):
        omp = int(os.environ.get("OMP_NUM_THREADS", ""))
        from vaezoo.recipes.resolve import MAX_THREADS  # as train.threads allows

        if omp > MAX_THREADS:  # torch.set_num_threads(10**8) crashes the process
            raise VaezooError(f"OMP_NUM_THREADS={omp} is more than {MAX_THREADS} threads: set it lower, or --threads N")
        if omp > 0:
            return omp
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // 2)


@dataclass(frozen=True)
class Precision:
    """How to run forward passes: an autocast dtype (None for fp32) and whether grads need scaling."""

    name: str
    dtype: torch.dtype | None
    scale_grads: bool = False

    def autocast(self, device: torch.device, cache: bool = True):
        """Autocast to this precision on `device` (`cache=False` inside a CUDA graph capture, which
        must not keep autocast's cast weights between steps)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype, cache_enabled=cache)


@cache
def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 instructions (x86 AVX512-BF16 or AMX, Arm BF16), read from Linux's
    /proc/cpuinfo; False where that cannot be read."""
    try:
        words = set(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def _candidate(device: torch.device) -> str:
    """The reduced precision worth trying on `device`, or fp32 where none is: bf16 on CUDA (fp16 where
    bf16 is missing) and on a CPU with native bf16 instructions (without them bf16 autocast measured
    15x slower than fp32); mps has none."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def device_name(device: torch.device) -> str:
    """What the precision choice depends on: the GPU's name, or the CPU's model. Not the thread count
    nor the number of processes: a choice holds for any `--threads` and `--nproc` on the machine."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    return device.type


StepTimer = Callable[[list["Precision"]], list[float]]
# replay(precision, step): `step` captured as a CUDA graph where the run's step at `precision` would be one,
# returned as its replay; None where it would not be, or the capture is refused
Replay = Callable[["Precision", Callable[[], None]], Callable[[], None] | None]
FASTER = 0.9  # a reduced precision is chosen only when its step takes under 90% of fp32's
CACHE_BYTES = 64 * 1024  # precision.json: a larger one is not vaezoo's and is ignored
CACHE_ENTRIES = 200  # the most recent choices kept in precision.json
CHOICES = ("fp32", "bf16", "fp16")


def _warn(message: str) -> None:
    print(printable(f"vaezoo: warning: {message}"), file=sys.stderr)


def _cached_choices(cache_file: Path) -> dict[str, str]:
    """The choices in precision.json (entry -> precision). A cache that is not a regular file (a
    symbolic link to anywhere, a FIFO...), is larger than CACHE_BYTES, or is not a JSON object of
    precisions is ignored with a warning: a cache may save a probe, never decide a run."""
    try:
        data = read_regular_bytes(cache_file, CACHE_BYTES)
        cached = json.loads(data) if data is not None else {}
    except VaezooError as error:
        _warn(f"the precision cache is ignored: {error}")
        return {}
    except (ValueError, RecursionError):  # not UTF-8 or not JSON
        cached = None
    if not (isinstance(cached, dict) and all(value in CHOICES for value in cached.values())):
        _warn(f"the precision cache {cache_file} is ignored: it is not a JSON object of precisions (it is rewritten)")
        return {}
    return cached


def auto_precision(device: torch.device, timer: StepTimer | None = None, key: str | None = None) -> str:
    """`--precision auto`: fp32 unless the device has a reduced precision worth trying (`_candidate`).
    With a `timer` (seconds per training step of the run's model for each precision given), that
    precision is chosen only if it measures clearly faster than fp32; the choice is cached per device
    model and `key` (the model and global batch) in precision.json, to spare the next run the probe. A
    run resolves auto once and keeps its choice (recipe.toml records it): the cache never changes a
    run that has started."""
    candidate = _candidate(device)
    if candidate == "fp32" or timer is None:
        return candidate
    from vaezoo.data import cache_dir

    cache_file = cache_dir() / "precision.json"
    entry = f"{device_name(device)} | torch {torch.__version__} | {key}"
    cached = _cached_choices(cache_file)
    if cached.get(entry) in ("fp32", candidate):
        return cached[entry]
    fp32_seconds, candidate_seconds = timer([resolve_precision("fp32", device), resolve_precision(candidate, device)])
    choice = candidate if candidate_seconds < FASTER * fp32_seconds else "fp32"
    kept = [item for item in cached.items() if item[0] != entry][-(CACHE_ENTRIES - 1) :]
    with contextlib.suppress(OSError, VaezooError):  # a cache that cannot be written costs a probe next time
        write_text_atomic(cache_file, json.dumps({**dict(kept), entry: choice}, indent=1))
    return choice


def time_steps(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    device: torch.device,
    rounds: int = 5,
    replay: Replay | None = None,
) -> StepTimer:
    """A StepTimer for `model` on the batch `x` (forward and backward, the optimizer left out): the
    precisions take turns, after one warm-up step each, and each gets its fastest step (the least
    disturbed by other work on a shared machine). A precision that `replay` captures (where the run's step
    would be a CUDA graph) is timed as one (replays of a captured forward and backward): a graph removes
    the launch overhead that an eager probe would charge to it (where one precision's step is refused,
    all are timed eagerly). The model's weights, buffers, gradients and the random generators are as
    before."""

    def step(precision: Precision, cache: bool = True) -> None:
        with precision.autocast(device, cache=cache):
            loss = checked_parts(model, model(x, y, 0), len(x)).loss.float().sum()
        loss.backward()

    def timer(precisions: list[Precision]) -> list[float]:
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        times: list[list[float]] = [[] for _ in precisions]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            replays = [replay(p, partial(step, p, cache=False)) if replay else None for p in precisions]
            if None in replays:  # where one precision cannot be captured, all are timed eagerly, alike
                replays = [None] * len(precisions)
            steps = [replay or partial(step, p) for replay, p in zip(replays, precisions)]
            for round_ in range(rounds + 1):
                for index, run_step in enumerate(steps):
                    started = time.perf_counter()
                    run_step()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if round_:  # the first round warms up
                        times[index].append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
        model.load_state_dict(saved)
        return [min(t) for t in times]

    return timer


def resolve_precision(
    name: str, device: torch.device, timer: StepTimer | None = None, key: str | None = None
) -> Precision:
    """The precision for a `--precision` value on `device`; errors where the device cannot do it.
    `auto` measures with `timer` where one is given (see `auto_precision`)."""
    if name == "auto":
        name = auto_precision(device, timer, key)
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
