"""The DiT backbone: conformance, windowed K/V cache == full forward over the visible window, sampler parity."""

from __future__ import annotations

import pytest
import torch
from helpers import sampling_settings

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.sampling import sample
from worldsim.errors import ConfigError, DataError
from worldsim.nn import apply_rotary, rotary_angles
from worldsim.testing import check_backbone
from worldsim_plugins.dit import build_dit

SMALL = dict(width=16, depth=2, heads=2, mlp_ratio=2)


def _model(token_shape=(16,), cond_dim=2, max_tokens=6, **kw):
    torch.manual_seed(0)
    model = build_dit(token_shape, cond_dim, max_tokens, **{**SMALL, **kw}).double().eval()
    with torch.no_grad():  # leave the zero init (adaLN-Zero / zero final layer) so every path matters
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _inputs(B, T, token_shape=(16,), cond_dim=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, *token_shape, generator=g, dtype=torch.float64)
    k = torch.rand(B, T, generator=g, dtype=torch.float64)
    c = torch.randn(B, T, cond_dim, generator=g, dtype=torch.float64) if cond_dim else None
    return x, k, c


def _sl(c, a, b):
    return None if c is None else c[:, a:b]


CASES = [
    ((16,), 0, "factorized"),
    ((16,), 3, "factorized"),
    ((16,), 3, "joint"),
    ((4, 8, 8), 2, "factorized"),
    ((4, 8, 8), 2, "joint"),
]


@pytest.mark.parametrize("token_shape, cond_dim, attention", CASES)
def test_conformance_kit_passes(token_shape, cond_dim, attention):
    check_backbone(build_dit, token_shape, cond_dim, seq_len=4, attention=attention, **SMALL)


def test_conformance_kit_passes_with_a_window():
    check_backbone(build_dit, (4, 8, 8), 2, max_tokens=3, seq_len=4, attention="joint", **SMALL)


@pytest.mark.parametrize(
    "token_shape, attention", [((16,), "factorized"), ((4, 8, 8), "factorized"), ((4, 8, 8), "joint")]
)
@torch.no_grad()
def test_cached_rollout_past_the_window_equals_full_forward_over_the_visible_window(token_shape, attention):
    W, T, B = 5, 14, 2
    model = _model(token_shape, 2, W, attention=attention)
    x, k, c = _inputs(B, T, token_shape)
    cache, s = model.init_cache(B), 0
    for n in (2, 1, 3, 2, 2, 1, 3):  # uneven chunks, as a sampler commits them; well past the window
        lo = max(0, s + n - W)  # the visible window: the most recent W tokens ending with the chunk
        before = {key: [t.clone() for t in v] if isinstance(v, list) else v.clone() for key, v in cache.items()}
        step = model(x[:, s : s + n], k[:, s : s + n], _sl(c, s, s + n), cache=cache)
        ref = model(x[:, lo : s + n], k[:, lo : s + n], _sl(c, lo, s + n))[:, -n:]
        torch.testing.assert_close(step, ref, atol=1e-10, rtol=0)
        assert all(torch.equal(a, b) for a, b in zip(_flat(cache), _flat(before), strict=True)), (
            "forward modified the cache"
        )
        cache = model.append(cache, x[:, s : s + n], k[:, s : s + n], _sl(c, s, s + n))
        s += n
        # the cache holds the last W committed tokens, exactly as if built afresh from them
        lo = max(0, s - W)
        assert cache["h"].shape[1] == min(s, W)
        fresh = model.append(model.init_cache(B), x[:, lo:s], k[:, lo:s], _sl(c, lo, s))
        for a, b in zip(_flat(cache), _flat(fresh), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=0)
    assert s == T


def _flat(cache):
    return [cache["h"], cache["c"], *cache["k"], *cache["v"]]


@pytest.mark.parametrize(
    "token_shape, max_tokens, attention",
    [((16,), 6, "factorized"), ((16,), None, "factorized"), ((4, 8, 8), 4, "joint")],
)
def test_sampler_with_and_without_cache_gives_the_same_tokens(token_shape, max_tokens, attention):
    dm = DiffusionModel(_model(token_shape, 2, max_tokens, attention=attention), "cosine", "v")
    B, n_ctx, horizon = 2, 3, 10  # horizon well past the window
    ctx, _, cond = _inputs(B, n_ctx + horizon, token_shape)
    kw = dict(horizon=horizon, context=ctx[:, :n_ctx], cond=cond)
    s = dict(steps=4, chunk_size=2, stabilization_level=0.1, eta=0.5)
    assert dm.supports_cache
    cached = sample(dm, sampling_settings(use_cache=True, **s), generator=torch.Generator().manual_seed(0), **kw)
    plain = sample(dm, sampling_settings(use_cache=False, **s), generator=torch.Generator().manual_seed(0), **kw)
    assert cached.shape == (B, horizon, *token_shape)
    torch.testing.assert_close(cached, plain, atol=1e-9, rtol=0)


def test_rotary_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 12, generator=g, dtype=torch.float64)
    pos = torch.tensor([[3.0, 1.0, 2.0], [5.0, 4.0, 0.0]], dtype=torch.float64)

    def score(shift):
        a = rotary_angles(pos + shift, 12)
        return (apply_rotary(q, a[0]) * apply_rotary(k, a[1])).sum()

    assert abs(float(score(0.0) - score(torch.tensor([7.0, -2.0, 11.0])))) < 1e-10
    assert abs(float(score(0.0) - (q * k).sum())) > 1e-3  # but it does depend on positions
    assert rotary_angles(torch.arange(4), 8).shape == (4, 4)


@torch.no_grad()
def test_shapes_and_window_are_checked():
    model = _model((16,), 2, 4)
    x, k, c = _inputs(2, 5)
    assert model.causal and model.max_tokens == 4
    with pytest.raises(DataError, match=r"more than its window max_tokens=4"):
        model(x, k, c)
    with pytest.raises(DataError, match=r"cond must have shape \(2, 4, 2\)"):
        model(x[:, :4], k[:, :4], c[:, :4, :1])
    with pytest.raises(DataError, match=r"tokens of shape \(16,\)"):
        model(x[:, :4, :3], k[:, :4], c[:, :4])
    assert torch.equal(model(x[:, :3], k[:, :3]), model(x[:, :3], k[:, :3], torch.zeros_like(c[:, :3])))
    assert model(x[:, :0], k[:, :0], c[:, :0]).shape == (2, 0, 16)


@pytest.mark.parametrize(
    "token_shape, kwargs, match",
    [
        ((16,), {"attention": "full"}, r"backbone.attention: expected one of factorized, joint, got 'full'"),
        ((16,), {"heads": 3}, r"backbone.heads: expected a divisor of backbone.width=128"),
        ((16,), {"width": 8, "heads": 8}, r"backbone.heads: the head size"),
        ((4, 8, 8), {"patch": 3}, r"backbone.patch: expected a divisor"),
        ((16,), {"depth": 0}, r"backbone.depth: got 0; expected a positive integer"),
        ((16,), {"mlp_ratio": 0}, r"backbone.mlp_ratio"),
        ((16,), {"rope_base": 1.0}, r"backbone.rope_base: expected a number > 1"),
        ((3, 4), {}, r"token_shape must be \(D,\) or \(C, H, W\)"),
    ],
)
def test_bad_arguments_raise_config_error(token_shape, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_dit(token_shape, 0, 8, **kwargs)


def test_train_and_roll_out_end_to_end(tmp_path):
    from worldsim.cli import main

    run_dir = str(tmp_path / "run")
    overrides = ["experiment=toy", "backbone=dit", "backbone.width=32", "backbone.depth=2", "trainer.steps=3",
                 "trainer.batch_size=4", "dataset.num_episodes=8", "data.seq_len=8", f"run.dir={run_dir}"]  # fmt: skip
    assert main(["train", *overrides]) == 0
    assert main(["rollout", run_dir, "--frames", "64", "--episodes", "2", "sampling.steps=3"]) == 0


def test_non_causal_dit_passes_the_kit_sees_later_tokens_and_has_no_cache():
    check_backbone(build_dit, (4, 8, 8), 2, max_tokens=4, seq_len=4, causal=False, **SMALL)
    torch.manual_seed(0)
    net = build_dit((4, 8, 8), 2, max_tokens=4, causal=False, **SMALL).eval()
    assert not net.causal and not hasattr(net, "init_cache")
    with torch.no_grad():  # the zero-initialized adaLN gates and head would hide every input
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, k, cond = torch.randn(1, 4, 4, 8, 8), torch.rand(1, 4), torch.randn(1, 4, 2)
    later = x.clone()
    later[:, 3] += 1.0
    with torch.no_grad():
        assert (net(later, k, cond)[:, 0] - net(x, k, cond)[:, 0]).abs().max() > 1e-4  # token 0 sees token 3
    model = DiffusionModel(net, schedule="sigmoid", prediction="v")
    assert not model.supports_cache
    with pytest.raises(ConfigError, match="backbone.causal"):
        build_dit((4, 8, 8), 2, causal="no", **SMALL)


def test_keyframes_need_a_non_causal_backbone_and_interpolate_between_clean_keyframes():
    torch.manual_seed(0)
    causal = DiffusionModel(build_dit((4, 8, 8), 2, max_tokens=8, **SMALL), schedule="sigmoid", prediction="v")
    ctx, cond = torch.randn(2, 2, 4, 8, 8), torch.randn(2, 10, 2)
    with pytest.raises(ConfigError, match="keyframes needs a backbone that is not causal"):
        sample(causal, sampling_settings(steps=3, schedule="keyframes"), horizon=8, context=ctx, cond=cond)
    net = build_dit((4, 8, 8), 2, max_tokens=8, causal=False, **SMALL).eval()
    model = DiffusionModel(net, schedule="sigmoid", prediction="v")
    seen = []
    out = sample(
        model, sampling_settings(steps=3, schedule="keyframes", keyframe_stride=2, chunk_size=4), horizon=8,
        context=ctx, cond=cond, generator=torch.Generator().manual_seed(0),
        callback=lambda info: seen.append(info["k"][0].tolist()),
    )  # fmt: skip
    assert out.shape == (2, 8, 4, 8, 8) and torch.isfinite(out).all()
    # per chunk of 4 (two chunks): tokens 1 and 3 (the keyframes) reach 0 while 0 and 2 wait at 1, then 0 and 2 walk
    assert [[round(3 * k) for k in row] for row in seen[:7]] == [  # noise indices (steps = 3)
        [3, 3, 3, 3],
        [3, 2, 3, 2],
        [3, 1, 3, 1],
        [3, 0, 3, 0],
        [2, 0, 2, 0],
        [1, 0, 1, 0],
        [0, 0, 0, 0],
    ]
    assert len(seen) == 14
