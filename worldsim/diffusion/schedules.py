"""Variance-preserving noise schedules over a continuous noise level k in [0, 1].

k = 0 is clean data, k = 1 is (almost) pure noise; x_k = alpha_k x_0 + sigma_k eps with
alpha_k^2 + sigma_k^2 = 1. The K discrete DDPM training levels are k = i / K, i = 1..K.
Each schedule is a plain function k -> alpha_bar(k) = alpha_k^2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from worldsim.errors import ConfigError

# alpha_bar is kept above this so that x0 = (x - sigma eps) / alpha stays finite at k = 1.
ALPHA_BAR_MIN = 1e-5


def linear_alpha_bar(k: torch.Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> torch.Tensor:
    """DDPM's linear betas (1e-4 .. 0.02 over 1000 steps) in continuous time (Song et al. 2021, VP SDE):
    alpha_bar(k) = exp(-(beta_min k + (beta_max - beta_min) k^2 / 2))."""
    return torch.exp(-(beta_min * k + 0.5 * (beta_max - beta_min) * k * k))


def cosine_alpha_bar(k: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(k) = f(k) / f(0), f(k) = cos^2((k + s) / (1 + s) * pi / 2)."""
    f0 = math.cos(s / (1 + s) * math.pi / 2) ** 2
    return torch.cos((k + s) / (1 + s) * math.pi / 2) ** 2 / f0


def sigmoid_alpha_bar(k: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Chen 2023 (arXiv 2301.10972), Alg. 1: alpha_bar(k) = (v_end - sigmoid((k (end - start) + start) / tau))
    / (v_end - v_start), with v = sigmoid(start / tau), sigmoid(end / tau)."""
    v_start = 1 / (1 + math.exp(-start / tau))
    v_end = 1 / (1 + math.exp(-end / tau))
    return (v_end - torch.sigmoid((k * (end - start) + start) / tau)) / (v_end - v_start)


SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": linear_alpha_bar,
    "cosine": cosine_alpha_bar,
    "sigmoid": sigmoid_alpha_bar,
}


def alpha_bar(schedule: str, k: torch.Tensor) -> torch.Tensor:
    """alpha_k^2 for noise levels ``k`` (any shape), clamped to [ALPHA_BAR_MIN, 1]."""
    try:
        fn = SCHEDULES[schedule]
    except KeyError:
        raise ConfigError(
            f"diffusion.schedule: unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}"
        ) from None
    # k = 0 is exactly clean (sigma = 0, snr = inf) whatever the rounding of fn in low precision
    # (cosine in float32 gives 1 - 6e-8 there, i.e. sigma = 2.4e-4).
    return torch.where(k <= 0, 1.0, fn(k).clamp(ALPHA_BAR_MIN, 1.0))


def alpha_sigma(schedule: str, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_k, sigma_k) with alpha^2 + sigma^2 = 1; same shape and dtype as ``k``."""
    ab = alpha_bar(schedule, k)
    return ab.sqrt(), (1 - ab).sqrt()


def snr(schedule: str, k: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha^2 / sigma^2 (inf at k = 0)."""
    ab = alpha_bar(schedule, k)
    return ab / (1 - ab)


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ConfigError(f"diffusion.schedule: unknown schedule {schedule!r}; expected one of {sorted(SCHEDULES)}")
