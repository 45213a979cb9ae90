"""Helpers shared by the benchmark scripts: device sync, timing, the fp32 matmul reference rate, FLOP
counting, peak memory of a phase, weight perturbation and plain-text tables.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import
this module as ``_common``.
"""

from __future__ import annotations

import ctypes
import gc
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str) -> torch.device:
    """``auto`` = cuda when available, else cpu; otherwise the given device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``fn()``'s result and its wall-clock seconds (the device synchronized before and after)."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones (kernels, thread pools)."""
    for _ in range(warmup):
        fn()
    return statistics.median([timed(fn, device)[1] for _ in range(max(1, repeats))])


def matmul_gflops(device: torch.device, n: int, repeats: int = 7) -> float:
    """Median fp32 GFLOP/s of n x n @ n x n (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n**3 / median_seconds(lambda: a @ b, device, repeats, warmup=2) / 1e9


# PyTorch's FlopCounterMode counts the CUDA attention kernels but not the CPU flash-attention kernel that
# scaled_dot_product_attention dispatches to on CPU; count it with the same formulas (no causal discount).
def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


EXTRA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def step_flops(trainer) -> int:
    """FLOPs of one ``trainer.train_step()`` (it is run once). cuDNN's fused RNN kernel is invisible to
    FlopCounterMode, so the count runs with cuDNN off: a GRU then runs as plain matmuls, the same arithmetic."""
    with (
        torch.backends.cudnn.flags(enabled=False),
        FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter,
    ):
        trainer.train_step()
    return int(counter.get_total_flops())


# -- peak memory of a phase ------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """Peak memory of a phase, in MiB: ``start()`` before it, ``peak_mib()`` after.

    On CUDA torch.cuda.max_memory_allocated (the peak of tensors allocated on the GPU, whatever was already
    there included). On CPU the growth of the process's peak resident set size over its size at ``start()``:
    Linux VmHWM, reset per phase through /proc/self/clear_refs after returning freed heap to the OS with
    glibc's malloc_trim; elsewhere the growth of ru_maxrss, which cannot be reset (so a phase shows only
    what it adds to the process's earlier peak: run each measured thing in a fresh process there).
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated (peak of tensors allocated on the GPU)"
        elif self._reset_hwm():
            self.method = (
                "growth of peak RSS (Linux VmHWM, reset per phase via /proc/self/clear_refs after malloc_trim)"
            )
        else:
            self.method = (
                "growth of resource.getrusage ru_maxrss (never reset: only what a phase adds to earlier peaks)"
            )

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS to the current RSS
        except OSError:
            return False
        return _proc_status_kib("VmHWM") is not None

    def start(self) -> None:
        gc.collect()
        if self.device.type != "cuda":
            _malloc_trim()  # give freed heap back to the OS, so a phase cannot reuse it unseen
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = 0
        elif "VmHWM" in self.method:
            self._reset_hwm()
            self.base = _proc_status_kib("VmRSS") * 1024
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if "VmHWM" in self.method:
            peak = _proc_status_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return max(0, peak - self.base) / 2**20


# -- models and output -----------------------------------------------------------------------------
@torch.no_grad()
def perturb_(model: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> None:
    """Add ``scale`` * N(0, 1) noise to every parameter, in place, as worldsim.testing does: an untrained model's
    zero-initialized output layers (adaLN-Zero, FiLM) would make every output 0 and cached / uncached
    comparisons trivially exact. ``generator`` is a CPU generator (it advances)."""
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator).to(p))


def sampling_settings(**overrides: Any):
    """configs/config.yaml's ``sampling`` section (the one home of its defaults) with ``overrides``, as the
    sampler's settings object."""
    from worldsim.config import base_config, to_plain
    from worldsim.settings import SamplingSettings

    return SamplingSettings.from_config({**to_plain(base_config().sampling), **overrides})


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, separated by ' | '."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(headers, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)
