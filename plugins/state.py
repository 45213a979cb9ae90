"""Tokenizer ``state``: vector observations -> normalized, frame-stacked tokens.

obs (B, L, D) -> normalize per dimension (``gaussian`` or ``limits`` = [min, max] -> [-1, 1], fitted
on data) -> stack ``frame_stack`` consecutive steps per token: tokens (B, L / fs, fs * D). DF's maze
planning uses frame_stack 10 (DF App. D). ``decode`` inverts both steps exactly. Statistics live in
buffers, so a checkpointed state dict restores a fitted tokenizer.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

import worldsim
from worldsim.data.normalizers import NORMALIZERS, Normalizer
from worldsim.errors import ConfigError, DataError


class StateTokenizer(nn.Module):
    def __init__(self, dim: int, normalizer: str, frame_stack: int):
        super().__init__()
        self.obs_dim = dim
        self.frames_per_token = frame_stack
        self.token_shape = (frame_stack * dim,)
        self.normalizer = Normalizer(normalizer, dim)

    @property
    def fitted(self) -> bool:
        return self.normalizer.fitted

    def fit(self, obs: torch.Tensor) -> StateTokenizer:
        """Fit the normalizer on observations (N, D) (any leading dimensions are flattened)."""
        self.normalizer.fit(obs)
        return self

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, L, D) observations -> (B, L / frame_stack, frame_stack * D) tokens."""
        self._check_fitted("encode")
        if obs.dim() != 3 or obs.shape[-1] != self.obs_dim:
            raise DataError(
                f"tokenizer 'state': expected observations (B, L, {self.obs_dim}), got shape {tuple(obs.shape)}"
            )
        if obs.shape[1] % self.frames_per_token:
            raise DataError(
                f"tokenizer 'state': sequence length {obs.shape[1]} is not divisible by frame_stack={self.frames_per_token}"
            )
        return rearrange(self.normalizer.normalize(obs), "b (t f) d -> b t (f d)", f=self.frames_per_token)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, frame_stack * D) tokens -> (B, T * frame_stack, D) observations."""
        self._check_fitted("decode")
        if x.dim() != 3 or tuple(x.shape[2:]) != self.token_shape:
            raise DataError(
                f"tokenizer 'state': expected tokens (B, T, {self.token_shape[0]}), got shape {tuple(x.shape)}"
            )
        return self.normalizer.unnormalize(rearrange(x, "b t (f d) -> b (t f) d", f=self.frames_per_token))

    def _check_fitted(self, what: str) -> None:
        if not self.fitted:
            raise DataError(
                f"tokenizer 'state': {what}() before fit(); call fit(observations) on the data set or load a fitted state dict"
            )


def build_state(obs_shape: tuple, normalizer: str = "gaussian", frame_stack: int = 1) -> StateTokenizer:
    """normalizer: one of gaussian | limits | none; frame_stack: env steps per token."""
    obs_shape = tuple(obs_shape)
    if len(obs_shape) != 1:
        raise ConfigError(f"tokenizer 'state' expects vector observations (D,), got obs_shape {obs_shape}")
    if normalizer not in NORMALIZERS:
        raise ConfigError(
            f"tokenizer.normalizer: unknown normalizer {normalizer!r}; expected one of {list(NORMALIZERS)}"
        )
    if not isinstance(frame_stack, int) or isinstance(frame_stack, bool) or frame_stack < 1:
        raise ConfigError(f"tokenizer.frame_stack: expected a positive integer, got {frame_stack!r}")
    return StateTokenizer(int(obs_shape[0]), normalizer, frame_stack)


@worldsim.hookimpl
def worldsim_add_tokenizers():
    return {"state": build_state}
