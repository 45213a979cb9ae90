"""How a worldsim process uses the machine: its seed, its threads and its memory budget.

- :func:`seed_everything` fixes every generator a run draws from outside the trainer's per-step
  generators (model initialisation, tokenizer fitting, anything using Python's or numpy's global RNG),
  so ``run.seed`` fixes a run on a given machine and thread count.
- :func:`set_threads` applies ``trainer.threads`` / ``planning.threads`` / ``rollout.threads``
  (``null``: the cores this process may use). :func:`limit_openmp_spinning` is called by the CLI before
  torch is imported: idle OpenMP threads soon sleep instead of spinning, so two jobs can share the cores.
- :func:`check_fits` refuses work whose estimated memory exceeds what is available, before it is
  allocated, naming the settings that size it (:class:`ResourceError`, exit 2 from the CLI).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from worldsim.errors import ConfigError, WorldsimError

if TYPE_CHECKING:
    import torch

#: OpenMP settings a user may have chosen; when any is set, worldsim leaves the waiting policy alone.
OPENMP_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: busy-wait rounds of an idle OpenMP thread before it sleeps (libgomp's default: 300,000); see limit_openmp_spinning
OPENMP_SPIN_COUNT = 2000


class ResourceError(WorldsimError):
    """Work that cannot fit in this machine's memory."""


# -- seeds ---------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed torch's (CPU and CUDA), numpy's and Python's global generators with ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global generator is what unseeded numpy code draws from
    torch.manual_seed(seed)  # also seeds every CUDA device


# -- threads -------------------------------------------------------------------------------------


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a container's or taskset's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(value: object, field: str) -> int:
    """``null`` -> :func:`available_cores`; otherwise a positive integer, else a ConfigError naming ``field``."""
    if value is None:
        return available_cores()
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{field}: expected a positive number of threads or null (the {available_cores()} "
            f"cores this process may use), got {value!r}"
        )
    return value


def set_threads(value: object, field: str) -> int:
    """Run torch's intra-op work on ``value`` threads (see :func:`resolve_threads`); returns the count."""
    import torch

    threads = resolve_threads(value, field)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def limit_openmp_spinning() -> None:
    """Let idle OpenMP threads spin only briefly before they sleep, unless the user chose a waiting policy.

    Must run before torch is first imported (OpenMP reads it once, at load). libgomp's default spin
    (300,000 rounds) makes the waiting threads of one process take the cores from another: two 2-thread
    toy trainings side by side kept 17-21% of one alone's throughput. With ``OPENMP_SPIN_COUNT`` rounds
    they keep about half, and one job alone loses at most about a tenth (README, "Threads"; ``benchmarks/sharing.py``).
    """
    if not any(var in os.environ for var in OPENMP_WAIT_VARS):
        os.environ["GOMP_SPINCOUNT"] = str(OPENMP_SPIN_COUNT)


# -- memory --------------------------------------------------------------------------------------

GIB = 1024**3


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit; None when unknown."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except OSError:
        return None
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        free = min(free, limit - used) if free is not None else limit - used
    return free


def format_bytes(n: float) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB / 10 else f"{n / 1024**2:.0f} MiB"


def check_fits(
    settings: Iterable[str], need: int, what: str, available: int | None = None, hint: str = "lower them"
) -> None:
    """Raise :class:`ResourceError` when ``need`` bytes exceed the available memory.

    ``settings`` are the ``key=value`` settings that size the work, ``what`` says what needs the memory.
    ``available`` defaults to :func:`available_memory` (no check when it is unknown).
    """
    available = available_memory() if available is None else available
    if available is None or need <= available:
        return
    named = ", ".join(settings)
    raise ResourceError(
        f"{named}: {what} needs about {format_bytes(need)} of memory but {format_bytes(available)} is available; {hint}"
    )


def activation_bytes(
    run_step: Callable[[int], None], lengths: Iterable[int], exclude: Iterable[torch.Tensor] = ()
) -> Callable[[int], float]:
    """Bytes autograd keeps for one sequence of ``n`` tokens, fitted from probes at short ``lengths``.

    ``run_step(n)`` runs forward and backward on one sequence of ``n`` tokens. Every storage a tensor that
    autograd saves for the backward pass lives in is counted once, except those of ``exclude`` (the
    weights: they are not per token). With three lengths the fit is ``c + a n + b n^2`` (recurrent
    backbones are linear, attention that keeps its scores is quadratic); with one, a constant.
    """
    import torch

    lengths = list(lengths)
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    counts = []
    for n in lengths:
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor, seen: dict[int, int] = seen) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in skip:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_step(n)
        counts.append(float(sum(seen.values())))
    if len(lengths) == 1:
        return lambda n: counts[0]
    powers = np.array(lengths, dtype=np.float64)[:, None] ** np.array([0, 1, 2])
    const, lin, quad = np.linalg.lstsq(powers, np.array(counts), rcond=None)[0]
    return lambda n: max(0.0, const + lin * n + max(0.0, quad) * n * n)
