"""The conformance kit passes correct components and names the property a broken one violates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from worldsim.testing import check_backbone, check_objective, check_tokenizer
from worldsim_plugins.gru import build_gru


class Toy(nn.Module):
    """A tiny causal backbone: running sums of per-token features (cache = the running sum).
    Flags break exactly one property each."""

    causal = True
    max_tokens = None

    def __init__(
        self,
        token_shape,
        cond_dim,
        max_tokens=None,
        *,
        peek=False,
        ignore_k=False,
        mix_batch=False,
        bad_cache=False,
        unused=False,
        zero_out=False,
        unsaved=False,
        drop_cond=False,
        shape_bug=False,
    ):
        super().__init__()
        d = token_shape[0]
        self.flags = dict(
            peek=peek,
            ignore_k=ignore_k,
            mix_batch=mix_batch,
            bad_cache=bad_cache,
            drop_cond=drop_cond,
            shape_bug=shape_bug,
        )
        self.inp = nn.Linear(d + 1 + cond_dim, 8)
        self.out = nn.Linear(8 + d + 1, d)
        if zero_out:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
        if unused:
            self.spare = nn.Linear(3, 3)
        self.offset = torch.randn(d) if unsaved else torch.zeros(d)  # not a buffer when `unsaved`

    def _feat(self, x, k, cond):
        kk = torch.zeros_like(k) if self.flags["ignore_k"] else k
        parts = [x, kk[..., None]] + (
            [] if cond is None else [torch.zeros_like(cond) if self.flags["drop_cond"] else cond]
        )
        return torch.tanh(self.inp(torch.cat(parts, -1)))

    def forward(self, x, k, cond=None, cache=None):
        h = self._feat(x, k, cond)
        s = h.cumsum(1) + (0 if cache is None else cache[:, None])
        if self.flags["peek"]:
            s = s + h[:, -1:]  # every token sees the last one: not causal
        if self.flags["mix_batch"]:
            s = s + s.mean(0, keepdim=True)
        kk = torch.zeros_like(k) if self.flags["ignore_k"] else k
        y = self.out(torch.cat([s, x, kk[..., None]], -1)) + self.offset.to(x.dtype)
        return y[:, :, :-1] if self.flags["shape_bug"] else y

    def init_cache(self, batch_size):
        return self.inp.weight.new_zeros(batch_size, 8)

    def append(self, cache, x, k, cond=None):
        h = self._feat(x, k, cond)
        return cache + (h[:, :-1] if self.flags["bad_cache"] else h).sum(1)  # bad_cache forgets the last token


def toy(token_shape, cond_dim, max_tokens=None, **kw):
    return Toy(token_shape, cond_dim, max_tokens, **kw)


def test_correct_backbones_pass():
    check_backbone(toy, (3,), 2)
    check_backbone(toy, (3,), 0, dtype=torch.float32)
    check_backbone(toy, (3,), 2, zero_out=True)  # zero-initialized output layers are fine
    check_backbone(build_gru, (3,), 2, hidden=8, embed=8, noise_embed=4, layers=1)


@pytest.mark.parametrize(
    "flag, match",
    [
        ("peek", r"^causality: backbone declares causal=True but perturbing tokens > 0 changed the output at token 0"),
        ("ignore_k", r"^noise level: changing the noise level of token 0 does not change the output at token 0"),
        ("mix_batch", r"^batch independence:"),
        ("bad_cache", r"^cache: cache of tokens < 1 \+ forward differs from the full forward at token 1"),
        ("unused", r"^gradients: no gradient reaches parameter\(s\) \['spare.weight', 'spare.bias'\]"),
        ("unsaved", r"^state_dict: a fresh instance loaded from the state dict gives a different output"),
        ("drop_cond", r"^cond: changing cond \(cond_dim=2\) does not change the output"),
        ("shape_bug", r"^shape: output shape"),
    ],
)
def test_broken_backbone_fails_naming_the_property(flag, match):
    with pytest.raises(AssertionError, match=match):
        check_backbone(toy, (3,), 2, **{flag: True})


class Bidirectional(nn.Module):
    """Non-causal, no cache (like a full-sequence transformer): sees every token."""

    causal = False
    max_tokens = 4

    def __init__(self, token_shape, cond_dim, max_tokens=None):
        super().__init__()
        self.inner = Toy(token_shape, cond_dim, peek=True)

    def forward(self, x, k, cond=None, cache=None):
        assert x.shape[1] <= self.max_tokens, "the kit must respect max_tokens"
        return self.inner(x, k, cond)


def test_non_causal_backbone_without_cache_passes():
    check_backbone(Bidirectional, (3,), 2)


def test_cache_declared_on_a_non_causal_backbone_fails():
    class Wrong(Toy):
        causal = False

    with pytest.raises(AssertionError, match=r"^cache: .*causal=False"):
        check_backbone(lambda token_shape, cond_dim, max_tokens: Wrong(token_shape, cond_dim), (3,), 0)


class Scale(nn.Module):
    """Tokenizer: x = obs / scale with frame stacking 2; the scale is fitted."""

    frames_per_token = 2

    def __init__(self, obs_shape, as_buffer=True, lossy=False):
        super().__init__()
        self.token_shape = (2 * obs_shape[0],)
        self.lossy = lossy
        if as_buffer:
            self.register_buffer("scale", torch.ones(1))
        else:
            self.scale = torch.ones(1)

    def fit(self, obs):
        self.scale.fill_(float(obs.abs().max()))

    def encode(self, obs):
        x = (obs / self.scale).reshape(obs.shape[0], obs.shape[1] // 2, -1)
        return x.round() if self.lossy else x

    def decode(self, x):
        return (x * self.scale).reshape(x.shape[0], x.shape[1] * 2, -1)


def test_check_tokenizer():
    check_tokenizer(Scale, (3,))
    check_tokenizer(Scale, (3,), lossy=True, roundtrip_atol=None)  # lossy tokenizers opt out of the round trip
    with pytest.raises(AssertionError, match=r"^round trip: decode\(encode\(obs\)\) differs"):
        check_tokenizer(Scale, (3,), lossy=True)
    with pytest.raises(
        AssertionError, match=r"^state_dict: a fresh instance loaded from the state dict encodes differently"
    ):
        check_tokenizer(Scale, (3,), as_buffer=False)


def goal(x, ctx):
    return -(x[..., :2] - ctx["goal"]).norm(dim=-1).sum(1)  # DF's goal objective: -sum_t ||p_t - g||


@pytest.mark.parametrize(
    "objective, match",
    [
        (lambda x, ctx: goal(x, ctx) - goal(x, ctx).mean(), r"^batch independence:"),
        (lambda x, ctx: goal(x.detach(), ctx), r"^gradient: objective value does not depend differentiably"),
        (lambda x, ctx: goal(x, ctx)[:, None], r"^shape: objective returned"),
        (lambda x, ctx: goal(x, ctx) * 0 + x[1:2, 0, 0], r"^gradient: gradient of the value of sample 0 .* is zero"),
    ],
)
def test_check_objective(objective, match):
    ctx = {"goal": torch.tensor([1.0, -1.0])}
    check_objective(goal, (4,), ctx=ctx)
    with pytest.raises(AssertionError, match=match):
        check_objective(objective, (4,), ctx=ctx)
