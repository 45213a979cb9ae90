"""The conformance kit over every registered backbone, on the state and the video token shapes
(a backbone that does not take a shape says so with a ConfigError at build time)."""

import pytest

from worldsim.errors import ConfigError
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.testing import check_backbone

REGISTRY = build_registry(get_plugin_manager(autoload=False))
SHAPES = {"state": (16,), "video": (4, 8, 8)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(REGISTRY.backbones))
def test_every_registered_backbone_passes_the_kit(name, shape):
    factory = REGISTRY.backbones[name]
    token_shape = SHAPES[shape]
    try:
        factory(token_shape=token_shape, cond_dim=3, max_tokens=8)
    except ConfigError as exc:
        pytest.skip(f"{name} does not take {shape} tokens: {exc}")
    check_backbone(factory, token_shape, cond_dim=3, max_tokens=8)


def test_first_party_backbones_cover_both_shapes():
    assert {"gru", "dit", "unet3d"} <= set(REGISTRY.backbones)
