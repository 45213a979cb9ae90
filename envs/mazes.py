"""The three D4RL maze2d mazes: maps, fixed goal cells, time limits, env ids, and a plot helper.

Everything here is in D4RL's frame: a position is ``(row, col)`` in index coordinates of the maze array,
and cell ``(i, j)`` is centred at ``(i, j)`` (it spans ``i - 0.5 .. i + 0.5`` and ``j - 0.5 .. j + 0.5``).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

with contextlib.redirect_stderr(io.StringIO()):  # gymnasium_robotics prints an unrelated Adroit notice on import
    from gymnasium_robotics.envs.maze.maps import LARGE_MAZE, MEDIUM_MAZE, U_MAZE

from worldsim.errors import ConfigError

#: short name -> (map with 1 = wall, fixed goal cell, max_episode_steps, id stem); maps equal D4RL's
_SPECS = {
    "umaze": (U_MAZE, (1, 1), 300, "UMaze"),
    "medium": (MEDIUM_MAZE, (6, 6), 600, "Medium"),
    "large": (LARGE_MAZE, (7, 9), 800, "Large"),
}

#: short name -> the fixed-goal gymnasium id (D4RL maze2d-*-v1 protocol)
MAZES = {name: f"worldsim/Maze2d-{stem}-v1" for name, (_, _, _, stem) in _SPECS.items()}
#: short name -> the multi-goal gymnasium id (random goal cell per episode)
MULTI_GOAL_MAZES = {name: f"worldsim/Maze2d-{stem}-MultiGoal-v1" for name, (_, _, _, stem) in _SPECS.items()}
#: D4RL dataset sizes (steps) for the waypoint-expert data
DATASET_STEPS = {"umaze": 1_000_000, "medium": 2_000_000, "large": 4_000_000}


def check_maze(name: object, field: str = "maze") -> str:
    """``name`` if it is a known maze; else a ConfigError naming ``field``."""
    if name not in _SPECS:
        raise ConfigError(f"{field}: unknown maze {name!r}; expected one of {', '.join(sorted(_SPECS))}")
    return str(name)


def maze_map(name: str) -> np.ndarray:
    """The maze as an int array ``(rows, cols)``, 1 = wall, 0 = empty (a fresh copy)."""
    return np.array(_SPECS[check_maze(name)][0], dtype=np.int64)


def goal_cell(name: str) -> tuple[int, int]:
    """D4RL's fixed goal cell ``(row, col)`` of a maze."""
    return _SPECS[check_maze(name)][1]


def max_episode_steps(name: str) -> int:
    return _SPECS[check_maze(name)][2]


def env_id(name: str, multi_goal: bool = False) -> str:
    """The registered gymnasium id of a maze, e.g. ``env_id("umaze") == "worldsim/Maze2d-UMaze-v1"``."""
    check_maze(name)
    return (MULTI_GOAL_MAZES if multi_goal else MAZES)[name]


def empty_cells(name: str) -> list[tuple[int, int]]:
    """All empty cells ``(row, col)`` in row-major order."""
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(maze_map(name) == 0), strict=True)]


def draw_maze(ax, name: str, goal: bool = True, color: str = "0.35"):
    """Draw the walls of a maze on a matplotlib ``ax`` in D4RL's frame and return ``ax``.

    Convention: the horizontal axis is the column ``col`` (to the right), the vertical axis is the row
    ``row`` pointing downwards (row 0 at the top), as the maze array is printed. Plot a trajectory of
    positions ``p = (row, col)`` with ``ax.plot(p[:, 1], p[:, 0])``. The fixed goal cell is marked with a star.
    """
    from matplotlib.patches import Rectangle

    walls = maze_map(name)
    for i, j in zip(*np.nonzero(walls), strict=True):
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1.0, 1.0, facecolor=color, edgecolor="none"))
    if goal:
        gi, gj = goal_cell(name)
        ax.plot([gj], [gi], marker="*", markersize=14, color="tab:red", linestyle="none")
    ax.set_xlim(-0.5, walls.shape[1] - 0.5)
    ax.set_ylim(walls.shape[0] - 0.5, -0.5)  # row axis points down
    ax.set_aspect("equal")
    ax.set_xlabel("col")
    ax.set_ylabel("row")
    return ax
