"""Small building blocks for plugin authors (public API: keep names stable)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """The module's weights without gradients for the duration (a backward pass through it then skips them);
    every weight's ``requires_grad`` is restored afterwards."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of a (..., ) tensor -> (..., dim) (Vaswani et al. 2017;
    used for diffusion steps by Ho et al. 2020). First half cosines, second half sines."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half, 1))
    args = t.float()[..., None] * freqs
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[..., :1])], dim=-1)
    return emb


class NoiseLevelEmbedding(nn.Module):
    """Embed per-token noise levels k in [0, 1] (any shape) -> (..., dim).

    Sinusoidal features of ``k * scale`` (scale 1000 = the DDPM step index, Ho et al. 2020) followed by
    a two-layer SiLU MLP. Output dtype follows the MLP's parameters.
    """

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(k * self.scale, self.freq_dim)
        return self.mlp(emb.to(next(self.mlp.parameters()).dtype))  # = mlp[0].weight.dtype


class TokenConditioning(nn.Module):
    """The per-token conditioning vector of a backbone: the noise-level embedding of k_t plus a linear
    projection of cond_t (actions, goals). A missing ``cond`` is the null (all-zero) condition, so
    classifier-free guidance can drop it. ``owner`` names the backbone in shape errors.

    ``forward(k (B, T), cond (B, T, cond_dim) | None, dtype) -> (B, T, dim)``; parameters ``noise`` and
    ``cond`` (None when cond_dim = 0).
    """

    def __init__(self, dim: int, cond_dim: int, owner: str):
        super().__init__()
        self.cond_dim, self.owner = int(cond_dim), owner
        self.noise = NoiseLevelEmbedding(dim)
        self.cond = nn.Linear(self.cond_dim, dim) if self.cond_dim else None

    def forward(self, k: torch.Tensor, cond: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        from worldsim.errors import DataError

        b, t = k.shape[:2]
        e = self.noise(k).to(dtype)
        if self.cond is not None:
            if cond is None:
                cond = e.new_zeros(b, t, self.cond_dim)
            if tuple(cond.shape) != (b, t, self.cond_dim):
                raise DataError(
                    f"backbone {self.owner!r}: cond must have shape {(b, t, self.cond_dim)}, got {tuple(cond.shape)}"
                )
            e = e + self.cond(cond.to(dtype))
        elif cond is not None and cond.shape[-1] != 0:
            raise DataError(
                f"backbone {self.owner!r} was built with cond_dim=0 but got cond of shape {tuple(cond.shape)}"
            )
        return e


def mlp(
    in_dim: int, out_dim: int, hidden: int | None = None, layers: int = 2, act: type[nn.Module] = nn.SiLU
) -> nn.Sequential:
    """``layers`` Linear layers with ``act`` between them (width ``hidden``, default ``out_dim``)."""
    if layers < 1:
        raise ValueError(f"mlp: layers must be >= 1, got {layers}")
    hidden = out_dim if hidden is None else hidden
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            mods.append(act())
    return nn.Sequential(*mods)


class FiLM(nn.Module):
    """Feature-wise modulation h * (1 + scale(e)) + shift(e) of channels-first features by an embedding
    (Perez et al. 2018); starts as the identity (zero-initialized projection)."""

    def __init__(self, embed_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(embed_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(e).chunk(2, dim=-1)
        shape = scale.shape + (1,) * (h.dim() - scale.dim())
        return h * (1 + scale.reshape(shape)) + shift.reshape(shape)


# -- rotary position embeddings (RoPE, Su et al. 2021) ------------------------------------------
def rotary_angles(positions: torch.Tensor, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """Axial rotary angles: ``positions`` (..., A) (one column per axis, e.g. time, row, col) ->
    (..., head_dim // 2) angles, one per rotated pair of a head's features.

    RoPE (Su et al. 2021, eq. 34) rotates feature pair i by ``pos * theta_i`` with ``theta_i =
    base^(-i / n)``, so that q.k depends only on the relative position. For several axes (axial /
    multi-dimensional RoPE) the ``head_dim // 2`` pairs are split between the A axes, each with its own
    frequency ladder over its n pairs; the first axis gets the remainder. Positions are cast to float64
    on CPU / float32 elsewhere; ``apply_rotary`` casts the result.
    """
    if head_dim % 2:
        raise ValueError(f"rotary_angles: head_dim must be even, got {head_dim}")
    pos = positions if positions.dim() else positions[None]
    if pos.dim() == 1:
        pos = pos[:, None]
    n_axes, pairs = pos.shape[-1], head_dim // 2
    if pairs < n_axes:
        raise ValueError(f"rotary_angles: head_dim {head_dim} has {pairs} pairs, fewer than the {n_axes} axes")
    dtype = torch.float64 if pos.device.type == "cpu" else torch.float32
    sizes = [pairs // n_axes + (pairs % n_axes if a == 0 else 0) for a in range(n_axes)]
    parts = []
    for a, n in enumerate(sizes):
        theta = base ** (-torch.arange(n, device=pos.device, dtype=dtype) / n)
        parts.append(pos[..., a : a + 1].to(dtype) * theta)
    return torch.cat(parts, dim=-1)


def rotary_cos_sin(angles: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) of rotary angles in ``dtype`` (at least float32): compute once, rotate many tensors."""
    work = torch.promote_types(dtype, torch.float32)
    return angles.cos().to(work), angles.sin().to(work)


def apply_rotary(x: torch.Tensor, angles: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate the feature pairs (x_i, x_{i + d/2}) of ``x`` (..., d) by ``angles`` (broadcastable to
    (..., d/2)), or by their precomputed ``rotary_cos_sin``: the half-split form of RoPE (Su et al. 2021,
    eq. 34, as in GPT-NeoX). Computed in at least float32 and returned in x's dtype."""
    cos, sin = angles if isinstance(angles, tuple) else rotary_cos_sin(angles, x.dtype)
    x1, x2 = x.to(cos.dtype).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
