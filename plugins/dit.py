"""Backbone ``dit``: a Diffusion Transformer over tokens with per-token noise levels, causal by default.

DiT (Peebles & Xie 2023) with Diffusion Forcing's per-token noise levels (Chen et al. 2024): every
token t gets its own conditioning vector ``c_t = emb(k_t) + W cond_t``, which modulates every block
through adaLN-Zero (DiT Sec. 3.2: shift/scale of the LayerNorms and a gate on each residual branch,
regressed from c_t, zero-initialized so each block starts as the identity).

Tokens: state tokens (D,) are one patch per token; video latents (C, H, W) are cut into p x p patches
per frame (DiT Sec. 3.1, "patchify"), N = (H/p)(W/p) patches per frame. Attention (all through
``torch.nn.functional.scaled_dot_product_attention``), chosen by ``attention``:

- ``factorized``: each layer is a spatial block (the N patches of one frame attend to each other,
  2-D RoPE over patch rows/cols) followed by a temporal block (each patch position attends causally
  to the same position in frames <= t, RoPE over time);
- ``joint``: one block-causal attention over all patches of all frames (a patch of frame t sees every
  patch of frames <= t), 3-D axial RoPE over (time, row, col).

State tokens have one patch per frame, so both modes are the same stack of causal temporal blocks.
Positions are rotary only (Su et al. 2021), hence relative: the model accepts any start position.

``causal=False`` drops the causal masks: every token of the window attends to every other, earlier or
later (bidirectional, as in the full-sequence video DiTs and Diffusion Forcing Transformer, Song et al.
2025). Such a model has no rollout cache (a later token changes an earlier one's features); it is
what keyframe-then-interpolate sampling needs (``sampling.schedule=keyframes``: a token between two
keyframes must see both).

Window and cache: ``max_tokens`` (the training length) is the most tokens the model attends over. The
cache holds, for the committed (visible) tokens, their block inputs and the rotated keys / values of
every temporal or joint attention layer; spatial attention never looks across frames and needs none.
``forward(x, k, cond, cache=c)`` runs the new tokens after that prefix (positions continue from it)
without modifying c. ``append`` commits tokens and keeps at most ``max_tokens`` of them. When it has
to drop the oldest, it recomputes the kept tokens' keys / values from their stored inputs: the keys of
layer >= 2 of a kept token were computed while it attended to the dropped ones, so merely slicing
them would let dropped tokens leak in through depth and the cached model would no longer equal the
model on its visible window (which is what it was trained on). Likewise a cached forward whose prefix
plus new tokens exceed the window is run over the most recent ``max_tokens`` tokens. So a cached
forward always equals the full forward over the same visible window; rotary positions of the kept
tokens restart at 0, which by relativity of RoPE changes nothing but keeps angles in the trained range.
"""

from __future__ import annotations

import numbers
from typing import cast

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

import worldsim
from worldsim.errors import ConfigError, DataError, check_int
from worldsim.nn import TokenConditioning, apply_rotary, mlp, rotary_angles, rotary_cos_sin

ATTENTION = ("factorized", "joint")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: LayerNorm output scaled and shifted per token (DiT Sec. 3.2)."""
    return x * (1 + scale) + shift


class DiTBlock(nn.Module):
    """One adaLN-Zero transformer block (DiT Fig. 3) attending in one of three ways.

    h: (B, T, N, D) patch features; c: (B, T, D) per-token conditioning (shared by a frame's patches).
    ``kind`` "spatial": within each frame; "temporal": per patch position over frames <= t; "joint":
    over all patches of frames <= t. forward returns (h, (k, v)) with the new tokens' rotated keys and
    values in the layout (B, T, N, heads, head_dim) for the cache (None for spatial blocks).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, kind: str, causal: bool = True):
        super().__init__()
        self.kind, self.heads, self.causal = kind, heads, causal
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = mlp(width, width, hidden=int(width * mlp_ratio), layers=2, act=nn.GELU)
        # adaLN-Zero: (shift1, scale1, gate1, shift2, scale2, gate2) from c, zero-initialized (DiT Sec. 3.2).
        ada = nn.Linear(width, 6 * width)
        self.ada = nn.Sequential(nn.SiLU(), ada)
        nn.init.zeros_(ada.weight)
        nn.init.zeros_(ada.bias)

    def forward(self, h, c, rotary, past=None, mask=None):
        """rotary: (cos, sin) of the rotary angles; mask: the boolean attention mask of the new tokens over
        past + new frames (joint blocks always; temporal blocks after a cache for more than one new frame)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, :, None].chunk(6, dim=-1)
        a, kv = self._attend(modulate(self.norm1(h), shift1, scale1), rotary, past, mask)
        h = h + gate1 * a
        h = h + gate2 * self.mlp(modulate(self.norm2(h), shift2, scale2))
        return h, kv

    def _attend(self, h, rotary, past, mask):
        B, T, N = h.shape[:3]
        q, k, v = self.qkv(h).view(B, T, N, 3, self.heads, -1).unbind(3)
        q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)  # RoPE on queries and keys (Su et al. 2021)
        new_kv = None if self.kind == "spatial" else (k, v)
        n_past = 0 if past is None else past[0].shape[1]
        if n_past:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        if self.kind == "spatial":
            q, k, v = (rearrange(z, "b t n h d -> (b t) h n d") for z in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v)
            out = rearrange(out, "(b t) h n d -> b t n (h d)", t=T)
        elif self.kind == "temporal":
            q, k, v = (z.permute(0, 2, 3, 1, 4).flatten(0, 1) for z in (q, k, v))  # (b n) h t d
            if n_past == 0:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
            elif T == 1:  # the newest frame sees every frame
                out = F.scaled_dot_product_attention(q, k, v)
            else:  # query j (frame n_past + j) sees frames <= n_past + j; is_causal would align top-left
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = out.view(B, N, self.heads, T, -1).permute(0, 3, 1, 2, 4).flatten(3)
        else:
            q, k, v = (rearrange(z, "b t n h d -> b h (t n) d") for z in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out = rearrange(out, "b h (t n) d -> b t n (h d)", n=N)
        return self.proj(out), new_kv


def _frame_mask(T: int, n_past: int, N: int, device) -> torch.Tensor:
    """Block-causal boolean mask (T N, (n_past + T) N): a patch of frame n_past + i may attend to every
    patch of frames <= n_past + i (True = attend)."""
    q_frame = (n_past + torch.arange(T, device=device)).repeat_interleave(N)
    k_frame = torch.arange(n_past + T, device=device).repeat_interleave(N)
    return k_frame[None, :] <= q_frame[:, None]


class _Transformer(nn.Module):
    """The DiT without its cache: embedding, blocks (attending causally or not, by the subclass's ``causal``), head."""

    causal: bool  # the backbone contract's attribute, set by each subclass
    patch_rc: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, token_shape, cond_dim, max_tokens, width, depth, heads, patch, mlp_ratio, attention, rope_base):
        super().__init__()
        self.token_shape = tuple(int(s) for s in token_shape)
        self.cond_dim, self.max_tokens = int(cond_dim), max_tokens
        self.width, self.heads, self.attention, self.rope_base = width, heads, attention, rope_base
        self.video = len(self.token_shape) == 3
        if self.video:
            c, hgt, wid = self.token_shape
            self.patch, self.grid = patch, (hgt // patch, wid // patch)
            patch_dim = c * patch * patch
            kinds = ["spatial", "temporal"] * depth if attention == "factorized" else ["joint"] * depth
        else:
            self.patch, self.grid = 1, (1, 1)
            patch_dim = self.token_shape[0]
            kinds = ["temporal"] * depth  # one patch per token: spatial attention would be trivial
        self.n_patches = self.grid[0] * self.grid[1]
        self.embed = nn.Linear(patch_dim, width)
        self.conditioning = TokenConditioning(width, self.cond_dim, "dit")  # noise level + cond, per token
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, kind, type(self).causal) for kind in kinds)
        self.final_norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        final_ada = nn.Linear(width, 2 * width)
        self.final_ada = nn.Sequential(nn.SiLU(), final_ada)
        self.final = nn.Linear(width, patch_dim)
        for lin in (final_ada, self.final):  # the DiT final layer starts at zero output
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        rows, cols = torch.meshgrid(torch.arange(self.grid[0]), torch.arange(self.grid[1]), indexing="ij")
        self.register_buffer("patch_rc", torch.stack([rows.flatten(), cols.flatten()], -1), persistent=False)

    # -- tokens <-> patches -------------------------------------------------------------------
    def _embed(self, x, k, cond):
        b, t = x.shape[:2]
        if tuple(x.shape[2:]) != self.token_shape:
            raise DataError(f"backbone 'dit': expected tokens of shape {self.token_shape}, got {tuple(x.shape[2:])}")
        if tuple(k.shape) != (b, t):
            raise DataError(f"backbone 'dit': noise levels k must have shape {(b, t)}, got {tuple(k.shape)}")
        if self.video:
            p = self.patch
            x = rearrange(x, "b t c (gh p1) (gw p2) -> b t (gh gw) (p1 p2 c)", p1=p, p2=p)
        else:
            x = x[:, :, None]
        h = self.embed(x)
        c = self.conditioning(k, cond, h.dtype)  # adaLN-Zero input: noise level + cond, per token
        return h, c

    def _head(self, h, c):
        shift, scale = self.final_ada(c)[:, :, None].chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(h), shift, scale))
        if not self.video:
            return out[:, :, 0]
        gh, gw = self.grid
        return rearrange(
            out, "b t (gh gw) (p1 p2 c) -> b t c (gh p1) (gw p2)", gh=gh, gw=gw, p1=self.patch, p2=self.patch
        )

    # -- the transformer ----------------------------------------------------------------------
    def _angles(self, kind: str, t0: int, T: int, device) -> torch.Tensor:
        """Rotary angles broadcastable to (B, T, N, heads, head_dim // 2) for frames t0 .. t0 + T - 1."""
        hd = self.width // self.heads
        time = torch.arange(t0, t0 + T, device=device)
        rc = self.patch_rc.to(device)
        if kind == "spatial":
            return rotary_angles(rc, hd, self.rope_base)[None, :, None]
        if kind == "temporal" or not self.video:
            return rotary_angles(time, hd, self.rope_base)[:, None, None]
        trc = torch.cat([time[:, None, None].expand(T, self.n_patches, 1), rc[None].expand(T, -1, -1)], dim=-1)
        return rotary_angles(trc, hd, self.rope_base)[:, :, None]

    def _run(self, h, c, past):
        """Run the blocks over new tokens after the cached prefix ``past`` (None = none); returns the
        final features and the new tokens' (k, v) of every cached layer."""
        n_past, T = (0 if past is None else past["h"].shape[1]), h.shape[1]
        rotary, masks = {}, {}  # per block kind, computed once per call
        kvs, j = [], 0
        for block in self.blocks:
            kind = cast(DiTBlock, block).kind  # self.blocks holds DiTBlocks; ModuleList iterates as Module
            if kind not in rotary:
                rotary[kind] = rotary_cos_sin(self._angles(kind, n_past, T, h.device), h.dtype)
                # joint: always block-causal; temporal: plain causal without a past, no mask for one new frame
                needed = self.causal and (kind == "joint" or (kind == "temporal" and n_past and T > 1))
                patches = self.n_patches if kind == "joint" else 1
                masks[kind] = _frame_mask(T, n_past, patches, h.device) if needed else None
            p = None
            if kind != "spatial":
                p = None if past is None else (past["k"][j], past["v"][j])
                j += 1
            h, kv = block(h, c, rotary[kind], p, masks[kind])
            if kv is not None:
                kvs.append(kv)
        return h, kvs

    def forward(
        self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None, cache: dict | None = None
    ) -> torch.Tensor:
        if x.shape[1] == 0:
            return x.clone()
        T = x.shape[1]
        h, c = self._embed(x, k, cond)
        if cache is not None and not self.causal:
            raise DataError("backbone 'dit': a model with causal=false has no cache (every token sees later ones)")
        if cache is None:
            self._check_len(T, "tokens")
            h, _ = self._run(h, c, None)
        else:
            self._check_cache(cache, x.shape[0])
            n = cache["h"].shape[1]
            if self.max_tokens is None or n + T <= self.max_tokens:
                h, _ = self._run(h, c, cache)
            else:  # prefix + new exceed the window: run over the most recent max_tokens tokens
                self._check_len(T, "new tokens after a cache")
                keep = self.max_tokens - T
                hs = torch.cat([cache["h"][:, n - keep :], h], dim=1)
                cs = torch.cat([cache["c"][:, n - keep :], c], dim=1)
                h = self._run(hs, cs, None)[0][:, keep:]
        return self._head(h, c)

    def _check_len(self, T: int, what: str) -> None:
        if self.max_tokens is not None and T > self.max_tokens:
            raise DataError(
                f"backbone 'dit': got {T} {what}, more than its window max_tokens={self.max_tokens} (data.seq_len)"
            )

    def _check_cache(self, cache, batch: int) -> None:
        ok = isinstance(cache, dict) and {"h", "c", "k", "v"} <= set(cache)
        if not ok or cache["h"].shape[0] != batch or cache["h"].shape[2:] != (self.n_patches, self.width):
            raise DataError(f"backbone 'dit': cache must come from init_cache({batch}) / append of this model")


class BidirectionalDiT(_Transformer):
    """``causal=False``: every token of the window attends to every other; ``forward(x, k, cond=None)``, no cache."""

    causal = False


class DiT(_Transformer):
    """See the module docstring. ``forward(x, k, cond=None, cache=None)``; cache from ``init_cache``."""

    causal = True

    # -- cache --------------------------------------------------------------------------------
    def init_cache(self, batch_size: int) -> dict:
        """The empty prefix: block inputs h (B, 0, N, D), conditioning c (B, 0, D), and per cached
        attention layer keys / values (B, 0, N, heads, head_dim)."""
        w = self.embed.weight
        n_cached = sum(b.kind != "spatial" for b in self.blocks)
        hd = self.width // self.heads

        def kv() -> list[torch.Tensor]:
            return [w.new_zeros(batch_size, 0, self.n_patches, self.heads, hd) for _ in range(n_cached)]

        return {
            "h": w.new_zeros(batch_size, 0, self.n_patches, self.width),
            "c": w.new_zeros(batch_size, 0, self.width),
            "k": kv(),
            "v": kv(),
        }

    def append(self, cache: dict, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None) -> dict:
        """Commit finished tokens; keeps the most recent ``max_tokens`` (see the module docstring)."""
        if x.shape[1] == 0:
            return cache
        self._check_cache(cache, x.shape[0])
        h, c = self._embed(x, k, cond)
        hs, cs = torch.cat([cache["h"], h], dim=1), torch.cat([cache["c"], c], dim=1)
        if self.max_tokens is not None and hs.shape[1] > self.max_tokens:
            hs, cs = hs[:, -self.max_tokens :], cs[:, -self.max_tokens :]
            _, kvs = self._run(hs, cs, None)  # recompute: dropped tokens must not leak in through depth
            return {"h": hs, "c": cs, "k": [kv[0] for kv in kvs], "v": [kv[1] for kv in kvs]}
        _, kvs = self._run(h, c, cache)
        ks = [torch.cat([pk, kv[0]], dim=1) for pk, kv in zip(cache["k"], kvs, strict=True)]
        vs = [torch.cat([pv, kv[1]], dim=1) for pv, kv in zip(cache["v"], kvs, strict=True)]
        return {"h": hs, "c": cs, "k": ks, "v": vs}


def build_dit(
    token_shape: tuple,
    cond_dim: int = 0,
    max_tokens: int | None = None,
    width: int = 128,
    depth: int = 4,
    heads: int = 4,
    patch: int = 2,
    mlp_ratio: float = 4.0,
    attention: str = "factorized",
    rope_base: float = 10000.0,
    causal: bool = True,
) -> DiT:
    """Build the DiT backbone; ``max_tokens`` (data.seq_len) is its attention window (None = unlimited).

    width: feature size; depth: layers (a factorized video layer is a spatial and a temporal block);
    heads: attention heads (width / heads must be even, for rotary pairs); patch: patch side for
    (C, H, W) tokens (unused for vectors); mlp_ratio: MLP hidden size / width; attention:
    "factorized" (spatial then causal temporal) or "joint" (block-causal over all patches); rope_base:
    the RoPE frequency base (Su et al. 2021: theta_i = base^(-2i/d)); causal: False lets every token of the
    window attend to later ones too (no rollout cache; needed by ``sampling.schedule=keyframes``).
    """
    token_shape = tuple(int(s) for s in token_shape)
    if len(token_shape) not in (1, 3):
        raise ConfigError(f"backbone 'dit': token_shape must be (D,) or (C, H, W), got {token_shape}")
    width, depth, heads, patch = (
        check_int(f"backbone.{k}", v) for k, v in dict(width=width, depth=depth, heads=heads, patch=patch).items()
    )
    if (
        isinstance(mlp_ratio, bool)
        or not isinstance(mlp_ratio, numbers.Real)
        or not mlp_ratio > 0
        or int(width * mlp_ratio) < 1
    ):
        raise ConfigError(f"backbone.mlp_ratio: expected a number > 0, got {mlp_ratio!r}")
    if attention not in ATTENTION:
        raise ConfigError(f"backbone.attention: expected one of {', '.join(ATTENTION)}, got {attention!r}")
    if not isinstance(causal, bool):
        raise ConfigError(f"backbone.causal: expected true or false, got {causal!r}")
    if isinstance(rope_base, bool) or not isinstance(rope_base, numbers.Real) or not rope_base > 1:
        raise ConfigError(f"backbone.rope_base: expected a number > 1, got {rope_base!r}")
    if width % heads:
        raise ConfigError(f"backbone.heads: expected a divisor of backbone.width={width}, got {heads}")
    axes = 3 if len(token_shape) == 3 and attention == "joint" else (2 if len(token_shape) == 3 else 1)
    hd = width // heads
    if hd % 2 or hd // 2 < axes:
        raise ConfigError(
            f"backbone.heads: the head size width/heads = {hd} must be even with at least {axes} rotary pairs; got heads={heads}"
        )
    if len(token_shape) == 3 and (token_shape[1] % patch or token_shape[2] % patch):
        raise ConfigError(
            f"backbone.patch: expected a divisor of the token height and width {token_shape[1:]}, got {patch}"
        )
    if isinstance(cond_dim, bool) or not isinstance(cond_dim, numbers.Integral) or cond_dim < 0:
        raise ConfigError(f"backbone 'dit': cond_dim must be an integer >= 0, got {cond_dim!r}")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral) or max_tokens < 1:
            raise ConfigError(f"data.seq_len: the dit window max_tokens must be a positive integer, got {max_tokens!r}")
        max_tokens = int(max_tokens)
    return (DiT if causal else BidirectionalDiT)(
        token_shape,
        int(cond_dim),
        max_tokens,
        width,
        depth,
        heads,
        patch,
        float(mlp_ratio),
        attention,
        float(rope_base),
    )


@worldsim.hookimpl
def worldsim_add_backbones():
    return {"dit": build_dit}
