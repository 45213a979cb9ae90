"""Backbone ``unet3d``: a factorized space-time U-Net for video latents (B, T, C, H, W).

Space is handled per frame and time only by attention, as in the factorized U-Nets of video
diffusion (Ho et al. 2022, "Video Diffusion Models", Sec. 3; the Diffusion Forcing video model, Chen et
al. 2024, App. D):

- every frame goes through a 2-D U-Net (Ronneberger et al. 2015) of ResBlocks with stride-2
  down-sampling, nearest up-sampling and skip connections, with spatial self-attention at the lowest
  resolution (ADM, Dhariwal & Nichol 2021);
- each frame's noise level k_t (DF: one level per token) is embedded, ``cond_t`` is projected and added,
  and the result modulates every ResBlock through adaptive group norm, GroupNorm(h) * (1 + s) + b with
  (s, b) per token (AdaGN, Dhariwal & Nichol 2021, Sec. 3.2);
- causal temporal attention mixes frames, per spatial position, at the resolutions listed in
  ``temporal_levels``, with rotary time positions (RoPE, Su et al. 2021) and PyTorch SDPA kernels.

Convolutions, norms and spatial attention never mix frames; temporal attention is the only
cross-frame operation and is causal, so the output at frame t depends on frames <= t by construction.
Every temporal attention layer sees at most ``max_tokens`` frames (a sliding window: query t attends
to keys t - max_tokens + 1 .. t), so the rollout cache is a K/V cache: per temporal attention layer the
keys/values of the committed frames (RoPE already applied, absolute time positions), the oldest
dropped past the window. Uses only worldsim's public API, like any third-party plugin.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, cast

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

import worldsim
from worldsim.errors import ConfigError, DataError, check_int
from worldsim.nn import TokenConditioning, apply_rotary, rotary_angles


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialize a residual branch's last layer: every block starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class _TimeContext:
    """What the temporal attention layers of one forward share: batch size, the absolute time positions
    of the new frames, the cached K/V per layer (or None), the window, and (when collecting) the new K/V."""

    def __init__(
        self,
        batch: int,
        q_pos: torch.Tensor,
        past: Sequence | None,
        k_pos: torch.Tensor,
        window: int | None,
        collect: bool,
    ):
        self.batch, self.q_pos, self.past, self.window = batch, q_pos, past, window
        self.k_pos = torch.cat([k_pos, q_pos])  # positions of [cached, new] keys
        self.collected: list[tuple[torch.Tensor, torch.Tensor]] | None = [] if collect else None
        self._mask: torch.Tensor | None = None

    def mask(self) -> torch.Tensor | None:
        """None = plain causal (SDPA ``is_causal``); else a boolean (Tq, Tk) mask, True = attend:
        key position in (q - window, q] (causal sliding window)."""
        n_past, n = self.k_pos.numel() - self.q_pos.numel(), self.q_pos.numel()
        if n_past == 0 and (self.window is None or n <= self.window):
            return None
        if self._mask is None:
            q, k = self.q_pos[:, None], self.k_pos[None, :]
            allowed = k <= q
            if self.window is not None:
                allowed &= k > q - self.window
            self._mask = allowed
        return self._mask


class ResBlock(nn.Module):
    """h = x + conv(SiLU(AdaGN(conv(SiLU(GN(x))), e))) (ADM ResBlock with adaptive group norm)."""

    def __init__(self, c_in: int, c_out: int, embed: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, affine=False)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(embed, 2 * c_out))  # per-token (scale, shift)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, e: torch.Tensor, tc: _TimeContext) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.ada(e), "n c -> n c 1 1").chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift  # AdaGN (Dhariwal & Nichol 2021, Sec. 3.2)
        return self.skip(x) + self.conv2(F.silu(h))


class SpatialAttention(nn.Module):
    """Multi-head self-attention over the H*W positions of each frame (no cross-frame mixing)."""

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, e: torch.Tensor, tc: _TimeContext) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "n c h w -> n (h w) c")
        q, k, v = rearrange(self.qkv(tokens), "n s (three m d) -> three n m s d", three=3, m=self.heads)
        o = rearrange(F.scaled_dot_product_attention(q, k, v), "n m s d -> n s (m d)")
        return x + rearrange(self.proj(o), "n (h w) c -> n c h w", h=h, w=w)


class TemporalAttention(nn.Module):
    """Causal multi-head attention over frames, per spatial position, with RoPE time positions.

    Input (B*T, C, H, W) frames; queries are the new frames, keys/values the cached frames of this
    layer (if any) followed by the new ones. ``index`` is this layer's slot in the K/V cache.
    """

    def __init__(self, channels: int, heads: int, groups: int, index: int, positions: int, rope_base: float):
        super().__init__()
        self.heads, self.index, self.positions, self.rope_base = heads, index, positions, rope_base
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor, e: torch.Tensor, tc: _TimeContext) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "(b t) c h w -> b (h w) t c", b=tc.batch)
        q, k, v = rearrange(self.qkv(tokens), "b s t (three m d) -> three b s m t d", three=3, m=self.heads)
        angles = rotary_angles(tc.q_pos, q.shape[-1], self.rope_base)  # (T, d/2), absolute time positions
        q, k = apply_rotary(q, angles), apply_rotary(k, angles)  # RoPE (Su et al. 2021, eq. 34)
        if tc.collected is not None:
            tc.collected.append((k, v))
        if tc.past is not None:
            pk, pv = tc.past[self.index]
            k, v = torch.cat([pk.to(k.dtype), k], dim=-2), torch.cat([pv.to(v.dtype), v], dim=-2)
        flat = "b s m t d -> (b s) m t d"
        mask = tc.mask()
        o = F.scaled_dot_product_attention(
            rearrange(q, flat), rearrange(k, flat), rearrange(v, flat), attn_mask=mask, is_causal=mask is None
        )
        o = rearrange(o, "(b h w) m t d -> (b t) h w (m d)", b=tc.batch, h=h, w=w)
        return x + rearrange(self.proj(o), "n h w c -> n c h w")


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, e: torch.Tensor, tc: _TimeContext) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, e: torch.Tensor, tc: _TimeContext) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet3D(nn.Module):
    """See the module docstring. ``forward(x, k, cond=None, cache=None)``; cache = dict(pos, kv, next)."""

    causal = True

    def __init__(
        self,
        token_shape,
        cond_dim,
        max_tokens,
        channels,
        channel_mult,
        blocks,
        heads,
        temporal_levels,
        embed,
        groups,
        rope_base,
    ):
        super().__init__()
        self.token_shape = tuple(token_shape)
        self.cond_dim = cond_dim
        self.max_tokens = max_tokens
        c_tok = self.token_shape[0]
        widths = [channels * m for m in channel_mult]
        levels = len(widths)
        n_temporal = 0

        def temporal(width: int, level: int) -> TemporalAttention:  # numbered in forward order (cache slots)
            nonlocal n_temporal
            n_temporal += 1
            positions = (self.token_shape[1] >> level) * (self.token_shape[2] >> level)
            return TemporalAttention(width, heads, groups, n_temporal - 1, positions, rope_base)

        self.conditioning = TokenConditioning(embed, cond_dim, "unet3d")  # noise level + cond, per token
        self.inp = nn.Conv2d(c_tok, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        prev = widths[0]
        for i, width in enumerate(widths):
            layers: list[nn.Module] = []
            for _ in range(blocks):
                layers.append(ResBlock(prev, width, embed, groups))
                prev = width
                if i in temporal_levels:
                    layers.append(temporal(width, i))
            self.down.append(nn.ModuleList(layers))
        self.downsample = nn.ModuleList(Downsample(w) for w in widths[:-1])
        mid: list[nn.Module] = [ResBlock(prev, prev, embed, groups), SpatialAttention(prev, heads, groups)]
        if levels - 1 in temporal_levels:
            mid.append(temporal(prev, levels - 1))
        mid.append(ResBlock(prev, prev, embed, groups))
        self.mid = nn.ModuleList(mid)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(levels)):
            layers = []
            for j in range(blocks):
                layers.append(ResBlock(prev + widths[i] if j == 0 else prev, widths[i], embed, groups))
                prev = widths[i]
                if i in temporal_levels:
                    layers.append(temporal(prev, i))
            self.up.append(nn.ModuleList(layers))
            if i > 0:
                self.upsample.append(Upsample(prev))
        self.out = nn.Sequential(nn.GroupNorm(groups, prev), nn.SiLU(), nn.Conv2d(prev, c_tok, 3, padding=1))
        self.n_temporal = n_temporal

    # -- the network ------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Per-token embedding e_t = NoiseEmb(k_t) + W cond_t, flattened to (B*T, embed)."""
        b, t = x.shape[:2]
        if tuple(x.shape[2:]) != self.token_shape:
            raise DataError(f"backbone 'unet3d': expected tokens of shape {self.token_shape}, got {tuple(x.shape[2:])}")
        if tuple(k.shape) != (b, t):
            raise DataError(f"backbone 'unet3d': noise levels k must have shape {(b, t)}, got {tuple(k.shape)}")
        e = self.conditioning(k, cond, x.dtype)
        return rearrange(e, "b t f -> (b t) f")

    def _run(self, x, k, cond, cache, collect: bool):
        b, t = x.shape[:2]
        e = self._embed(x, k, cond)
        start = 0 if cache is None else int(cache["next"])
        q_pos = torch.arange(start, start + t, device=x.device)
        k_pos = q_pos[:0] if cache is None else cache["pos"].to(x.device)
        past = None if cache is None or k_pos.numel() == 0 else cache["kv"]
        tc = _TimeContext(b, q_pos, past, k_pos, self.max_tokens, collect)

        h = self.inp(rearrange(x, "b t c h w -> (b t) c h w"))
        skips = []
        for i, layers in enumerate(self.down):
            for layer in cast(nn.ModuleList, layers):  # one ModuleList per level; ModuleList iterates as Module
                h = layer(h, e, tc)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h, e, tc)
        for layer in self.mid:
            h = layer(h, e, tc)
        for j, layers in enumerate(self.up):
            if j > 0:
                h = self.upsample[j - 1](h, e, tc)
            h = torch.cat([h, skips.pop()], dim=1)
            for layer in cast(nn.ModuleList, layers):  # one ModuleList per level
                h = layer(h, e, tc)
        out = rearrange(self.out(h), "(b t) c h w -> b t c h w", b=b)
        return out, tc.collected, q_pos

    # -- backbone contract --------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        if x.shape[1] == 0:
            return x.clone()
        self._check_cache(cache, x.shape[0])
        return self._run(x, k, cond, cache, collect=False)[0]

    def init_cache(self, batch_size: int) -> dict[str, Any]:
        """The empty prefix: no committed frames, next time position 0. ``kv`` holds per temporal
        attention layer (keys, values) of shape (B, H_l*W_l, heads, frames, head_dim)."""
        p = self.inp.weight
        kv = []
        for layer in self._temporal_layers():
            empty = p.new_zeros(batch_size, layer.positions, layer.heads, 0, layer.qkv.in_features // layer.heads)
            kv.append((empty, empty.clone()))
        return {"pos": torch.zeros(0, dtype=torch.long, device=p.device), "kv": kv, "next": 0}

    def append(self, cache: dict, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None) -> dict[str, Any]:
        """Commit finished frames: their K/V in every temporal layer (computed after the cached prefix),
        keeping the most recent ``max_tokens`` frames. Returns a new cache; ``cache`` is not modified."""
        self._check_cache(cache, x.shape[0])
        if x.shape[1] == 0:
            return cache
        _, new, q_pos = self._run(x, k, cond, cache, collect=True)
        keep = None if self.max_tokens is None else -self.max_tokens  # drop the oldest past the window
        kv = [
            (torch.cat([pk.to(nk.dtype), nk], -2)[..., keep:, :], torch.cat([pv.to(nv.dtype), nv], -2)[..., keep:, :])
            for (pk, pv), (nk, nv) in zip(cache["kv"], new, strict=True)
        ]
        pos = torch.cat([cache["pos"].to(q_pos.device), q_pos])[keep:]
        return {"pos": pos, "kv": kv, "next": int(cache["next"]) + x.shape[1]}

    def _temporal_layers(self) -> list[TemporalAttention]:
        layers = [m for m in self.modules() if isinstance(m, TemporalAttention)]
        return sorted(layers, key=lambda m: m.index)

    def _check_cache(self, cache: dict | None, batch: int) -> None:
        if cache is None:
            return
        if not isinstance(cache, dict) or set(cache) != {"pos", "kv", "next"} or len(cache["kv"]) != self.n_temporal:
            raise DataError("backbone 'unet3d': cache must come from init_cache / append of this model")
        pk = cache["kv"][0][0] if cache["kv"] else None
        if pk is not None and (pk.shape[0] != batch or pk.shape[-2] != cache["pos"].numel()):
            raise DataError(
                f"backbone 'unet3d': cache holds batch {pk.shape[0]} with {pk.shape[-2]} frames, got a batch of {batch}"
            )


# -- factory ------------------------------------------------------------------------------------
def _int_list(field: str, value: Any, minimum: int, what: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(f"backbone.{field}: expected a non-empty list of {what}, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            raise ConfigError(f"backbone.{field}: expected a non-empty list of {what}, got {list(value)!r}")
        out.append(int(v))
    return out


def build_unet3d(
    token_shape: tuple,
    cond_dim: int = 0,
    max_tokens: int | None = None,
    channels: int = 32,
    channel_mult: Sequence[int] = (1, 2),
    blocks: int = 1,
    heads: int = 4,
    temporal_levels: Sequence[int] | None = None,
    embed: int = 128,
    groups: int = 8,
    rope_base: float = 10000.0,
) -> UNet3D:
    """Build the factorized space-time U-Net. ``max_tokens`` (the training length) is the temporal
    attention window.

    channels: width of the first level; channel_mult: width multiplier per level (len = number of
    levels; H and W must be divisible by 2**(levels-1)); blocks: ResBlocks per level (down and up);
    heads: attention heads (spatial and temporal); temporal_levels: levels (0 = full resolution) with
    causal temporal attention after each ResBlock (None = every level; the lowest level's includes the
    middle block); embed: noise-level / cond embedding size; groups: GroupNorm groups; rope_base: RoPE
    base period of the time positions.
    """
    token_shape = tuple(token_shape)
    if len(token_shape) != 3:
        raise ConfigError(f"backbone 'unet3d': needs video tokens (C, H, W), got token_shape {token_shape}")
    if isinstance(cond_dim, bool) or not isinstance(cond_dim, numbers.Integral) or cond_dim < 0:
        raise ConfigError(f"backbone 'unet3d': cond_dim must be an integer >= 0, got {cond_dim!r}")
    if max_tokens is not None:
        max_tokens = check_int("backbone.max_tokens", max_tokens)
    channels = check_int("backbone.channels", channels)
    blocks = check_int("backbone.blocks", blocks)
    heads = check_int("backbone.heads", heads)
    embed = check_int("backbone.embed", embed)
    groups = check_int("backbone.groups", groups)
    mult = _int_list("channel_mult", channel_mult, 1, "positive integers")
    levels = len(mult)
    if temporal_levels is None:
        temporal = list(range(levels))
    else:
        temporal = _int_list("temporal_levels", temporal_levels, 0, f"level indices in 0..{levels - 1}")
        if max(temporal) >= levels or len(set(temporal)) != len(temporal):
            raise ConfigError(
                f"backbone.temporal_levels: expected distinct level indices in 0..{levels - 1} "
                f"(levels = len(backbone.channel_mult)), got {list(temporal_levels)!r}"
            )
    if isinstance(rope_base, bool) or not isinstance(rope_base, numbers.Real) or not rope_base > 1:
        raise ConfigError(f"backbone.rope_base: expected a number > 1, got {rope_base!r}")
    c, h, w = token_shape
    f = 2 ** (levels - 1)
    if h % f or w % f:
        raise ConfigError(
            f"backbone.channel_mult: {levels} levels need token height and width divisible by 2**{levels - 1} = {f}, "
            f"got token_shape {token_shape}"
        )
    for m in mult:
        width = channels * m
        if width % groups:
            raise ConfigError(
                f"backbone.groups: {groups} must divide every level width channels * mult, got width {width}"
            )
        if width % heads or (width // heads) % 2:
            raise ConfigError(
                f"backbone.heads: every level width (channels * mult) must split into {heads} heads of even size "
                f"(for rotary positions), got width {width}"
            )
    return UNet3D(
        token_shape, int(cond_dim), max_tokens, channels, mult, blocks, heads, temporal, embed, groups, float(rope_base)
    )


@worldsim.hookimpl
def worldsim_add_backbones():
    return {"unet3d": build_unet3d}
