"""The conformance kit over every registered backbone, on the state and the video token shapes
(a backbone that does not take a shape says so with a ConfigError at build time)."""

import pytest

from worldsim.errors import ConfigError
from worldsim.testing import check_backbone

SHAPES = {"state": (16,), "video": (4, 8, 8)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_registered_backbone_passes_the_kit(registry, backbone_name, shape):
    name = backbone_name
    factory = registry.backbones[name]
    token_shape = SHAPES[shape]
    try:
        factory(token_shape=token_shape, cond_dim=3, max_tokens=8)
    except ConfigError as exc:
        pytest.skip(f"{name} does not take {shape} tokens: {exc}")
    check_backbone(factory, token_shape, cond_dim=3, max_tokens=8)


def test_first_party_backbones_cover_both_shapes(registry):
    assert {"gru", "dit", "unet3d"} <= set(registry.backbones)
