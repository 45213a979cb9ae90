"""Guidance objectives ``goal`` and ``reward`` for planning in maze-like tasks.

An objective maps the decoded prediction of the clean plan ``x0_obs (B, H, D)`` to a value per sample
to maximize; the sampler adds its gradient at every row of the scheduling matrix (DF Sec. 3.4). Both
read the planned positions from the feature slice ``ctx["position"]`` (a ``slice`` or a list of
indices; the ``positions`` argument of the factory is the fallback) and the goal ``ctx["goal"]``,
(B, P) or (P,).
"""

from __future__ import annotations

import torch

import worldsim
from worldsim.errors import ConfigError

_EPS = 1e-12  # keeps the norm differentiable at 0 (its gradient there is then 0, not NaN)


def _positions_and_goal(x0_obs: torch.Tensor, ctx: dict, default_positions) -> tuple[torch.Tensor, torch.Tensor]:
    index = ctx.get("position", default_positions)
    if index is None:
        raise ConfigError("guidance: no position features; pass ctx['position'] or the factory's positions=[i, j]")
    if not isinstance(index, slice):
        index = list(index)
    if "goal" not in ctx:
        raise ConfigError("guidance: ctx has no 'goal'; the planner must pass the goal position")
    p = x0_obs[..., index]
    goal = torch.as_tensor(ctx["goal"], dtype=p.dtype, device=p.device)
    if goal.dim() == 1:
        goal = goal.expand(p.shape[0], -1)
    if goal.shape != (p.shape[0], p.shape[-1]):
        raise ConfigError(
            f"guidance: goal of shape {tuple(goal.shape)} does not match positions {(p.shape[0], p.shape[-1])}"
        )
    return p, goal[:, None]


def _distance(p: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    return ((p - goal).pow(2).sum(-1) + _EPS).sqrt()  # (B, H)


class GoalObjective:
    """DF's planning objective: - sum_t ||p_t - g|| over the plan, so that any step may be the arrival
    and every step after it is rewarded for staying (DF Sec. 4.2)."""

    def __init__(self, positions=None):
        self.positions = positions

    def __call__(self, x0_obs: torch.Tensor, ctx: dict) -> torch.Tensor:
        p, goal = _positions_and_goal(x0_obs, ctx, self.positions)
        return -_distance(p, goal).sum(-1)


class RewardObjective:
    """The env's dense reward as a differentiable function: sum_t exp(-||p_t - g|| / length) (D4RL's dense
    maze2d reward for length = 1)."""

    def __init__(self, positions=None, length: float = 1.0):
        if not isinstance(length, (int, float)) or length <= 0:
            raise ConfigError(f"guidance.length: expected a number > 0, got {length!r}")
        self.positions, self.length = positions, float(length)

    def __call__(self, x0_obs: torch.Tensor, ctx: dict) -> torch.Tensor:
        p, goal = _positions_and_goal(x0_obs, ctx, self.positions)
        return torch.exp(-_distance(p, goal) / self.length).sum(-1)


def build_goal(positions: list | None = None) -> GoalObjective:
    """positions: feature indices of the planned position (default: given by the planner)."""
    return GoalObjective(positions)


def build_reward(positions: list | None = None, length: float = 1.0) -> RewardObjective:
    """positions: as for goal; length: distance scale of the reward's decay."""
    return RewardObjective(positions, length)


@worldsim.hookimpl
def worldsim_add_guidance():
    return {"goal": build_goal, "reward": build_reward}
