"""The GRU backbone: a genuine recurrence z_t = GRU(z_{t-1}, enc(x_t, k_t, c_t)), causal, exact cache."""

from __future__ import annotations

import pytest
import torch

from worldsim.diffusion.model import DiffusionModel
from worldsim.errors import ConfigError, DataError
from worldsim.testing import check_backbone
from worldsim_plugins.gru import build_gru

SMALL = dict(hidden=12, layers=2, embed=10, noise_embed=8)


def _model(token_shape=(3,), cond_dim=2, **kw):
    torch.manual_seed(0)
    return build_gru(token_shape, cond_dim, None, **{**SMALL, **kw}).double().eval()


def _inputs(B, T, token_shape=(3,), cond_dim=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, *token_shape, generator=g, dtype=torch.float64)
    k = torch.rand(B, T, generator=g, dtype=torch.float64)
    c = torch.randn(B, T, cond_dim, generator=g, dtype=torch.float64) if cond_dim else None
    return x, k, c


def _reference(model, x, k, c):
    """Slow float64 reference: the GRU equations (Cho et al. 2014, as in torch.nn.GRU) one token at a time."""
    e = model._encode(x, k, c)
    B, T = x.shape[:2]
    hs = [torch.zeros(B, model.hidden, dtype=torch.float64) for _ in range(model.layers)]
    zs = []
    for t in range(T):
        inp = e[:, t]
        for layer in range(model.layers):
            w_ih, w_hh = getattr(model.gru, f"weight_ih_l{layer}"), getattr(model.gru, f"weight_hh_l{layer}")
            b_ih, b_hh = getattr(model.gru, f"bias_ih_l{layer}"), getattr(model.gru, f"bias_hh_l{layer}")
            gi, gh = inp @ w_ih.T + b_ih, hs[layer] @ w_hh.T + b_hh
            (ir, iz, in_), (hr, hz, hn) = gi.chunk(3, -1), gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            hs[layer] = (1 - z) * n + z * hs[layer]
            inp = hs[layer]
        zs.append(inp)
    return model._decode(torch.stack(zs, 1), e, x)


@torch.no_grad()
def test_forward_is_the_gru_recurrence():
    model = _model()
    x, k, c = _inputs(2, 7)
    torch.testing.assert_close(model(x, k, c), _reference(model, x, k, c), atol=1e-12, rtol=0)


@pytest.mark.parametrize("token_shape, cond_dim", [((3,), 2), ((3,), 0), ((2, 5, 7), 1)])
def test_conformance_kit_passes(token_shape, cond_dim):
    check_backbone(build_gru, token_shape, cond_dim, seq_len=4, **SMALL, channels=4)


@torch.no_grad()
def test_output_at_t_does_not_see_the_future():
    model = _model()
    x, k, c = _inputs(2, 8)
    out = model(x, k, c)
    x2, k2, c2 = x.clone(), k.clone(), c.clone()
    x2[:, 5:] = 100.0
    k2[:, 5:] = 0.0
    c2[:, 5:] = -3.0
    out2 = model(x2, k2, c2)
    assert torch.equal(out[:, :5], out2[:, :5])
    assert (out[:, 5:] - out2[:, 5:]).abs().amin(dim=-1).gt(0).all()


@torch.no_grad()
def test_cache_reproduces_full_forward_over_a_1000_token_rollout():
    model = _model()
    T = 1200
    x, k, c = _inputs(2, T)
    full = model(x, k, c)
    cache, outs = model.init_cache(2), []
    for s in range(0, T, 7):  # chunks of 7 tokens, as a chunked sampler appends them
        sl = slice(s, min(s + 7, T))
        before = cache.clone()
        outs.append(model(x[:, sl], k[:, sl], c[:, sl], cache=cache))
        assert torch.equal(cache, before), "forward with a cache must not change it"
        cache = model.append(cache, x[:, sl], k[:, sl], c[:, sl])
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=0)
    # the final state equals one append of the whole sequence
    torch.testing.assert_close(cache, model.append(model.init_cache(2), x, k, c), atol=1e-10, rtol=0)


def test_float32_cache_matches_full_forward():
    torch.manual_seed(0)
    model = build_gru((3,), 2, None, **SMALL).eval()
    x, k, c = (t.float() for t in _inputs(2, 64))
    with torch.no_grad():
        full = model(x, k, c)
        h = model.append(model.init_cache(2), x[:, :40], k[:, :40], c[:, :40])
        tail = model(x[:, 40:], k[:, 40:], c[:, 40:], cache=h)
    torch.testing.assert_close(tail, full[:, 40:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_diffusion_model_sees_a_causal_cached_unlimited_backbone():
    dm = DiffusionModel(_model(cond_dim=0), "cosine", "v")
    assert dm.causal and dm.supports_cache and dm.max_tokens is None
    cache = dm.init_cache(3)
    assert cache.shape == (2, 3, 12) and cache.dtype == torch.float64 and not cache.any()
    x, k, _ = _inputs(3, 5, cond_dim=0)
    assert dm(x, k).shape == x.shape


@torch.no_grad()
def test_missing_cond_is_the_zero_condition_and_shapes_are_checked():
    model = _model()
    x, k, c = _inputs(2, 4)
    assert torch.equal(model(x, k), model(x, k, torch.zeros_like(c)))
    with pytest.raises(DataError, match=r"tokens of shape \(3,\)"):
        model(torch.zeros(2, 4, 5, dtype=torch.float64), k, c)
    with pytest.raises(DataError, match=r"cond must have shape \(2, 4, 2\)"):
        model(x, k, c[..., :1])
    with pytest.raises(DataError, match=r"noise levels k"):
        model(x, k[:, :3], c)
    with pytest.raises(DataError, match=r"cache must have shape"):
        model(x, k, c, cache=torch.zeros(1, 2, 12, dtype=torch.float64))
    assert model(x[:, :0], k[:, :0], c[:, :0]).shape == (2, 0, 3)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (((3, 4), 0, None), {}, r"token_shape must be \(D,\) or \(C, H, W\)"),
        (((3,), 0, None), {"hidden": 0}, r"backbone.hidden"),
        (((3,), 0, None), {"layers": 1.5}, r"backbone.layers"),
    ],
)
def test_bad_configuration_raises_config_error(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_gru(*args, **kwargs)


def test_learns_to_copy_the_previous_token():
    """The recurrence carries information forward: predicting the previous token (impossible for a
    per-token model, whose loss would stay ~2 * var = 2) is learned in a few steps."""
    torch.manual_seed(0)
    model = build_gru((2,), 0, None, hidden=16, layers=1, embed=16, noise_embed=8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        x = torch.randn(16, 6, 2, generator=g)
        out = model(x, torch.zeros(16, 6))
        loss = (out[:, 1:] - x[:, :-1]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:10]) / 10
