"""The ``state`` tokenizer (normalizer + frame stacking) and worldsim.data.normalizers."""

from __future__ import annotations

import io

import pytest
import torch

from worldsim.data.normalizers import Normalizer
from worldsim.errors import ConfigError, DataError
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.testing import check_tokenizer
from worldsim_plugins.state import build_state


def _data(n=200, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * torch.tensor(
        [1.0, 5.0, 0.1], dtype=torch.float64
    ) + torch.tensor([2.0, -3.0, 10.0], dtype=torch.float64)


def test_gaussian_and_limits_match_float64_formulas():
    data = _data()
    g = Normalizer("gaussian", 3).double().fit(data)
    ref = (data - data.mean(0)) / data.std(0, unbiased=False)
    torch.testing.assert_close(g.normalize(data), ref, atol=1e-12, rtol=0)
    lim = Normalizer("limits", 3).double().fit(data)
    lo, hi = data.min(0).values, data.max(0).values
    torch.testing.assert_close(lim.normalize(data), 2 * (data - lo) / (hi - lo) - 1, atol=1e-12, rtol=0)
    n = lim.normalize(data)
    assert torch.allclose(n.min(0).values, torch.full((3,), -1.0, dtype=torch.float64))
    assert torch.allclose(n.max(0).values, torch.ones(3, dtype=torch.float64))
    for norm in (g, lim):
        torch.testing.assert_close(norm.unnormalize(norm.normalize(data)), data, atol=1e-12, rtol=0)


def test_constant_dimension_stays_finite_and_invertible():
    data = _data()
    data[:, 1] = 4.0
    for kind in ("gaussian", "limits"):
        norm = Normalizer(kind, 3).double().fit(data)
        out = norm.normalize(data)
        assert torch.isfinite(out).all() and torch.equal(out[:, 1], torch.zeros(200, dtype=torch.float64))
        torch.testing.assert_close(norm.unnormalize(out), data)


def test_frame_stacking_layout_against_a_loop():
    tok = build_state((3,), normalizer="gaussian", frame_stack=4).double()
    tok.fit(_data())
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(2, 12, 3, generator=g, dtype=torch.float64)
    x = tok.encode(obs)
    assert x.shape == (2, 3, 12) and tok.token_shape == (12,) and tok.frames_per_token == 4
    norm = tok.normalizer.normalize(obs)
    for b in range(2):
        for t in range(3):
            assert torch.equal(x[b, t], torch.cat([norm[b, 4 * t + f] for f in range(4)]))
    torch.testing.assert_close(tok.decode(x), obs, atol=1e-12, rtol=0)


def test_encode_before_fit_and_bad_shapes_raise_data_error():
    tok = build_state((3,), frame_stack=2)
    with pytest.raises(DataError, match=r"tokenizer 'state': encode\(\) before fit\(\)"):
        tok.encode(torch.zeros(1, 4, 3))
    with pytest.raises(DataError, match=r"decode\(\) before fit\(\)"):
        tok.decode(torch.zeros(1, 2, 6))
    tok.fit(_data().float())
    with pytest.raises(DataError, match=r"sequence length 5 is not divisible by frame_stack=2"):
        tok.encode(torch.zeros(1, 5, 3))
    with pytest.raises(DataError, match=r"expected observations \(B, L, 3\)"):
        tok.encode(torch.zeros(1, 4, 4))
    with pytest.raises(DataError, match=r"NaN"):
        tok.fit(torch.full((4, 3), float("nan")))
    with pytest.raises(DataError, match=r"empty"):
        tok.fit(torch.zeros(0, 3))


def test_state_dict_round_trip_restores_fitted_statistics():
    tok = build_state((3,), normalizer="limits", frame_stack=2).fit(_data().float())
    buf = io.BytesIO()
    torch.save(tok.state_dict(), buf)
    buf.seek(0)
    fresh = build_state((3,), normalizer="limits", frame_stack=2)
    assert not fresh.fitted
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.fitted
    obs = _data(8).float().reshape(2, 4, 3)
    assert torch.equal(fresh.encode(obs), tok.encode(obs))


@pytest.mark.parametrize(
    "obs_shape, kwargs, match",
    [
        ((3,), {"normalizer": "minmax"}, r"tokenizer.normalizer: unknown normalizer 'minmax'"),
        ((3,), {"frame_stack": 0}, r"tokenizer.frame_stack"),
        ((3, 8, 8), {}, r"expects vector observations"),
    ],
)
def test_bad_configuration_raises_config_error(obs_shape, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        build_state(obs_shape, **kwargs)


@pytest.mark.parametrize(
    "kwargs", [{}, {"normalizer": "limits", "frame_stack": 3}, {"normalizer": "none", "frame_stack": 2}]
)
def test_conformance_kit_passes_through_the_registry(kwargs):
    reg = build_registry(get_plugin_manager(autoload=False))
    factory = reg.get("tokenizer", "state")
    check_tokenizer(factory, (3,), **kwargs)
    tok = reg.build("tokenizer", "state", {"obs_shape": (3,)}, kwargs)
    assert tok.frames_per_token == kwargs.get("frame_stack", 1)
