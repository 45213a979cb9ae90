"""One home per default: configs/config.yaml. Every library entry point that a config section feeds (the trainer,
the loss, the sampler, the planner, rollouts) either has no default for a key of that section or has the
config's value; a None that means "the run's config value" is declared below, with its entry point.

A parameter maps to the key of its own name in the section its entry point is fed by, or through ALIASES when the
names differ. A disagreement fails the test, naming the entry point, the parameter, both values and the key.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from omegaconf import OmegaConf

from worldsim.config import base_config
from worldsim.diffusion.guidance import Guidance
from worldsim.diffusion.loss import DiffusionLoss, LossSettings, diffusion_loss, loss_weights, sample_noise_levels
from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.sampling import sample
from worldsim.diffusion.scheduling import scheduling_matrix
from worldsim.diffusion.walk import ddim_step, row_update
from worldsim.planning import Planner, evaluate_planner, run_episodes
from worldsim.rollout import evaluate_rollouts, rollout
from worldsim.settings import PlanSettings, RolloutSettings, SamplingSettings, TrainerSettings
from worldsim.train import train
from worldsim.trainer import EMA, Trainer, lr_at
from worldsim.video.rollout import evaluate_video_rollouts

#: config section -> the entry points it feeds
ENTRY_POINTS: dict[str, list[Callable[..., Any]]] = {
    "trainer": [TrainerSettings, Trainer, train, lr_at, EMA],
    "diffusion": [DiffusionModel, LossSettings, DiffusionLoss, diffusion_loss, sample_noise_levels, loss_weights],
    "sampling": [SamplingSettings, sample, row_update, ddim_step, scheduling_matrix],
    "planning": [PlanSettings, Planner, run_episodes, evaluate_planner, Guidance],
    "rollout": [RolloutSettings, rollout, evaluate_rollouts, evaluate_video_rollouts],
}

#: (entry point, parameter) -> the config key it takes, where the names differ
ALIASES: dict[tuple[Callable[..., Any], str], str] = {
    (Trainer, "seed"): "run.seed",
    (lr_at, "schedule"): "trainer.lr_schedule",
    (lr_at, "total_steps"): "trainer.steps",
    (EMA, "decay"): "trainer.ema_decay",
    (scheduling_matrix, "kind"): "sampling.schedule",
    (Guidance, "scale"): "planning.guidance_scale",
}

#: None defaults that stand for the run's config value (the function reads its settings when given None)
FROM_CONFIG: set[tuple[Callable[..., Any], str]] = {
    (evaluate_rollouts, "context"),
    (evaluate_rollouts, "episodes"),
    (evaluate_video_rollouts, "context"),
    (evaluate_video_rollouts, "episodes"),
}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _name(entry: Callable[..., Any]) -> str:
    return getattr(entry, "__qualname__", repr(entry))


def disagreements(section: str, entry: Callable[..., Any], config: dict[str, Any]) -> list[str]:
    """Each default of ``entry`` that differs from the config key it maps to, as one line."""
    found = []
    for name, param in inspect.signature(entry).parameters.items():
        alias = ALIASES.get((entry, name))
        key = alias or (f"{section}.{name}" if name in config[section] else None)
        if key is None or param.default is inspect.Parameter.empty:
            continue
        group, leaf = key.split(".")
        if leaf not in config.get(group, {}):
            found.append(f"{_name(entry)}({name}): maps to {key}, which configs/config.yaml does not have")
            continue
        if param.default is None and (entry, name) in FROM_CONFIG:
            continue
        if _plain(param.default) != config[group][leaf]:
            found.append(
                f"{_name(entry)}({name}={param.default!r}) but configs/config.yaml {key}: {config[group][leaf]!r}"
            )
    return found


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    plain = OmegaConf.to_container(base_config(), resolve=True)
    assert isinstance(plain, dict)
    return plain


@pytest.mark.parametrize("section", sorted(ENTRY_POINTS))
def test_library_defaults_equal_the_config(section, config):
    found = [line for entry in ENTRY_POINTS[section] for line in disagreements(section, entry, config)]
    assert not found, "defaults with two homes:\n" + "\n".join(found)


def test_the_declared_aliases_and_none_defaults_name_real_parameters(config):
    for entry, name in [*ALIASES, *FROM_CONFIG]:
        assert name in inspect.signature(entry).parameters, f"{_name(entry)} has no parameter {name!r}"
    for key in ALIASES.values():
        group, leaf = key.split(".")
        assert leaf in config[group], f"configs/config.yaml has no {key}"
    for entry, name in FROM_CONFIG:
        assert inspect.signature(entry).parameters[name].default is None


def test_a_disagreeing_default_fails(config):
    """The check can fail: a loss default other than the config's, and a None that is not declared as the config's."""

    def loss_like(x0, *, mode="diffusion_forcing", clean_context_prob=0.0, cond=None):
        return x0

    def rollout_like(run, context=None):
        return run

    assert disagreements("diffusion", loss_like, config) == [
        f"test_a_disagreeing_default_fails.<locals>.loss_like(clean_context_prob=0.0) but configs/config.yaml "
        f"diffusion.clean_context_prob: {config['diffusion']['clean_context_prob']!r}"
    ]
    assert len(disagreements("rollout", rollout_like, config)) == 1


def _leaves(node: dict[str, Any], prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_experiment_yamls_say_only_what_differs(tmp_path, monkeypatch):
    """Each key an experiment sets differs from what its defaults list (the base config, its component groups and
    parent experiments) already composes to: a repeated default would be a second home for it."""
    import shutil

    import yaml

    import worldsim.config as config_module
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    configs = tmp_path / "configs"
    shutil.copytree(config_module.config_dir(), configs)
    monkeypatch.setattr(config_module, "config_dir", lambda: configs)
    config_module._register_component_nodes(build_registry(get_plugin_manager()))
    repeated = []
    for file in sorted((configs / "experiment").glob("*.yaml")):
        body = yaml.safe_load(file.read_text()) or {}
        parent = {"defaults": body.pop("defaults")} if "defaults" in body else {}
        (configs / "experiment" / f"parent_of_{file.stem}.yaml").write_text(
            "# @package _global_\n" + yaml.safe_dump(parent)
        )
        composed = OmegaConf.to_container(config_module._compose([f"experiment=parent_of_{file.stem}"]))
        for key, value in _leaves(body):
            node = composed
            for part in key.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if node == value:
                repeated.append(f"{file.name}: {key}: {value!r}")
    assert not repeated, "experiment YAMLs repeat what they inherit:\n" + "\n".join(repeated)
