"""Plain helpers the tests import (fixtures live in conftest.py)."""

from typing import Any

from omegaconf import OmegaConf

from worldsim.config import base_config


def base_config_section(name: str) -> dict[str, Any]:
    """A section of configs/config.yaml, the one home of every default, as a plain dict."""
    return dict(OmegaConf.to_container(base_config()[name]))


def sampling_settings(**overrides: Any):
    """The sampler's settings object: configs/config.yaml's ``sampling`` section with ``overrides``."""
    from worldsim.settings import SamplingSettings

    return SamplingSettings.from_config({**base_config_section("sampling"), **overrides})
