"""Backbone ``gru``: the recurrent Diffusion Forcing model (DF Sec. 3.1 / App. D).

Per token t: e_t = enc(x_t^{k_t}, k_t, cond_t), latent z_t = GRU(z_{t-1}, e_t) (a multi-layer GRU),
prediction = dec(z_t, e_t). The output at t depends only on tokens <= t (causal), any length is
accepted (``max_tokens=None``) and the rollout cache is the GRU hidden state (layers, B, hidden), so
a 1000-token rollout costs one GRU step per token. Vector tokens (D,) use MLPs; image/latent tokens
(C, H, W) use a small conv encoder and a conv decoder that sees the noisy input (skip) modulated by
the noise level; ``patch`` > 1 folds p x p pixel blocks into channels first (space-to-depth), so the
convolutions run at 1/p of the resolution: on a CPU this is what makes 32x32 frames affordable. Uses only
worldsim's public API, like any third-party plugin.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

import worldsim
from worldsim.errors import ConfigError, DataError, check_int
from worldsim.nn import FiLM, NoiseLevelEmbedding, mlp


class ConvEncoder(nn.Module):
    """(N, C, H, W) -> (N, out_dim): two stride-2 convs then a linear layer."""

    def __init__(self, shape: tuple[int, int, int], channels: int, out_dim: int):
        super().__init__()
        c, h, w = shape
        self.net = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.SiLU(),
        )
        h4, w4 = _down4(h), _down4(w)
        self.proj = nn.Linear(2 * channels * h4 * w4, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x).flatten(1))


class ConvDecoder(nn.Module):
    """(N, in_dim) latent + (N, C, H, W) noisy input + (N, E) noise features -> (N, C, H, W)."""

    def __init__(self, shape: tuple[int, int, int], channels: int, in_dim: int, embed_dim: int):
        super().__init__()
        c, h, w = shape
        self.channels = channels
        self.sizes = ((_down2(h), _down2(w)), (h, w))
        self.low = (_down4(h), _down4(w))
        self.proj = nn.Linear(in_dim, 2 * channels * self.low[0] * self.low[1])
        self.up1 = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.up2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.merge = nn.Conv2d(channels + c, channels, 3, padding=1)  # skip of the noisy input
        self.film = FiLM(embed_dim, channels)
        self.out = nn.Conv2d(channels, c, 3, padding=1)
        self.act = nn.SiLU()

    def forward(self, z: torch.Tensor, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.proj(z).reshape(z.shape[0], 2 * self.channels, *self.low)
        h = self.act(self.up1(nn.functional.interpolate(h, size=self.sizes[0], mode="nearest")))
        h = self.act(self.up2(nn.functional.interpolate(h, size=self.sizes[1], mode="nearest")))
        h = self.act(self.film(self.merge(torch.cat([h, x], dim=1)), e))
        return self.out(h)


def _down2(n: int) -> int:
    return math.ceil(n / 2)


def _down4(n: int) -> int:
    return _down2(_down2(n))


class GRUBackbone(nn.Module):
    """See the module docstring. ``forward(x, k, cond=None, cache=None)``; cache = hidden (L, B, H)."""

    causal = True
    max_tokens = None

    def __init__(
        self,
        token_shape,
        cond_dim: int,
        hidden: int,
        layers: int,
        embed: int,
        noise_embed: int,
        channels: int,
        patch: int = 1,
    ):
        super().__init__()
        self.token_shape = tuple(int(s) for s in token_shape)
        self.patch = patch
        self.cond_dim = int(cond_dim)
        self.hidden = hidden
        self.layers = layers
        self.image = len(self.token_shape) == 3
        self.noise = NoiseLevelEmbedding(noise_embed)
        if self.image:
            c, h, w = self.token_shape
            inner = (c * patch * patch, h // patch, w // patch)  # the token after space-to-depth
            self.x_enc: nn.Module = ConvEncoder(inner, channels, embed)
            x_dim = embed
        else:
            self.x_enc = nn.Identity()
            x_dim = self.token_shape[0]
        self.enc = mlp(x_dim + noise_embed + self.cond_dim, embed, hidden=embed, layers=2)
        self.gru = nn.GRU(embed, hidden, num_layers=layers, batch_first=True)
        if self.image:
            self.dec: nn.Module = ConvDecoder(inner, channels, hidden + embed, embed)
        else:
            self.dec = mlp(hidden + embed, self.token_shape[0], hidden=hidden, layers=2)

    # -- per-token encoder / decoder ----------------------------------------------------------
    def _encode(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        b, t = x.shape[:2]
        if tuple(x.shape[2:]) != self.token_shape:
            raise DataError(f"backbone 'gru': expected tokens of shape {self.token_shape}, got {tuple(x.shape[2:])}")
        if tuple(k.shape) != (b, t):
            raise DataError(f"backbone 'gru': noise levels k must have shape {(b, t)}, got {tuple(k.shape)}")
        feats = [self.x_enc(self._fold(x.flatten(0, 1))).reshape(b, t, -1), self.noise(k).to(x.dtype)]
        if self.cond_dim:
            if cond is None:  # no condition given: the null (all-zero) condition
                cond = x.new_zeros(b, t, self.cond_dim)
            if tuple(cond.shape) != (b, t, self.cond_dim):
                raise DataError(
                    f"backbone 'gru': cond must have shape {(b, t, self.cond_dim)}, got {tuple(cond.shape)}"
                )
            feats.append(cond.to(x.dtype))
        elif cond is not None and cond.shape[-1] != 0:
            raise DataError(f"backbone 'gru' was built with cond_dim=0 but got cond of shape {tuple(cond.shape)}")
        return self.enc(torch.cat(feats, dim=-1))

    def _decode(self, z: torch.Tensor, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, e], dim=-1)
        if not self.image:
            return self.dec(h)
        b = x.shape[0]
        out = self.dec(
            rearrange(h, "b t f -> (b t) f"),
            self._fold(rearrange(x, "b t c h w -> (b t) c h w")),
            rearrange(e, "b t f -> (b t) f"),
        )
        if self.patch > 1:
            out = nn.functional.pixel_shuffle(out, self.patch)
        return rearrange(out, "(b t) c h w -> b t c h w", b=b)

    def _fold(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C p^2, H / p, W / p): p x p pixel blocks as channels (identity for p = 1)."""
        return frames if self.patch == 1 else nn.functional.pixel_unshuffle(frames, self.patch)

    # -- backbone contract --------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None, cache: torch.Tensor | None = None
    ) -> torch.Tensor:
        if x.shape[1] == 0:
            return x.clone()
        e = self._encode(x, k, cond)
        z, _ = self.gru(e, self._check_cache(cache, x.shape[0]))  # z_t = GRU(z_{t-1}, e_t); cache is not modified
        return self._decode(z, e, x)

    def init_cache(self, batch_size: int) -> torch.Tensor:
        """The empty prefix: a zero hidden state (layers, B, hidden)."""
        p = self.gru.get_parameter("weight_hh_l0")
        return p.new_zeros(self.layers, batch_size, self.hidden)

    def append(
        self, cache: torch.Tensor, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Commit finished tokens: the hidden state after running them from ``cache``."""
        if x.shape[1] == 0:
            return cache
        _, h = self.gru(self._encode(x, k, cond), self._check_cache(cache, x.shape[0]))
        return h

    def _check_cache(self, cache: torch.Tensor | None, batch: int) -> torch.Tensor | None:
        if cache is not None and tuple(cache.shape) != (self.layers, batch, self.hidden):
            raise DataError(
                f"backbone 'gru': cache must have shape {(self.layers, batch, self.hidden)}, got {tuple(cache.shape)}"
            )
        return cache


def build_gru(
    token_shape: tuple,
    cond_dim: int = 0,
    max_tokens: int | None = None,
    hidden: int = 256,
    layers: int = 2,
    embed: int = 256,
    noise_embed: int = 64,
    channels: int = 32,
    patch: int = 1,
) -> GRUBackbone:
    """Build the GRU backbone. ``max_tokens`` is accepted and ignored (the GRU takes any length).

    hidden: GRU state size; layers: stacked GRU layers; embed: per-token feature size; noise_embed:
    noise-level embedding size; channels: conv width for (C, H, W) tokens (unused for vectors); patch:
    pixel blocks folded into channels before the convolutions (H and W must be multiples of it).
    """
    token_shape = tuple(token_shape)
    if len(token_shape) not in (1, 3):
        raise ConfigError(f"backbone 'gru': token_shape must be (D,) or (C, H, W), got {token_shape}")
    for key, value in dict(
        hidden=hidden, layers=layers, embed=embed, noise_embed=noise_embed, channels=channels, patch=patch
    ).items():
        check_int(f"backbone.{key}", value)
    if patch > 1 and (len(token_shape) != 3 or token_shape[1] % patch or token_shape[2] % patch):
        raise ConfigError(
            f"backbone.patch: {patch} needs image tokens (C, H, W) with H and W multiples of it, got {token_shape}"
        )
    if cond_dim < 0:
        raise ConfigError(f"backbone 'gru': cond_dim must be >= 0, got {cond_dim}")
    return GRUBackbone(token_shape, cond_dim, hidden, layers, embed, noise_embed, channels, patch)


@worldsim.hookimpl
def worldsim_add_backbones():
    return {"gru": build_gru}
