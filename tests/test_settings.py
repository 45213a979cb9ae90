"""Every default lives once, in configs/config.yaml: the settings objects have none and accept the base config."""

import dataclasses

import pytest

from worldsim.config import compose_config
from worldsim.errors import ConfigError
from worldsim.settings import PlanSettings, RolloutSettings, SamplingSettings, TrainerSettings

SETTINGS = {
    "trainer": TrainerSettings,
    "sampling": SamplingSettings,
    "planning": PlanSettings,
    "rollout": RolloutSettings,
}


@pytest.mark.parametrize("section", sorted(SETTINGS))
def test_the_base_config_builds_each_settings_object_which_has_no_defaults(section, registry):
    cls = SETTINGS[section]
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(cls)), f"{cls.__name__} has a code-side default"  # fmt: skip
    cfg = compose_config([], registry)
    settings = cls.from_config(cfg[section])
    assert {f.name for f in dataclasses.fields(cls)} == set(cfg[section])
    for f in dataclasses.fields(cls):  # the values are the config's (tuples for lists)
        value = getattr(settings, f.name)
        assert (list(value) if isinstance(value, tuple) else value) == cfg[section][f.name]


@pytest.mark.parametrize("section", sorted(SETTINGS))
def test_a_missing_or_unknown_key_is_refused_by_name(section, registry):
    node = dict(compose_config([], registry)[section])
    key = sorted(node)[0]
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: missing"):
        SETTINGS[section].from_config({k: v for k, v in node.items() if k != key})
    with pytest.raises(ConfigError, match=rf"{section}: unknown key 'stepz'"):
        SETTINGS[section].from_config({**node, "stepz": 1})
