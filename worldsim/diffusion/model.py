"""A backbone plus its noise schedule and parameterization: the object trainers and samplers use."""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from torch import nn

from worldsim.diffusion.parameterization import check_prediction, expand_levels, target, to_x0_eps
from worldsim.diffusion.schedules import alpha_sigma, check_schedule


class _CachingBackbone(Protocol):
    """The optional cache methods of the backbone contract (worldsim/hookspecs.py)."""

    def init_cache(self, batch_size: int) -> Any: ...

    def append(self, cache: Any, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None) -> Any: ...


class DiffusionModel(nn.Module):
    """Wraps a backbone ``forward(x, k, cond=None, cache=None)``.

    ``k`` is the per-token noise level (B, T) in [0, 1]; ``prediction`` is what the backbone outputs
    (eps, v or x0). The cache methods delegate to the backbone when it has them.
    """

    def __init__(self, backbone: nn.Module, schedule: str = "linear", prediction: str = "x0"):
        super().__init__()
        check_schedule(schedule)
        check_prediction(prediction)
        self.backbone = backbone
        self.schedule = schedule
        self.prediction = prediction
        self._grids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # alpha_sigma_at's tables

    # -- backbone passthrough -------------------------------------------------------------
    @property
    def causal(self) -> bool:
        return bool(getattr(self.backbone, "causal", False))

    @property
    def max_tokens(self) -> int | None:
        return getattr(self.backbone, "max_tokens", None)

    @property
    def supports_cache(self) -> bool:
        return self.causal and hasattr(self.backbone, "init_cache") and hasattr(self.backbone, "append")

    def init_cache(self, batch_size: int) -> Any:
        # duck-typed: nn.Module's attribute lookup is typed Tensor | Module (see supports_cache)
        return cast(_CachingBackbone, self.backbone).init_cache(batch_size)

    def append(self, cache: Any, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None) -> Any:
        return cast(_CachingBackbone, self.backbone).append(cache, x, k, cond)

    def forward(
        self, x_t: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None, cache: Any = None
    ) -> torch.Tensor:
        if cache is None:
            return self.backbone(x_t, k, cond)
        return self.backbone(x_t, k, cond, cache=cache)

    # -- diffusion helpers ------------------------------------------------------------------
    def alpha_sigma(self, k: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token (alpha, sigma) for levels k (B, T), shaped to broadcast against ``like``."""
        alpha, sigma = alpha_sigma(self.schedule, k.to(like.dtype))
        return expand_levels(alpha, like), expand_levels(sigma, like)

    def alpha_sigma_at(self, index: torch.Tensor, steps: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`alpha_sigma` at the levels ``index / steps`` of integer noise indices (B, T), read from a table of
        the steps + 1 levels, computed once per (steps, dtype, device): a sampler's rows need no schedule math."""
        key = (steps, like.dtype, like.device)
        if key not in self._grids:
            grid = torch.arange(steps + 1, device=like.device).to(like.dtype) / steps
            self._grids[key] = alpha_sigma(self.schedule, grid)
        alpha, sigma = self._grids[key]
        return expand_levels(alpha[index], like), expand_levels(sigma[index], like)

    def add_noise(self, x0: torch.Tensor, k: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_k = alpha_k x0 + sigma_k eps, per token."""
        alpha, sigma = self.alpha_sigma(k, x0)
        return alpha * x0 + sigma * eps

    def target(self, x0: torch.Tensor, eps: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.alpha_sigma(k, x0)
        return target(self.prediction, x0, eps, alpha, sigma)

    def predict(
        self, x_t: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None, cache: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat) for noisy tokens x_t at levels k."""
        out = self(x_t, k, cond, cache)
        alpha, sigma = self.alpha_sigma(k, x_t)
        return to_x0_eps(self.prediction, out.to(x_t.dtype), x_t, alpha, sigma)
