"""The ``maze2d`` task: planning in the maze a run was trained on (D4RL's maze2d-v1 protocol, ``worldsim_envs``).

The maze is the run's ``dataset.maze``: one of D4RL's three by name, or a text map (``worldsim_envs.mazes``). A
data step is ``(a_t, o_{t+1})`` = (action (2), position (2), velocity (2)) in D4RL's ``(row, col)`` frame, the
vector of the ``maze2d`` data set (``worldsim_plugins.maze2d_data``, the one home of ``STEP_LAYOUT``); the env
observes ``(row, col, v_row, v_col)``, so ``observe`` is the identity. Goals and success come from the env's
``info``; the objectives get the maze's ``walls``; the normalized score uses D4RL's reference returns for its mazes
and computed ones (random policy, waypoint expert, 100 episodes) for a text map. ``multi_goal``: a random goal cell per episode (the ``-MultiGoal`` ids). ``--env d4rl:maze2d-<maze>-v1``
plans in D4RL's original env of the same maze (``worldsim_envs.d4rl``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import worldsim
from worldsim.errors import ConfigError
from worldsim_plugins.maze2d_data import STEP_LAYOUT


def _envs():
    import worldsim_envs  # gymnasium and MuJoCo load when a task is built, not when the plugin is

    return worldsim_envs


class Maze2dTask:
    """Planning in one maze; see the module docstring."""

    step_layout = STEP_LAYOUT

    def __init__(self, maze: str, multi_goal: bool = False):
        envs = _envs()
        self.maze = envs.check_maze(maze, "dataset.maze")
        self.multi_goal = bool(multi_goal)
        self.env_id = envs.env_id(self.maze, multi_goal=self.multi_goal)
        self.name = f"maze2d-{envs.maze_slug(self.maze)}"

    def env_ids(self) -> list[str]:
        """The ids this task plans in: the maze's fixed-goal and multi-goal envs, and for D4RL's mazes D4RL's own
        env (``d4rl:maze2d-<maze>-v1``, run in the environment ``make d4rl`` builds)."""
        envs = _envs()
        own = [envs.env_id(self.maze), envs.env_id(self.maze, multi_goal=True)]
        return own + ([f"d4rl:maze2d-{self.maze}-v1"] if not envs.is_custom(self.maze) else [])

    def make_env(self, env_id: str | None = None):
        import gymnasium as gym

        envs = _envs()
        env_id = self.env_id if env_id is None else env_id
        if env_id in self.env_ids():
            if env_id.startswith("d4rl:"):
                from worldsim_envs import d4rl

                return gym.make(d4rl.check_env(env_id))
            return gym.make(env_id)
        if env_id.startswith("d4rl:"):
            from worldsim_envs.d4rl import D4RL_MAZES

            other = D4RL_MAZES.get(env_id[len("d4rl:") :])
        else:
            found = envs.maze_of_env(env_id)
            other = None if found is None else found[0]
        if other is not None:
            raise ConfigError(
                f"--env {env_id}: the run was trained on the {self.name} maze, not {envs.maze_slug(other)}"
            )
        raise ConfigError(
            f"--env: {env_id!r} is not an env of {self.name}; expected one of {', '.join(self.env_ids())}"
        )

    def observe(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(obs, dtype=np.float64)

    def goal(self, info: dict[str, Any]) -> np.ndarray:
        return np.asarray(info["goal"], dtype=np.float64)

    def success(self, info: dict[str, Any]) -> np.ndarray:
        return np.asarray(info["success"], dtype=bool)

    def guidance_context(self) -> dict[str, Any]:
        return {"walls": _envs().maze_map(self.maze)}

    def reference_returns(self, env_id: str | None = None) -> tuple[float, float]:
        """(random, expert): D4RL's for its mazes (the multi-goal ids and D4RL's own envs use the fixed-goal ones),
        computed for a map."""
        return _envs().reference_returns(self.maze)

    def draw(self, ax, env_id: str | None = None) -> None:
        _envs().draw_maze(ax, self.maze, goal=False)

    def plot_xy(self, p: np.ndarray) -> np.ndarray:
        """(row, col) -> (col, row): columns to the right, rows down the axis ``draw`` sets up."""
        return np.asarray(p)[..., ::-1]


def build_maze2d(dataset: dict[str, Any], multi_goal: bool = False) -> Maze2dTask:
    """Factory of ``maze2d``: the maze of the run's ``dataset`` (a maze2d data set); ``multi_goal``: a random goal
    cell per episode instead of the maze's fixed one."""
    if dataset.get("name") != "maze2d":
        raise ConfigError(f"task maze2d: its data set is maze2d (worldsim data maze2d), got {dataset.get('name')!r}")
    if not isinstance(multi_goal, bool):
        raise ConfigError(f"task.multi_goal: got {multi_goal!r}; expected true or false")
    return Maze2dTask(dataset["maze"], multi_goal)


@worldsim.hookimpl
def worldsim_add_tasks():
    return {"maze2d": build_maze2d}
