"""Backbone ``convgru``: the kit with pixel folding and stacked cells, and clear errors."""

from __future__ import annotations

import pytest
import torch

from worldsim.errors import ConfigError, DataError
from worldsim.testing import check_backbone
from worldsim_plugins.convgru import build_convgru


@pytest.mark.parametrize("kw", [dict(patch=2, layers=2), dict(patch=1, layers=1)])
def test_kit_passes(kw):
    check_backbone(lambda **a: build_convgru(**a, hidden=8, channels=8, embed=16, **kw), (3, 8, 8), 2)


def test_any_length_and_the_state_is_a_map():
    m = build_convgru((3, 8, 8), cond_dim=0, hidden=8, channels=8, embed=16, patch=2)
    assert m.max_tokens is None and m.causal
    cache = m.append(m.init_cache(2), torch.randn(2, 40, 3, 8, 8), torch.zeros(2, 40))
    assert cache.shape == (1, 2, 8, 4, 4)


def test_bad_shapes():
    with pytest.raises(ConfigError, match="needs image or latent tokens"):
        build_convgru((16,))
    with pytest.raises(ConfigError, match="backbone.patch: 3 must divide"):
        build_convgru((3, 8, 8), patch=3)
    m = build_convgru((3, 8, 8), cond_dim=2, hidden=8, channels=8, embed=16)
    with pytest.raises(DataError, match=r"cond must have shape \(1, 2, 2\)"):
        m(torch.randn(1, 2, 3, 8, 8), torch.zeros(1, 2), torch.zeros(1, 2, 5))
