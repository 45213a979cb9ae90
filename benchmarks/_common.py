"""Helpers shared by the benchmark scripts: device sync, the fp32 matmul reference rate, FLOP counting.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they import
this module as ``_common``.
"""

from __future__ import annotations

import platform
import statistics
import time

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


def matmul_gflops(device: torch.device, n: int, repeats: int = 7) -> float:
    """Median fp32 GFLOP/s of n x n @ n x n (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):  # warm up kernels / thread pools
        a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


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
    with torch.backends.cudnn.flags(enabled=False), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        trainer.train_step()
    return int(counter.get_total_flops())
