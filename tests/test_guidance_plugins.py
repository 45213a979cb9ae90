"""The first-party guidance objectives: the conformance kit, their values against the plain formula,
and their use as sampler guidance."""

from __future__ import annotations

import math

import pytest
import torch

from worldsim.errors import ConfigError
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.testing import check_objective


@pytest.fixture(scope="module")
def registry():
    return build_registry(get_plugin_manager())


@pytest.mark.parametrize("name", ["goal", "reward"])
def test_objectives_pass_the_kit(registry, name):
    objective = registry.build("guidance", name, {}, {})
    check_objective(objective, (6,), ctx={"goal": torch.tensor([[1.0, 2.0]] * 3), "position": slice(2, 4)})
    positional = registry.build("guidance", name, {}, {"positions": [2, 3]})
    check_objective(positional, (6,), ctx={"goal": torch.tensor([1.0, 2.0])})


def test_values_match_the_formulas(registry):
    x = torch.zeros(1, 3, 4, dtype=torch.float64)
    x[0, :, 0:2] = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]])
    ctx = {"goal": torch.tensor([[0.0, 1.0]], dtype=torch.float64), "position": slice(0, 2)}
    dists = [math.sqrt(9 + 9), 0.0, 1.0]
    goal = registry.build("guidance", "goal", {}, {})(x, ctx)
    reward = registry.build("guidance", "reward", {}, {"length": 2.0})(x, ctx)
    assert goal.item() == pytest.approx(-sum(dists), abs=1e-5)
    assert reward.item() == pytest.approx(sum(math.exp(-d / 2.0) for d in dists), abs=1e-5)


def test_the_goal_objective_pulls_every_step_toward_the_goal(registry):
    x = torch.randn(2, 5, 4, requires_grad=True)
    goal = torch.tensor([[5.0, 5.0], [-5.0, -5.0]])
    value = registry.build("guidance", "goal", {}, {})(x, {"goal": goal, "position": [0, 1]})
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert (grad[0, :, :2] > 0).all() and (grad[1, :, :2] < 0).all()  # ascent moves toward the goal
    assert (grad[..., 2:] == 0).all()


def test_missing_positions_or_goal_are_clear_errors(registry):
    objective = registry.build("guidance", "goal", {}, {})
    with pytest.raises(ConfigError, match="no position features"):
        objective(torch.zeros(1, 2, 4), {"goal": torch.zeros(2)})
    with pytest.raises(ConfigError, match="no 'goal'"):
        objective(torch.zeros(1, 2, 4), {"position": [0, 1]})
    with pytest.raises(ConfigError, match="guidance.length"):
        registry.build("guidance", "reward", {}, {"length": -1})
