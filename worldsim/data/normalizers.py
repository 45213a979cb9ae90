"""Per-dimension normalizers fitted on data, stored in buffers (so they travel in state_dicts).

``gaussian``: (x - mean) / std. ``limits``: maps [min, max] to [-1, 1] (as in Diffuser / DF's maze
data). ``none``: identity. Constant dimensions use scale 1 so the mapping stays invertible.
"""

from __future__ import annotations

import torch
from torch import nn

from worldsim.errors import ConfigError, DataError

NORMALIZERS = ("gaussian", "limits", "none")


class Normalizer(nn.Module):
    """x_norm = (x - loc) / scale over the last dimension (size ``dim``)."""

    # buffers (registered in __init__)
    loc: torch.Tensor
    scale: torch.Tensor
    _fitted: torch.Tensor

    def __init__(self, kind: str, dim: int, eps: float = 1e-6):
        super().__init__()
        if kind not in NORMALIZERS:
            raise ConfigError(f"normalizer: unknown kind {kind!r}; expected one of {list(NORMALIZERS)}")
        self.kind = kind
        self.dim = int(dim)
        self.eps = eps
        self.register_buffer("loc", torch.zeros(self.dim))
        self.register_buffer("scale", torch.ones(self.dim))
        self.register_buffer("_fitted", torch.tensor(kind == "none"))

    @property
    def fitted(self) -> bool:
        return bool(self._fitted)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> Normalizer:
        """Fit statistics on data (..., dim) (all leading dimensions are samples)."""
        x = torch.as_tensor(x)
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise DataError(f"normalizer: expected data with last dimension {self.dim}, got shape {tuple(x.shape)}")
        x = x.reshape(-1, self.dim).double()
        if x.shape[0] == 0:
            raise DataError("normalizer: cannot fit on an empty data set")
        if not torch.isfinite(x).all():
            raise DataError("normalizer: data contains NaN or inf values")
        if self.kind == "gaussian":
            loc, scale = x.mean(0), x.std(0, unbiased=False)
        elif self.kind == "limits":
            lo, hi = x.min(0).values, x.max(0).values
            loc, scale = (hi + lo) / 2, (hi - lo) / 2
        else:
            loc, scale = torch.zeros(self.dim, dtype=x.dtype), torch.ones(self.dim, dtype=x.dtype)
        scale = torch.where(scale < self.eps, torch.ones_like(scale), scale)
        self.loc.copy_(loc)
        self.scale.copy_(scale)
        self._fitted.fill_(True)
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return (x - self.loc.to(x.dtype)) / self.scale.to(x.dtype)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return x * self.scale.to(x.dtype) + self.loc.to(x.dtype)

    def _check(self, x: torch.Tensor) -> None:
        if not self.fitted:
            raise DataError(f"normalizer ({self.kind}): not fitted; call fit(data) first or load a fitted state")
        if x.shape[-1] != self.dim:
            raise DataError(f"normalizer: expected last dimension {self.dim}, got shape {tuple(x.shape)}")
