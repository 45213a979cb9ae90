"""The waypoint expert that wanders between random target cells, as D4RL's maze2d data generator did.

Plan: a shortest path over empty cells (BFS, 4-neighbours, ties broken at random) from the agent's cell to
the target cell. Waypoints: the centres of the path's cells after the agent's own, each jittered by
U(-jitter, jitter) per axis (default 0.1; D4RL subtracted U(0, 0.2), which in its frame, 0.2 off the cell
centres, spread the waypoints over centre .. centre + 0.2, and its targets had +-0.1 noise).
Control: the PD law ``a = clip(10 (w - p) - v, -1, 1)`` toward the current waypoint (D4RL's gains). The
expert moves on to the next waypoint within ``waypoint_radius`` (0.2: it rounds the waypoints without
stopping) and counts the target reached within ``target_radius`` (0.1, D4RL's ``solve_thresh``) of the
final (jittered) waypoint; then it picks a new target cell uniformly among the other empty cells, in the
same continuous stream. ``action_noise`` adds N(0, sigma^2) to the action and clips again (D4RL's noisy
data: sigma 0.5); ``intended`` keeps the last action before the noise (DART-style data records it while the
noisy one is executed). With probability ``pause_prob`` it first holds still at the reached target (PD toward
the cell centre) for a uniform number of steps in ``pause_steps``. Everything runs on Python floats:
the data generator calls it a million times.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from worldsim.errors import ConfigError

from .mazes import cell_distances, empty_cells, maze_map

KP, KD = 10.0, 1.0  # PD gains of D4RL's waypoint controller
STUCK_STEPS = 200  # replan if a waypoint is not reached in this many steps (a safety net; rare)


def _clip1(v: float) -> float:
    return 1.0 if v > 1.0 else (-1.0 if v < -1.0 else v)


def shortest_path(walls: np.ndarray, start: tuple[int, int], goal: tuple[int, int], rng=None) -> list[tuple[int, int]]:
    """Cells from ``start`` to ``goal`` inclusive along a shortest 4-neighbour path over empty cells.

    Among equally short paths one is drawn at random when ``rng`` is given (else the first in row-major order).
    """
    dist = cell_distances(walls, goal)
    if start not in dist:
        raise ConfigError(f"shortest_path: no path from cell {start} to cell {goal}")
    path = [start]
    while path[-1] != goal:
        i, j = path[-1]
        steps = [n for n in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)) if dist.get(n) == dist[(i, j)] - 1]
        path.append(steps[int(rng.integers(len(steps)))] if rng is not None and len(steps) > 1 else steps[0])
    return path


class WaypointExpert:
    """``act(row, col, v_row, v_col) -> (a_row, a_col)`` in D4RL's frame; ``target`` is the current target cell."""

    def __init__(
        self,
        maze: str,
        seed: int | np.random.Generator = 0,
        jitter: float = 0.1,
        waypoint_radius: float = 0.2,
        target_radius: float = 0.1,
        action_noise: float = 0.0,
        pause_prob: float = 0.0,
        pause_steps: tuple[int, int] = (10, 50),
    ):
        if not 0.0 <= pause_prob <= 1.0:
            raise ConfigError(f"pause_prob: got {pause_prob!r}; expected a probability in [0, 1]")
        if len(pause_steps) != 2 or not 0 <= pause_steps[0] <= pause_steps[1]:
            raise ConfigError(f"pause_steps: got {pause_steps!r}; expected (lo, hi) with 0 <= lo <= hi")
        if action_noise < 0:
            raise ConfigError(f"action_noise: got {action_noise!r}; expected a standard deviation >= 0")
        self.walls = maze_map(maze)
        self.cells = empty_cells(maze)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self.jitter, self.action_noise = float(jitter), float(action_noise)
        self.waypoint_r2, self.target_r2 = waypoint_radius**2, target_radius**2
        self.pause_prob, self.pause_steps = float(pause_prob), (int(pause_steps[0]), int(pause_steps[1]))
        self.target: tuple[int, int] | None = None
        self.targets_reached = 0
        self._noise: list[float] = []
        self._noise_at = 0
        self.intended = (0.0, 0.0)  # the last action before the action noise

    def cell_of(self, row: float, col: float) -> tuple[int, int]:
        """The cell a position lies in (cell (i, j) spans i - 0.5 .. i + 0.5)."""
        return int(round(row)), int(round(col))

    def set_target(self, row: float, col: float, target: tuple[int, int]) -> None:
        """Plan jittered waypoints from the agent's position to ``target``."""
        goal = cast(tuple[int, int], tuple(target))  # a tuple copy of target; tuple() types it tuple[int, ...]
        path = shortest_path(self.walls, self.cell_of(row, col), goal, self.rng)[1:] or [goal]
        jitter = self.rng.uniform(-self.jitter, self.jitter, size=(len(path), 2))
        self._waypoints = [(i + dr, j + dc) for (i, j), (dr, dc) in zip(path, jitter.tolist(), strict=True)]
        self._k = 0
        self._since = 0
        self._hold = 0
        self.target = goal

    def new_target(self, row: float, col: float) -> None:
        """A new target cell drawn uniformly among the empty cells other than the agent's."""
        here = self.cell_of(row, col)
        others = [c for c in self.cells if c != here]
        self.set_target(row, col, others[int(self.rng.integers(len(others)))])

    def act(self, row: float, col: float, v_row: float, v_col: float) -> tuple[float, float]:
        if self.target is None:
            self.new_target(row, col)
        assert self.target is not None, "new_target() sets a target"
        if self._hold > 0:  # pausing at the reached target
            self._hold -= 1
            w = self.target
            if self._hold == 0:
                self.new_target(row, col)
        else:
            w = self._waypoints[self._k]
            last = self._k == len(self._waypoints) - 1
            self._since += 1
            if (w[0] - row) ** 2 + (w[1] - col) ** 2 < (self.target_r2 if last else self.waypoint_r2):
                if last:
                    self.targets_reached += 1
                    if self.pause_prob > 0 and self.rng.random() < self.pause_prob:
                        lo, hi = self.pause_steps
                        self._hold = int(self.rng.integers(lo, hi + 1))
                    if self._hold > 0:
                        w = self.target
                    else:
                        self.new_target(row, col)
                        w = self._waypoints[0]
                else:
                    self._k += 1
                    self._since = 0
                    w = self._waypoints[self._k]
            elif self._since > STUCK_STEPS:
                self.set_target(row, col, self.target)
                w = self._waypoints[0]
        a_row = _clip1(KP * (w[0] - row) - KD * v_row)
        a_col = _clip1(KP * (w[1] - col) - KD * v_col)
        self.intended = (a_row, a_col)
        if self.action_noise > 0:
            n_row, n_col = self._gaussian_pair()
            a_row, a_col = _clip1(a_row + self.action_noise * n_row), _clip1(a_col + self.action_noise * n_col)
        return a_row, a_col

    def _gaussian_pair(self) -> tuple[float, float]:
        if self._noise_at + 2 > len(self._noise):  # draw in blocks: one rng call per 4096 steps
            self._noise = self.rng.standard_normal(8192).tolist()
            self._noise_at = 0
        i = self._noise_at
        self._noise_at += 2
        return self._noise[i], self._noise[i + 1]
