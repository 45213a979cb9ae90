"""Guidance objectives ``goal``, ``maze_goal`` and ``reward`` for planning in maze-like tasks.

An objective maps the decoded prediction of the clean plan ``x0_obs (B, H, D)`` to a value per sample
to maximize; the sampler adds its gradient at every row of the scheduling matrix (DF Sec. 3.4). Both
read the planned positions from the feature slice ``ctx["position"]`` (a ``slice`` or a list of
indices; the ``positions`` argument of the factory is the fallback) and the goal ``ctx["goal"]``,
(B, P) or (P,). ``maze_goal`` also reads the maze ``ctx["walls"]`` ((rows, cols), 1 = wall), which the
planner passes for a maze task.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
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


class MazeGoalObjective:
    """- sum_t d(p_t, g) with d the length of the shortest path from p_t to the goal through the maze's free
    space, instead of the straight-line distance of ``goal``: its gradient leads round walls, not into them.

    d is computed on a grid of ``resolution`` x ``resolution`` sub-cells per maze cell (Dijkstra, 8-connected,
    steps of 1 and sqrt 2 sub-cells, no diagonal step between two blocked sub-cells) and read at p_t by bilinear interpolation. Inside a wall d keeps rising,
    by ``wall_slope`` per cell of depth from the nearest free sub-cell, so a plan drawn into a wall is pushed
    out of it on its own side. Positions are D4RL's (row, col), cell (i, j) centred at (i, j). The fields are
    cached per maze and goal sub-cell."""

    def __init__(self, positions=None, resolution: int = 8, wall_slope: float = 100.0):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise ConfigError(f"guidance.resolution: expected a positive integer, got {resolution!r}")
        if isinstance(wall_slope, bool) or not isinstance(wall_slope, (int, float)) or not wall_slope > 0:
            raise ConfigError(f"guidance.wall_slope: expected a number > 0, got {wall_slope!r}")
        self.positions, self.resolution, self.wall_slope = positions, resolution, float(wall_slope)
        self._fields: dict[tuple, np.ndarray] = {}
        self._last: tuple[tuple, torch.Tensor] | None = None

    def field(self, walls: np.ndarray, goal: tuple[float, float]) -> np.ndarray:
        """The distance to ``goal`` at every sub-cell centre, (rows * resolution, cols * resolution), in cells."""
        walls = np.asarray(walls, dtype=bool)
        r = self.resolution
        rows, cols = walls.shape[0] * r, walls.shape[1] * r
        start = (min(rows - 1, max(0, int((goal[0] + 0.5) * r))), min(cols - 1, max(0, int((goal[1] + 0.5) * r))))
        key = (walls.tobytes(), walls.shape, start)
        if key not in self._fields:
            blocked = np.repeat(np.repeat(walls, r, axis=0), r, axis=1)
            if blocked[start]:  # a goal inside a wall: the field is measured from the nearest free sub-cell
                free_cells = np.argwhere(~blocked)
                nearest = free_cells[np.argmin(((free_cells - start) ** 2).sum(1))]
                start = (int(nearest[0]), int(nearest[1]))
            free = _dijkstra(~blocked, [(start, 0.0)], 1.0 / r)
            seeds = [((int(a), int(b)), float(free[a, b])) for a, b in zip(*np.nonzero(~blocked), strict=True)]
            inside = _dijkstra(blocked, seeds, self.wall_slope / r)
            self._fields[key] = np.where(blocked, inside, free)
        return self._fields[key]

    def _stacked(self, walls: np.ndarray, goals: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """The fields of ``goals`` (B, 2) as one (B, rows * resolution, cols * resolution) tensor; the last one is
        kept, as a sampler values the same goals at every row."""
        key = (walls.tobytes(), walls.shape, goals.tobytes(), like.dtype, like.device)
        if self._last is None or self._last[0] != key:
            fields = torch.stack([torch.as_tensor(self.field(walls, (g[0], g[1])), dtype=like.dtype) for g in goals])
            self._last = (key, fields.to(like.device))
        return self._last[1]

    def __call__(self, x0_obs: torch.Tensor, ctx: dict) -> torch.Tensor:
        p, goal = _positions_and_goal(x0_obs, ctx, self.positions)
        if "walls" not in ctx:
            raise ConfigError("guidance 'maze_goal': ctx has no 'walls'; it plans in maze tasks only")
        walls = np.asarray(ctx["walls"])
        fields = self._stacked(walls, goal[:, 0].detach().cpu().double().numpy(), p)
        size = torch.tensor(walls.shape, dtype=p.dtype, device=p.device)
        grid = ((p + 0.5) / size * 2 - 1).flip(-1)  # (B, H, 2) as grid_sample's (x = col, y = row) in [-1, 1]
        # grid_sample's CPU backward reads out of bounds (a segfault) at non-finite or huge coordinates; beyond the
        # border the field is constant (padding_mode="border"), so clamping changes neither value nor gradient
        grid = torch.nan_to_num(grid, nan=0.0).clamp(-2.0, 2.0)
        d = torch.nn.functional.grid_sample(
            fields[:, None], grid[:, None], mode="bilinear", padding_mode="border", align_corners=False
        )
        return -d[:, 0, 0].sum(-1)


def _dijkstra(passable: np.ndarray, seeds: list, step: float) -> np.ndarray:
    """Shortest 8-connected path lengths over the ``passable`` cells from ``seeds`` [((i, j), start value)]."""
    dist = np.full(passable.shape, np.inf)
    heap = []
    for (i, j), value in seeds:
        if value < dist[i, j]:
            dist[i, j] = value
            heap.append((value, i, j))
    heapq.heapify(heap)
    moves = [(di, dj, step * math.hypot(di, dj)) for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj]
    rows, cols = passable.shape
    while heap:
        d, i, j = heapq.heappop(heap)
        if d > dist[i, j]:
            continue
        for di, dj, cost in moves:
            a, b = i + di, j + dj
            if not (0 <= a < rows and 0 <= b < cols and passable[a, b]) or d + cost >= dist[a, b]:
                continue
            if di and dj and not (passable[i + di, j] and passable[i, j + dj]):
                continue  # a diagonal step may not cut the corner between two blocked sub-cells
            dist[a, b] = d + cost
            heapq.heappush(heap, (d + cost, a, b))
    return dist


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


def build_maze_goal(positions: list | None = None, resolution: int = 8, wall_slope: float = 100.0) -> MazeGoalObjective:
    """Factory of ``maze_goal``: the goal objective with shortest-path distances through the maze (positions:
    the feature indices of the planned positions when the planner passes none)."""
    return MazeGoalObjective(positions, resolution, wall_slope)


def build_reward(positions: list | None = None, length: float = 1.0) -> RewardObjective:
    """positions: as for goal; length: distance scale of the reward's decay."""
    return RewardObjective(positions, length)


@worldsim.hookimpl
def worldsim_add_guidance():
    return {"goal": build_goal, "maze_goal": build_maze_goal, "reward": build_reward}
