"""maze2d on gymnasium-robotics PointMaze, with D4RL's maze2d-v1 protocol and frame.

Frames. gymnasium-robotics simulates in ``(x, y)``: x to the right along the columns, y *up* (against
the rows), the maze centred on the origin, one cell = 1 unit. D4RL (and every array this package returns)
uses index coordinates ``(row, col)``, cell ``(i, j)`` centred at ``(i, j)``::

    x = col + 0.5 - W / 2        y = H / 2 - row - 0.5          (H rows, W cols)
    v_x = v_col                  v_y = -v_row                   (velocities and the 2-D action alike)

The action ``(a_row, a_col)`` becomes the force command ``(a_col, -a_row)``, a rotation/flip that maps
Box(-1, 1, (2,)) onto itself. (The original D4RL model put its particle 0.2 off the cell centres; here a
cell centre is exactly ``(i, j)``.)

Dynamics are PointMaze's exactly: the step below clips the action to [-1, 1] and the velocity to [-5, 5] and
runs one ``mj_step`` of the same model (frame_skip 1, dt 0.01), as ``PointEnv.step`` does, without its
dict observation, goal bookkeeping and the redundant ``mj_forward``/``mj_rnePostConstraint`` calls (which do
not change the state); a test checks the trajectories agree bit for bit.
"""

from __future__ import annotations

import contextlib
import io
import math
import os

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from worldsim.errors import ConfigError, DataError

from .mazes import check_maze, empty_cells, goal_cell, maze_map
from .render import render_topdown

with contextlib.redirect_stderr(io.StringIO()):  # see mazes.py
    from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

SUCCESS_RADIUS = 0.5  # D4RL: sparse reward 1 within 0.5 of the goal
VELOCITY_LIMIT = 5.0  # PointEnv._clip_velocity


def rowcol_to_xy(pos, shape: tuple[int, int]) -> np.ndarray:
    """D4RL ``(..., 2)`` positions ``(row, col)`` -> PointMaze ``(x, y)`` for a maze of ``shape`` (rows, cols)."""
    pos = np.asarray(pos, dtype=np.float64)
    rows, cols = shape
    return np.stack([pos[..., 1] + 0.5 - cols / 2, rows / 2 - pos[..., 0] - 0.5], axis=-1)


def xy_to_rowcol(xy, shape: tuple[int, int]) -> np.ndarray:
    """PointMaze ``(..., 2)`` positions ``(x, y)`` -> D4RL ``(row, col)`` (inverse of :func:`rowcol_to_xy`)."""
    xy = np.asarray(xy, dtype=np.float64)
    rows, cols = shape
    return np.stack([rows / 2 - xy[..., 1] - 0.5, xy[..., 0] + cols / 2 - 0.5], axis=-1)


def vec_to_xy(vec) -> np.ndarray:
    """A D4RL-frame vector ``(v_row, v_col)`` (velocity or action) -> ``(v_x, v_y)``."""
    vec = np.asarray(vec, dtype=np.float64)
    return np.stack([vec[..., 1], -vec[..., 0]], axis=-1)


def vec_from_xy(vec) -> np.ndarray:
    """A PointMaze vector ``(v_x, v_y)`` -> D4RL ``(v_row, v_col)``."""
    vec = np.asarray(vec, dtype=np.float64)
    return np.stack([-vec[..., 1], vec[..., 0]], axis=-1)


def pointmaze_episode_to_d4rl(episode: dict, maze: str, where: str = "episode") -> dict:
    """A Minari PointMaze episode (``worldsim.data.minari.read_minari``), stored in gymnasium-robotics' ``(x, y)``
    frame, in D4RL's ``(row, col)`` frame of ``maze``: the ``observation`` (position, velocity), the goals and the
    actions; ``where`` names the episode in errors."""
    shape = maze_map(check_maze(maze, "maze")).shape
    obs = episode["observations"]
    if not isinstance(obs, dict) or "observation" not in obs or obs["observation"].shape[-1] != 4:
        raise DataError(
            f"{where}: expected PointMaze observations (a group with a 4-wide 'observation') to convert to maze {maze!r}"
        )
    out = dict(obs)
    o = obs["observation"]
    out["observation"] = np.concatenate([xy_to_rowcol(o[:, :2], shape), vec_from_xy(o[:, 2:])], axis=1).astype(o.dtype)
    for key in ("achieved_goal", "desired_goal"):
        if key in obs:
            out[key] = xy_to_rowcol(obs[key], shape).astype(obs[key].dtype)
    actions = episode["actions"]
    return {**episode, "observations": out, "actions": vec_from_xy(actions).astype(actions.dtype)}


def _clip(v: float, limit: float) -> float:
    return limit if v > limit else (-limit if v < -limit else v)


class Maze2dEnv(gym.Env):
    """D4RL maze2d-v1: observation ``(row, col, v_row, v_col)``, action ``(a_row, a_col)`` in [-1, 1].

    Fixed goal cell (D4RL's) unless ``multi_goal``: then each reset draws the goal cell uniformly among the
    empty cells other than the start cell. Reward: ``sparse`` 1.0 within 0.5 of the goal, else 0.0;
    ``dense`` exp(-distance). Never terminates (the registered ids add the time limit). Reset (D4RL's
    ``reset_model``): a uniformly random empty cell, position noise U(-0.1, 0.1) per axis, velocity noise
    N(0, ``velocity_noise``^2) per axis (D4RL: 0.1; 0 starts at rest). ``reset(options=...)`` may fix
    ``start_cell`` and ``goal_cell`` (row, col). ``info``: ``goal`` (2,) and ``success`` (within 0.5).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 100}

    def __init__(
        self,
        maze: str = "umaze",
        reward_type: str = "sparse",
        multi_goal: bool = False,
        velocity_noise: float = 0.1,
        render_mode: str | None = None,
    ):
        self.maze = check_maze(maze)
        if reward_type not in ("sparse", "dense"):
            raise ConfigError(f"reward_type: got {reward_type!r}; expected 'sparse' or 'dense'")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode: got {render_mode!r}; expected None or 'rgb_array'")
        self.reward_type = reward_type
        self.multi_goal = bool(multi_goal)
        self.velocity_noise = float(velocity_noise)
        self.render_mode = render_mode
        self.walls = maze_map(self.maze)
        self.cells = empty_cells(self.maze)
        self.fixed_goal = np.array(goal_cell(self.maze), dtype=np.float64)
        self.goal = self.fixed_goal.copy()
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

        # PointMazeEnv builds the MuJoCo model (maze walls + point mass); we step its PointEnv directly
        self._point_maze = PointMazeEnv(maze_map=self.walls.tolist(), continuing_task=True, reset_target=False)
        with contextlib.suppress(OSError):  # the model is loaded; PointMazeEnv leaves its temp XML behind
            os.remove(self._point_maze.tmp_xml_file_path)
        point = self._point_maze.point_env
        assert self._point_maze.maze.maze_size_scaling == 1 and point.frame_skip == 1
        self._model, self._data = point.model, point.data
        self._qpos, self._qvel, self._ctrl = self._data.qpos, self._data.qvel, self._data.ctrl
        rows, cols = self.walls.shape
        self._row0, self._col0 = rows / 2 - 0.5, cols / 2 - 0.5  # row = row0 - y, col = x + col0

    # -- simulation in D4RL's frame, on floats (the data generator's fast path) --------------------

    def state(self) -> tuple[float, float, float, float]:
        """The current ``(row, col, v_row, v_col)`` as floats."""
        x, y = self._qpos.tolist()  # Python floats: cheaper arithmetic downstream than NumPy scalars
        vx, vy = self._qvel.tolist()
        return self._row0 - y, x + self._col0, -vy, vx

    def advance(self, a_row: float, a_col: float) -> tuple[float, float, float, float]:
        """One physics step with a D4RL-frame action; returns the new state (no reward, goal or time limit)."""
        qvel = self._qvel
        vx, vy = qvel.tolist()
        if not (-VELOCITY_LIMIT <= vx <= VELOCITY_LIMIT and -VELOCITY_LIMIT <= vy <= VELOCITY_LIMIT):
            qvel[0], qvel[1] = _clip(vx, VELOCITY_LIMIT), _clip(vy, VELOCITY_LIMIT)
        self._ctrl[0] = _clip(a_col, 1.0)
        self._ctrl[1] = -_clip(a_row, 1.0)
        mujoco.mj_step(self._model, self._data)
        return self.state()

    def wall_contacts(self) -> int:
        """Contacts of the point mass with a wall now (PointMaze names the wall geoms block_<i>_<j>)."""
        model, data = self._model, self._data
        geoms = [(data.contact[k].geom1, data.contact[k].geom2) for k in range(data.ncon)]
        return sum(
            1 for a, b in geoms if model.geom(a).name.startswith("block") or model.geom(b).name.startswith("block")
        )

    def set_state(self, pos, vel=(0.0, 0.0)) -> None:
        """Place the point mass at D4RL-frame ``pos`` (row, col) with velocity ``vel`` (v_row, v_col)."""
        mujoco.mj_resetData(self._model, self._data)
        self._qpos[:] = rowcol_to_xy(pos, self.walls.shape)
        self._qvel[:] = vec_to_xy(vel)
        mujoco.mj_forward(self._model, self._data)

    # -- gymnasium API ------------------------------------------------------------------------------

    def _cell_option(self, options: dict, key: str):
        cell = options.get(key)
        if cell is None:
            return None
        i, j = (int(c) for c in cell)
        if not (0 <= i < self.walls.shape[0] and 0 <= j < self.walls.shape[1]) or self.walls[i, j]:
            raise ConfigError(f"reset options {key}: {tuple(cell)} is not an empty cell of maze {self.maze!r}")
        return i, j

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = options or {}
        rng = self.np_random
        start = self._cell_option(options, "start_cell")
        if start is None:
            start = self.cells[int(rng.integers(len(self.cells)))]
        pos = np.array(start, dtype=np.float64) + rng.uniform(-0.1, 0.1, size=2)
        vel = rng.standard_normal(2) * self.velocity_noise
        goal = self._cell_option(options, "goal_cell")
        if goal is None and self.multi_goal:
            others = [c for c in self.cells if c != tuple(start)]
            goal = others[int(rng.integers(len(others)))]
        self.goal = self.fixed_goal.copy() if goal is None else np.array(goal, dtype=np.float64)
        self.set_state(pos, vel)
        obs = np.array(self.state())
        return obs, self._info(obs)

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        obs = np.array(self.advance(float(a[0]), float(a[1])))
        dist = math.hypot(obs[0] - self.goal[0], obs[1] - self.goal[1])
        if self.reward_type == "sparse":
            reward = 1.0 if dist <= SUCCESS_RADIUS else 0.0
        else:
            reward = math.exp(-dist)
        return obs, reward, False, False, self._info(obs)

    def _info(self, obs: np.ndarray) -> dict:
        dist = math.hypot(obs[0] - self.goal[0], obs[1] - self.goal[1])
        return {"goal": self.goal.copy(), "success": bool(dist <= SUCCESS_RADIUS)}

    def render(self):
        """``rgb_array``: a top-down frame drawn with numpy (:func:`worldsim_envs.render.render_topdown`)."""
        if self.render_mode is None:
            return None
        row, col = self.state()[:2]
        return render_topdown(self.walls, (row, col), self.goal)

    def close(self):
        self._point_maze.close()
