"""Tokenizer ``pixels``: the kit, the [-1, 1] scaling, and clear errors for frames of the wrong shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldsim.errors import ConfigError, DataError
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.testing import check_tokenizer


def _factory():
    return build_registry(get_plugin_manager(autoload=False)).tokenizers["pixels"]


def test_kit_passes_and_scaling_is_exact():
    tok = check_tokenizer(_factory(), (6, 5, 3))
    frames = torch.from_numpy(np.array([[[[[0, 255, 128]] * 5] * 6]], dtype=np.uint8))  # (1, 1, 6, 5, 3)
    x = tok.encode(frames)
    assert x.shape == (1, 1, 3, 6, 5) and x[0, 0, 0].eq(-1).all() and x[0, 0, 1].eq(1).all()
    assert torch.equal(tok.decode(x), frames.float())


def test_wrong_shapes_are_one_line_errors():
    tok = _factory()(obs_shape=(8, 8, 3))
    with pytest.raises(DataError, match=r"expected frames \(B, L, 8, 8, 3\), got shape \(1, 2, 16, 16, 3\)"):
        tok.encode(torch.zeros(1, 2, 16, 16, 3))
    with pytest.raises(ConfigError, match="expects frames"):
        _factory()(obs_shape=(4,))
