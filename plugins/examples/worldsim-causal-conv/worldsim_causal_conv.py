# worldsim_causal_conv.py
import torch
from torch import nn

import worldsim
from worldsim.nn import NoiseLevelEmbedding


class CausalConv(nn.Module):
    """out_t = f(x_{t-2..t}, k_t, cond_t): causal because the convolution is padded on the left only."""

    causal = True

    def __init__(self, token_shape, cond_dim, max_tokens, width=64, kernel=3):
        super().__init__()
        (dim,) = token_shape
        self.max_tokens = None  # any length
        self.kernel = kernel
        self.noise = NoiseLevelEmbedding(width)
        self.inp = nn.Linear(dim + cond_dim, width)
        self.conv = nn.Conv1d(width, width, kernel)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(width, dim))

    def forward(self, x, k, cond=None, cache=None):
        h = self.inp(x if cond is None else torch.cat([x, cond], -1)) + self.noise(k)
        h = nn.functional.pad(h.transpose(1, 2), (self.kernel - 1, 0))  # (B, width, T), left-padded
        return x + self.out(self.conv(h).transpose(1, 2))


@worldsim.hookimpl
def worldsim_add_backbones():
    return {"causal_conv": CausalConv}
