"""The first-party guidance objectives: the conformance kit, their values against the plain formula,
and their use as sampler guidance."""

from __future__ import annotations

import math

import numpy as np
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


def _medium_walls():
    """D4RL's maze2d-medium map (1 = wall)."""
    return torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 0, 0, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 0, 0, 1],
                         [1, 1, 0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0, 0, 1], [1, 0, 1, 0, 0, 1, 0, 1],
                         [1, 0, 0, 0, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1, 1, 1]]).numpy()  # fmt: skip


def test_maze_goal_passes_the_kit(registry):
    objective = registry.build("guidance", "maze_goal", {}, {"resolution": 4})
    ctx = {
        "goal": torch.tensor([[6.0, 6.0], [1.0, 1.0], [4.0, 4.0]]),
        "position": slice(2, 4),
        "walls": _medium_walls(),
    }
    check_objective(lambda x, c: objective(x * 0.3 + 3.5, c), (6,), ctx=ctx)  # positions inside the maze


def test_maze_goal_measures_the_path_round_the_walls_and_leads_along_it(registry):
    """From (6, 3) in medium the goal (6, 6) is 3 cells away in a straight line, through the wall (6, 4); the
    shortest path goes up through (5, 3), (4, 4), (4, 6) and is about twice as long. Ascent leads up the
    corridor, not into the wall, and a position inside a wall is pushed out of it."""
    objective = registry.build("guidance", "maze_goal", {}, {})
    walls = _medium_walls()
    field = objective.field(walls, (6.0, 6.0))
    cell = lambda i, j: field[i * 8 + 4, j * 8 + 4]  # noqa: E731  (sub-cell at a cell's centre)
    assert cell(6, 6) == pytest.approx(0.0, abs=0.2) and 5.0 < cell(6, 3) < 8.0 and cell(6, 4) > 50
    assert cell(6, 1) > cell(6, 2) > cell(6, 3) > cell(5, 3) > cell(4, 4) > cell(4, 6) > cell(5, 6) > cell(6, 6)
    x = torch.zeros(2, 1, 2, dtype=torch.float64)
    x[0, 0] = torch.tensor([6.0, 3.0])
    x[1, 0] = torch.tensor([6.0, 4.2])  # inside the wall (6, 4), nearer its right side
    x.requires_grad_(True)
    ctx = {"goal": torch.tensor([[6.0, 6.0]] * 2, dtype=torch.float64), "position": slice(0, 2), "walls": walls}
    (grad,) = torch.autograd.grad(objective(x, ctx).sum(), x)
    assert grad[0, 0, 0] < 0 and abs(grad[0, 0, 1]) < abs(grad[0, 0, 0])  # up (row decreasing), not right
    assert grad[1, 0, 1] > 10  # out of the wall, on its own side (toward col 4.5)
    with pytest.raises(ConfigError, match="no 'walls'"):
        objective(x, {k: v for k, v in ctx.items() if k != "walls"})
    with pytest.raises(ConfigError, match="guidance.resolution"):
        registry.build("guidance", "maze_goal", {}, {"resolution": 0})


def test_maze_goal_inside_a_wall_is_measured_from_the_nearest_free_sub_cell(registry):
    """A goal in a wall (a custom map, or a drawn position) gives a finite field and finite gradients,
    equal to those of the goal at the free sub-cell next to it, not an unreachable (infinite) field."""
    objective = registry.build("guidance", "maze_goal", {}, {"resolution": 4})
    walls = _medium_walls()
    inside = objective.field(walls, (6.0, 4.3))  # wall cell (6, 4), 0.2 from the free cell (6, 5)
    assert np.isfinite(inside).all()
    np.testing.assert_array_equal(inside, objective.field(walls, (6.0, 4.5)))
    x = torch.tensor([[[6.0, 3.0]]], dtype=torch.float64, requires_grad=True)
    ctx = {"goal": torch.tensor([[6.0, 4.3]], dtype=torch.float64), "position": slice(0, 2), "walls": walls}
    (grad,) = torch.autograd.grad(objective(x, ctx).sum(), x)
    assert torch.isfinite(grad).all()
