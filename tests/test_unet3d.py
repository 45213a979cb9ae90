"""The 3D U-Net backbone: factorized space-time U-Net, causal temporal attention, sliding-window K/V cache."""

from __future__ import annotations

import pytest
import torch
from helpers import sampling_settings

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.sampling import sample
from worldsim.errors import ConfigError, DataError
from worldsim.testing import check_backbone
from worldsim_plugins.unet3d import build_unet3d

SMALL = dict(channels=16, heads=2, embed=32, groups=4)


def _model(token_shape=(4, 8, 8), cond_dim=2, max_tokens=None, **kw):
    torch.manual_seed(0)
    model = build_unet3d(token_shape, cond_dim, max_tokens, **{**SMALL, **kw}).double()
    with torch.no_grad():  # leave the zero-initialized (identity) residual branches
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def _inputs(B, T, token_shape=(4, 8, 8), cond_dim=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, *token_shape, generator=g, dtype=torch.float64)
    k = torch.rand(B, T, generator=g, dtype=torch.float64)
    c = torch.randn(B, T, cond_dim, generator=g, dtype=torch.float64) if cond_dim else None
    return x, k, c


@pytest.mark.parametrize(
    "token_shape, cond_dim, max_tokens", [((4, 8, 8), 2, None), ((4, 8, 8), 0, 4), ((3, 16, 16), 0, None)]
)
def test_conformance_kit_passes(token_shape, cond_dim, max_tokens):
    model = check_backbone(build_unet3d, token_shape, cond_dim, max_tokens=max_tokens, **SMALL)
    assert model.causal is True and model.max_tokens == max_tokens


@torch.no_grad()
def test_cached_rollout_past_the_window_equals_the_sliding_window_forward():
    """Chunk after chunk far past the window, the oldest frames dropped from the cache, equals one full
    forward over the whole sequence in which every temporal attention layer sees its last W frames."""
    W, T, chunk = 4, 15, 3
    model = _model(max_tokens=W)
    x, k, c = _inputs(2, T)
    full = model(x, k, c)
    cache, outs = model.init_cache(2), []
    for s in range(0, T, chunk):
        sl = slice(s, min(s + chunk, T))
        before = {"pos": cache["pos"].clone(), "kv": [(a.clone(), b.clone()) for a, b in cache["kv"]]}
        outs.append(model(x[:, sl], k[:, sl], c[:, sl], cache=cache))
        assert torch.equal(cache["pos"], before["pos"])
        assert all(
            torch.equal(a, a0) and torch.equal(b, b0)
            for (a, b), (a0, b0) in zip(cache["kv"], before["kv"], strict=True)
        )
        cache = model.append(cache, x[:, sl], k[:, sl], c[:, sl])
        n = min(sl.stop, W)  # the oldest frames are dropped past the window; positions stay absolute
        assert cache["pos"].tolist() == list(range(sl.stop - n, sl.stop)) and cache["next"] == sl.stop
        assert all(a.shape[-2] == n and b.shape[-2] == n for a, b in cache["kv"])
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-10, rtol=0)


@torch.no_grad()
def test_window_limits_what_each_layer_sees():
    """Within the window the forward is plainly causal; beyond it, frame 0 stops influencing frame t once
    t > layers * (W - 1) (each of the stacked temporal layers reaches W - 1 frames back)."""
    W, T = 3, 14
    model = _model(max_tokens=W, cond_dim=0)
    reach = model.n_temporal * (W - 1)
    assert reach < T - 1
    x, k, _ = _inputs(1, T, cond_dim=0)
    out = model(x, k)
    x2 = x.clone()
    x2[:, 0] += 1.0
    out2 = model(x2, k)
    diff = (out2 - out).abs().flatten(2).amax(-1)[0]
    assert (diff[: reach + 1] > 1e-8).all()
    assert (diff[reach + 1 :] == 0).all()
    # a full forward over exactly one window is the plain causal forward (the window never bites)
    win = model(x[:, -W:], k[:, -W:])
    cache = model.append(model.init_cache(1), x[:, -W:-1], k[:, -W:-1])
    torch.testing.assert_close(model(x[:, -1:], k[:, -1:], cache=cache), win[:, -1:], atol=1e-10, rtol=0)


@torch.no_grad()
def test_sampler_with_and_without_cache_gives_the_same_tokens():
    """DF sampling past the window: the cache rebuilt from the visible finished tokens gives the same
    tokens as the uncached sliding window (same seed)."""
    W = 4
    dm = DiffusionModel(_model(cond_dim=2, max_tokens=W), "cosine", "v").eval()
    assert dm.causal and dm.supports_cache and dm.max_tokens == W
    ctx, _, c = _inputs(2, 11)
    kw = dict(context=ctx[:, :2], cond=c, horizon=9)
    s = dict(steps=4, schedule="pyramid", stabilization_level=0.1, eta=0.5, chunk_size=None)
    a = sample(dm, sampling_settings(use_cache=True, **s), generator=torch.Generator().manual_seed(5), **kw)
    b = sample(dm, sampling_settings(use_cache=False, **s), generator=torch.Generator().manual_seed(5), **kw)
    assert a.shape == (2, 9, 4, 8, 8) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_float32_cache_matches_full_forward():
    torch.manual_seed(0)
    model = build_unet3d((4, 8, 8), 2, 6, **SMALL).eval()
    x, k, c = (t.float() for t in _inputs(2, 6))
    with torch.no_grad():
        full = model(x, k, c)
        cache = model.append(model.init_cache(2), x[:, :4], k[:, :4], c[:, :4])
        tail = model(x[:, 4:], k[:, 4:], c[:, 4:], cache=cache)
    torch.testing.assert_close(tail, full[:, 4:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_missing_cond_is_the_zero_condition_and_shapes_are_checked():
    model = _model()
    x, k, c = _inputs(2, 3)
    assert torch.equal(model(x, k), model(x, k, torch.zeros_like(c)))
    with pytest.raises(DataError, match=r"tokens of shape \(4, 8, 8\)"):
        model(x[..., :4], k, c)
    with pytest.raises(DataError, match=r"cond must have shape \(2, 3, 2\)"):
        model(x, k, c[..., :1])
    with pytest.raises(DataError, match=r"noise levels k"):
        model(x, k[:, :2], c)
    with pytest.raises(DataError, match=r"cache"):
        model(x, k, c, cache=model.append(model.init_cache(1), x[:1], k[:1], c[:1]))
    assert model(x[:, :0], k[:, :0], c[:, :0]).shape == (2, 0, 4, 8, 8)


@pytest.mark.parametrize(
    "token_shape, kwargs, match",
    [
        ((16,), {}, r"^backbone 'unet3d': needs video tokens \(C, H, W\), got token_shape \(16,\)$"),
        ((4, 6, 8), {"channel_mult": [1, 2, 2]}, r"backbone.channel_mult: 3 levels need .* divisible by 2\*\*2 = 4"),
        ((4, 8, 8), {"channels": 0}, r"backbone.channels: got 0; expected a positive integer"),
        ((4, 8, 8), {"channel_mult": []}, r"backbone.channel_mult: expected a non-empty list"),
        ((4, 8, 8), {"temporal_levels": [2]}, r"backbone.temporal_levels"),
        ((4, 8, 8), {"heads": 3}, r"backbone.heads"),
        ((4, 8, 8), {"groups": 5}, r"backbone.groups"),
        ((4, 8, 8), {"blocks": 1.5}, r"backbone.blocks"),
        ((4, 8, 8), {"rope_base": 0}, r"backbone.rope_base"),
    ],
)
def test_bad_configuration_raises_config_error(token_shape, kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        build_unet3d(token_shape, 0, 8, **kwargs)
    assert "\n" not in str(info.value)


def test_registered_and_selectable_by_name():
    from worldsim.config import compose_config
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry = build_registry(get_plugin_manager(autoload=False))
    cfg = compose_config(["backbone=unet3d", "backbone.channels=16"], registry)
    assert cfg.backbone.name == "unet3d" and cfg.backbone.channels == 16
    model = registry.build("backbone", "unet3d", dict(token_shape=(4, 8, 8), cond_dim=0, max_tokens=8),
                           {**{k: v for k, v in cfg.backbone.items() if k != "name"}, "heads": 2})  # fmt: skip
    assert model.max_tokens == 8 and model.n_temporal == 5
