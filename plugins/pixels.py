"""Tokenizer ``pixels``: RGB frames as diffusion tokens, one frame per token.

obs (B, L, H, W, C) with values in [0, 255] (uint8 or float) -> tokens (B, L, C, H, W) in [-1, 1]
(x = obs / 127.5 - 1). ``decode`` is the exact inverse and does not clamp, so a generated frame that
overshoots stays visible to metrics; clamp (and round) to [0, 255] only to display or store it.
Nothing to fit. Uses only worldsim's public API.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

import worldsim
from worldsim.errors import ConfigError, DataError

HALF_RANGE = 127.5


class PixelTokenizer(nn.Module):
    frames_per_token = 1

    def __init__(self, frame_shape: tuple[int, int, int]):
        super().__init__()
        self.frame_shape = tuple(frame_shape)
        h, w, c = self.frame_shape
        self.token_shape = (c, h, w)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, L, H, W, C) frames in [0, 255] -> (B, L, C, H, W) tokens in [-1, 1]."""
        if obs.dim() != 5 or tuple(obs.shape[2:]) != self.frame_shape:
            raise DataError(
                f"tokenizer 'pixels': expected frames (B, L, {', '.join(map(str, self.frame_shape))}), "
                f"got shape {tuple(obs.shape)}"
            )
        return rearrange(obs.float() / HALF_RANGE - 1.0, "b l h w c -> b l c h w")

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) tokens -> (B, T, H, W, C) frames on the [0, 255] scale (not clamped)."""
        if x.dim() != 5 or tuple(x.shape[2:]) != self.token_shape:
            raise DataError(
                f"tokenizer 'pixels': expected tokens (B, T, {', '.join(map(str, self.token_shape))}), "
                f"got shape {tuple(x.shape)}"
            )
        return rearrange((x + 1.0) * HALF_RANGE, "b t c h w -> b t h w c")


def build_pixels(obs_shape: tuple) -> PixelTokenizer:
    """obs_shape: one frame (H, W, C), channels last."""
    obs_shape = tuple(int(s) for s in obs_shape)
    if len(obs_shape) != 3 or obs_shape[2] not in (1, 3, 4):
        raise ConfigError(f"tokenizer 'pixels' expects frames (H, W, C) with C in 1, 3 or 4, got obs_shape {obs_shape}")
    return PixelTokenizer(obs_shape)


@worldsim.hookimpl
def worldsim_add_tokenizers():
    return {"pixels": build_pixels}
