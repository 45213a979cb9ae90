"""Classifier-free guidance on conditions and history guidance in the sampler: the combination
formula, what each extreme means, the cache agreeing with the window, and bad values."""

from __future__ import annotations

import pytest
import torch
from helpers import sampling_settings

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.sampling import sample
from worldsim.errors import ConfigError
from worldsim_plugins.gru import build_gru


def _model(seed=0):
    torch.manual_seed(seed)
    backbone = build_gru(token_shape=(3,), cond_dim=2, max_tokens=None, hidden=16, layers=1, embed=128)
    return DiffusionModel(backbone, schedule="cosine", prediction="v").eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 3, generator=g), torch.randn(2, 7, 2, generator=g)


def _sample(model, context, cond, horizon=4, window=None, **settings):
    """``settings``: the sampling settings that differ from these tests' (6 steps, pyramid, chunks of 2)."""
    settings = sampling_settings(**{"steps": 6, "schedule": "pyramid", "chunk_size": 2, **settings})
    generator = torch.Generator().manual_seed(5)
    return sample(model, settings, horizon=horizon, context=context, cond=cond, window=window, generator=generator)


def test_one_step_combination_matches_the_formula():
    """One denoising step from pure noise returns the combined x0: full + (w-1)(full - no_cond)."""
    model = _model()
    context, cond = _inputs()
    w = 2.5
    got = _sample(model, context, cond[:, :4], horizon=1, steps=1, schedule="full_sequence", chunk_size=1, cfg_scale=w)
    x = torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(5))  # the sampler's first draw
    k = torch.cat([torch.zeros(2, 3), torch.ones(2, 1)], dim=1)
    with torch.no_grad():
        full, _ = model.predict(torch.cat([context, x], 1), k, cond[:, :4])
        null, _ = model.predict(torch.cat([context, x], 1), k, torch.zeros_like(cond[:, :4]))
    want = full[:, 3:] + (w - 1) * (full[:, 3:] - null[:, 3:])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cfg_zero_is_the_unconditional_model_and_one_is_off():
    model = _model()
    context, cond = _inputs()
    plain = _sample(model, context, cond)
    assert torch.equal(_sample(model, context, cond, cfg_scale=1.0, history_guidance=1.0), plain)
    torch.testing.assert_close(
        _sample(model, context, cond, cfg_scale=0.0), _sample(model, context, torch.zeros_like(cond))
    )


def test_history_guidance_zero_ignores_the_history():
    model = _model()
    context, cond = _inputs()
    other = context + 3.0
    free = _sample(model, context, cond, history_guidance=0.0)
    torch.testing.assert_close(free, _sample(model, other, cond, history_guidance=0.0))
    assert not torch.allclose(_sample(model, context, cond), _sample(model, other, cond))
    guided = _sample(model, context, cond, history_guidance=2.0)
    assert torch.isfinite(guided).all() and not torch.allclose(guided, _sample(model, context, cond))


@pytest.mark.parametrize("window", [None, 4])
def test_cached_and_windowed_paths_agree_under_guidance(window):
    model = _model()
    context, cond = _inputs()
    kw = dict(cfg_scale=1.7, history_guidance=1.3, stabilization_level=0.1, window=window)
    cached = _sample(model, context, cond, use_cache=True, **kw)
    uncached = _sample(model, context, cond, use_cache=False, **kw)
    torch.testing.assert_close(cached, uncached, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(cfg_scale=-1.0), "cfg_scale"),
        (dict(history_guidance="a"), "history_guidance"),
        (dict(cfg_scale=2.0, cond=None), "needs conditions"),
    ],
)
def test_bad_guidance_values(kw, field):
    model = _model()
    context, cond = _inputs()
    args = dict(cond=cond)
    args.update(kw)
    with pytest.raises(ConfigError, match=field):
        _sample(model, context, **args)
