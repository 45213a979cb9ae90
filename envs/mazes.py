"""The mazes of maze2d: D4RL's three by name, or any maze given as a text map; maps, goal cells, time limits,
env ids, and a plot helper.

A text map uses D4RL's notation: ``#`` a wall, ``O`` an open cell, ``G`` the (fixed) goal cell, rows separated by
a backslash (D4RL writes ``"#####\\#GOO#\\###O#\\#OOO#\\#####"`` for umaze) or by line breaks. It needs exactly one
``G``, walls all round its border and its open cells connected. A map equal to one of D4RL's mazes is that maze
(its name, time limit and reference scores). Any other map gets the id ``worldsim/Maze2d-Custom-<hash>-v1``,
registered when first asked for, and the time limit of 50 steps per cell of the longest shortest path from an
open cell to the goal, at least 300 (D4RL: umaze 300; the waypoint expert covers a cell in about 15-20 steps).

Everything here is in D4RL's frame: a position is ``(row, col)`` in index coordinates of the maze array,
and cell ``(i, j)`` is centred at ``(i, j)`` (it spans ``i - 0.5 .. i + 0.5`` and ``j - 0.5 .. j + 0.5``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
from collections import deque

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
#: the data set size for a custom map (umaze's)
CUSTOM_DATASET_STEPS = 1_000_000
#: time limit of a custom map: steps per cell of the goal's farthest open cell, and the least limit
CUSTOM_STEPS_PER_CELL, CUSTOM_MIN_STEPS = 50, 300
SYMBOLS = {"#": 1, "O": 0, "G": 0}


def to_text(walls, goal: tuple[int, int]) -> str:
    """A maze as a text map in D4RL's notation (rows joined by backslashes)."""
    rows = np.asarray(walls)
    return "\\".join(
        "".join("#" if rows[i, j] else ("G" if (i, j) == tuple(goal) else "O") for j in range(rows.shape[1]))
        for i in range(rows.shape[0])
    )


_NAMED_TEXT = {to_text(np.array(m), g): name for name, (m, g, _, _) in _SPECS.items()}


def is_text_map(maze: str) -> bool:
    return "\\" in maze or "\n" in maze or "#" in maze


@functools.lru_cache(maxsize=64)
def _parse(text: str, field: str) -> tuple[str, np.ndarray, tuple[int, int]]:
    """(canonical text, walls, goal cell) of a text map; a ConfigError naming ``field`` if it is not a maze."""
    lines = [line.strip() for line in text.replace("\n", "\\").split("\\")]
    lines = [line for line in lines if line]
    if len(lines) < 3 or len({len(line) for line in lines}) != 1:
        raise ConfigError(
            f"{field}: a text map needs at least 3 rows of equal length, got rows of lengths {[len(x) for x in lines]}"
        )
    bad = sorted({c for line in lines for c in line} - set(SYMBOLS))
    if bad:
        raise ConfigError(f"{field}: unknown map symbol(s) {''.join(bad)!r}; expected '#' wall, 'O' open, 'G' goal")
    goals = [(i, j) for i, line in enumerate(lines) for j, c in enumerate(line) if c == "G"]
    if len(goals) != 1:
        raise ConfigError(f"{field}: a text map needs exactly one goal cell 'G', got {len(goals)}")
    walls = np.array([[SYMBOLS[c] for c in line] for line in lines], dtype=np.int64)
    if walls[0].min() == 0 or walls[-1].min() == 0 or walls[:, 0].min() == 0 or walls[:, -1].min() == 0:
        raise ConfigError(f"{field}: the map's border must be walls '#' (the agent must not leave the maze)")
    far = cell_distances(walls, goals[0])
    cut_off = [c for c in zip(*np.nonzero(walls == 0), strict=True) if (int(c[0]), int(c[1])) not in far]
    if cut_off:
        i, j = (int(x) for x in cut_off[0])
        raise ConfigError(f"{field}: open cell ({i}, {j}) cannot reach the goal {goals[0]}; every open cell must")
    return to_text(walls, goals[0]), walls, goals[0]


def cell_distances(walls: np.ndarray, start: tuple[int, int]) -> dict[tuple[int, int], int]:
    """4-neighbour path lengths over open cells from ``start`` to every cell it reaches (BFS)."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        i, j = queue.popleft()
        for n in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if n not in dist and 0 <= n[0] < walls.shape[0] and 0 <= n[1] < walls.shape[1] and not walls[n]:
                dist[n] = dist[(i, j)] + 1
                queue.append(n)
    return dist


def check_maze(maze: object, field: str = "maze") -> str:
    """The canonical form of a maze: a D4RL name (also for a text map equal to one of D4RL's mazes), or a text map
    rows joined by backslashes; else a ConfigError naming ``field``."""
    if isinstance(maze, str) and maze in _SPECS:
        return maze
    if isinstance(maze, str) and is_text_map(maze):
        text = _parse(maze, field)[0]
        return _NAMED_TEXT.get(text, text)
    raise ConfigError(
        f"{field}: unknown maze {maze!r}; expected one of {', '.join(sorted(_SPECS))} or a text map "
        "('#' wall, 'O' open, 'G' goal, rows separated by '\\')"
    )


def is_custom(maze: str) -> bool:
    """Whether ``maze`` (canonical) is a text map rather than one of D4RL's mazes."""
    return check_maze(maze) not in _SPECS


def maze_slug(maze: str) -> str:
    """A short file-name-safe name: D4RL's name, or ``custom-<8 hex digits of the map's hash>``."""
    maze = check_maze(maze)
    return maze if maze in _SPECS else f"custom-{hashlib.sha1(maze.encode()).hexdigest()[:8]}"


def maze_map(name: str) -> np.ndarray:
    """The maze as an int array ``(rows, cols)``, 1 = wall, 0 = empty (a fresh copy)."""
    maze = check_maze(name)
    return np.array(_SPECS[maze][0] if maze in _SPECS else _parse(maze, "maze")[1], dtype=np.int64)


def goal_cell(name: str) -> tuple[int, int]:
    """The fixed goal cell ``(row, col)`` of a maze (D4RL's, or the map's ``G``)."""
    maze = check_maze(name)
    return _SPECS[maze][1] if maze in _SPECS else _parse(maze, "maze")[2]


def max_episode_steps(name: str) -> int:
    maze = check_maze(name)
    if maze in _SPECS:
        return _SPECS[maze][2]
    farthest = max(cell_distances(maze_map(maze), goal_cell(maze)).values())
    return max(CUSTOM_MIN_STEPS, CUSTOM_STEPS_PER_CELL * farthest)


def dataset_steps(name: str) -> int:
    """The expert data set's default size: D4RL's for its mazes, ``CUSTOM_DATASET_STEPS`` for a text map."""
    maze = check_maze(name)
    return DATASET_STEPS.get(maze, CUSTOM_DATASET_STEPS)


def env_id(name: str, multi_goal: bool = False) -> str:
    """The gymnasium id of a maze, e.g. ``env_id("umaze") == "worldsim/Maze2d-UMaze-v1"``; a text map's id is
    registered on first use."""
    maze = check_maze(name)
    if maze in _SPECS:
        return (MULTI_GOAL_MAZES if multi_goal else MAZES)[maze]
    import gymnasium

    digest = maze_slug(maze).split("-")[1]
    id_ = f"worldsim/Maze2d-Custom-{digest}{'-MultiGoal' if multi_goal else ''}-v1"
    if id_ not in gymnasium.registry:
        gymnasium.register(
            id=id_,
            entry_point="worldsim_envs.maze2d:Maze2dEnv",
            max_episode_steps=max_episode_steps(maze),
            kwargs={"maze": maze, "multi_goal": multi_goal},
        )
    return id_


def maze_of_env(env: str) -> tuple[str, bool] | None:
    """(maze, multi_goal) of a registered worldsim maze2d id, or None."""
    for multi_goal, ids in ((False, MAZES), (True, MULTI_GOAL_MAZES)):
        for name, id_ in ids.items():
            if id_ == env:
                return name, multi_goal
    import gymnasium

    spec = gymnasium.registry.get(env)
    if spec is not None and spec.entry_point == "worldsim_envs.maze2d:Maze2dEnv":
        return str(spec.kwargs["maze"]), bool(spec.kwargs.get("multi_goal", False))
    return None


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
