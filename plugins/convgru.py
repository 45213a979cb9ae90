"""Backbone ``convgru``: the recurrent Diffusion Forcing model with a spatial state, for frames and latents.

The ``gru`` backbone squeezes every frame into one vector before its recurrence, so the state must
re-learn where things are. Here the state is a feature map (a convolutional GRU, Ballas et al. 2016;
cf. ConvLSTM, Shi et al. 2015): position lives in the map, and moving an object is a local update.
Per token t (DF Sec. 3.1 with convolutions):

    e_t = enc(x_t^{k_t}) modulated by (k_t, cond_t)           conv features (C, h, w)
    z_t = ConvGRU(z_{t-1}, e_t)                               one map per layer
    out_t = dec([z_t, e_t, x_t^{k_t}]) modulated by (k_t, cond_t)

``patch`` > 1 folds p x p pixel blocks into channels first (space-to-depth), so everything runs at 1/p
of the resolution. Causal, any length (``max_tokens=None``); the rollout cache is the state maps
(layers, B, hidden, h, w). Uses only worldsim's public API, like any third-party plugin.
"""

from __future__ import annotations

import torch
from torch import nn

import worldsim
from worldsim.errors import ConfigError, DataError, check_int
from worldsim.nn import FiLM, NoiseLevelEmbedding, mlp


class ConvGRUCell(nn.Module):
    """nn.GRU's update with 3x3 convolutions: r, u gates; n = tanh(W_x e + r * W_h z); z' = (1 - u) n + u z."""

    def __init__(self, in_channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.from_x = nn.Conv2d(in_channels, 3 * hidden, 3, padding=1)
        self.from_h = nn.Conv2d(hidden, 3 * hidden, 3, padding=1)

    def forward(self, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        xr, xu, xn = self.from_x(e).chunk(3, dim=1)
        hr, hu, hn = self.from_h(z).chunk(3, dim=1)
        r, u = torch.sigmoid(xr + hr), torch.sigmoid(xu + hu)
        n = torch.tanh(xn + r * hn)
        return (1 - u) * n + u * z


class ConvGRUBackbone(nn.Module):
    """See the module docstring. ``forward(x, k, cond=None, cache=None)``; cache = (layers, B, hidden, h, w)."""

    causal = True
    max_tokens = None

    def __init__(self, token_shape, cond_dim: int, hidden: int, layers: int, channels: int, embed: int, patch: int):
        super().__init__()
        c, h, w = (int(s) for s in token_shape)
        self.token_shape = (c, h, w)
        self.cond_dim, self.hidden, self.layers, self.patch = int(cond_dim), hidden, layers, patch
        self.grid = (h // patch, w // patch)
        inner = c * patch * patch
        self.noise = NoiseLevelEmbedding(embed)
        self.cond = mlp(self.cond_dim, embed, hidden=embed) if self.cond_dim else None
        self.act = nn.SiLU()
        self.enc_in = nn.Conv2d(inner, channels, 3, padding=1)
        self.enc_film = FiLM(embed, channels)
        self.enc_out = nn.Conv2d(channels, channels, 3, padding=1)
        self.cells = nn.ModuleList([ConvGRUCell(channels if i == 0 else hidden, hidden) for i in range(layers)])
        self.dec_in = nn.Conv2d(hidden + channels + inner, channels, 3, padding=1)
        self.dec_film = FiLM(embed, channels)
        self.dec_mid = nn.Conv2d(channels, channels, 3, padding=1)
        self.dec_out = nn.Conv2d(channels, inner, 3, padding=1)

    # -- per token ------------------------------------------------------------------------------
    def _embed(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """(B, T, embed): noise level plus condition (a missing condition is the null, all-zero one)."""
        b, t = x.shape[:2]
        if tuple(x.shape[2:]) != self.token_shape:
            raise DataError(
                f"backbone 'convgru': expected tokens of shape {self.token_shape}, got {tuple(x.shape[2:])}"
            )
        if tuple(k.shape) != (b, t):
            raise DataError(f"backbone 'convgru': noise levels k must have shape {(b, t)}, got {tuple(k.shape)}")
        emb = self.noise(k).to(x.dtype)
        if self.cond is not None:
            if cond is None:
                cond = x.new_zeros(b, t, self.cond_dim)
            if tuple(cond.shape) != (b, t, self.cond_dim):
                raise DataError(
                    f"backbone 'convgru': cond must have shape {(b, t, self.cond_dim)}, got {tuple(cond.shape)}"
                )
            emb = emb + self.cond(cond.to(x.dtype))
        elif cond is not None and cond.shape[-1] != 0:
            raise DataError(f"backbone 'convgru' was built with cond_dim=0 but got cond of shape {tuple(cond.shape)}")
        return emb

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C p^2, H / p, W / p) (identity for p = 1)."""
        return nn.functional.pixel_unshuffle(x, self.patch)

    def _run(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None, z: torch.Tensor | None, decode: bool):
        """Encode all tokens at once, step the recurrence token by token; returns (outputs or None, last state)."""
        b, t = x.shape[:2]
        emb = self._embed(x, k, cond).flatten(0, 1)
        inner = self._fold(x.flatten(0, 1))
        e = self.enc_out(self.act(self.enc_film(self.act(self.enc_in(inner)), emb)))
        e = self.act(e).unflatten(0, (b, t))
        state = (
            list(self._check_cache(z, b).unbind(0))
            if z is not None
            else [e.new_zeros(b, self.hidden, *self.grid)] * self.layers
        )
        tops = []
        for i in range(t):
            h = e[:, i]
            for layer, cell in enumerate(self.cells):
                state[layer] = cell(h, state[layer])
                h = state[layer]
            tops.append(h)
        out = None
        if decode:
            top = torch.stack(tops, dim=1).flatten(0, 1)
            h = self.act(self.dec_in(torch.cat([top, e.flatten(0, 1), inner], dim=1)))
            h = self.act(self.dec_mid(self.act(self.dec_film(h, emb))))
            h = nn.functional.pixel_shuffle(self.dec_out(h), self.patch)
            out = h.unflatten(0, (b, t))
        return out, torch.stack(state)

    # -- backbone contract ----------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None, cache: torch.Tensor | None = None
    ):
        if x.shape[1] == 0:
            return x.clone()
        return self._run(x, k, cond, cache, decode=True)[0]

    def init_cache(self, batch_size: int) -> torch.Tensor:
        """The empty prefix: zero state maps (layers, B, hidden, h, w)."""
        p = self.enc_in.weight
        return p.new_zeros(self.layers, batch_size, self.hidden, *self.grid)

    def append(
        self, cache: torch.Tensor, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Commit finished tokens: the state maps after running them from ``cache``."""
        if x.shape[1] == 0:
            return cache
        return self._run(x, k, cond, cache, decode=False)[1]

    def _check_cache(self, cache: torch.Tensor, batch: int) -> torch.Tensor:
        want = (self.layers, batch, self.hidden, *self.grid)
        if tuple(cache.shape) != want:
            raise DataError(f"backbone 'convgru': cache must have shape {want}, got {tuple(cache.shape)}")
        return cache


def build_convgru(
    token_shape: tuple,
    cond_dim: int = 0,
    max_tokens: int | None = None,
    hidden: int = 64,
    layers: int = 1,
    channels: int = 64,
    embed: int = 128,
    patch: int = 1,
) -> ConvGRUBackbone:
    """Build the ConvGRU backbone for (C, H, W) tokens. ``max_tokens`` is accepted and ignored (any length).

    hidden: channels of each state map; layers: stacked ConvGRU cells; channels: encoder/decoder width;
    embed: noise-level / condition embedding size; patch: pixel blocks folded into channels first
    (H and W must be multiples of it).
    """
    token_shape = tuple(int(s) for s in token_shape)
    if len(token_shape) != 3:
        raise ConfigError(f"backbone 'convgru': needs image or latent tokens (C, H, W), got token_shape {token_shape}")
    for key, value in dict(hidden=hidden, layers=layers, channels=channels, embed=embed, patch=patch).items():
        check_int(f"backbone.{key}", value)
    if token_shape[1] % patch or token_shape[2] % patch:
        raise ConfigError(f"backbone.patch: {patch} must divide the token height and width {token_shape[1:]}")
    if isinstance(cond_dim, bool) or not isinstance(cond_dim, int) or cond_dim < 0:
        raise ConfigError(f"backbone 'convgru': cond_dim must be an integer >= 0, got {cond_dim!r}")
    return ConvGRUBackbone(token_shape, cond_dim, hidden, layers, channels, embed, patch)


@worldsim.hookimpl
def worldsim_add_backbones():
    return {"convgru": build_convgru}
