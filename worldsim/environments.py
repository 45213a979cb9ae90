"""The core's one door to the environments package, ``worldsim_envs``; no other core module imports it.

What the core asks of it, all through :func:`envs` (so the dependency is one documented interface, and
gymnasium / MuJoCo load only when a command needs them):

- the mazes: ``check_maze``, ``MAZES``, ``DATASET_STEPS``, ``env_id``, ``maze_map``, ``draw_maze``, and
  importing the package registers the ``worldsim/Maze2d-*`` gymnasium ids (``worldsim.planning``,
  ``worldsim.data.maze2d``, ``worldsim.data.minari``, ``worldsim data maze2d``);
- the D4RL score: ``normalized_score`` (``worldsim.planning``);
- data generation: ``generate.generate_maze2d`` / ``targets_reached`` (``worldsim.data.maze2d``) and
  ``video.generate_maze_pixels`` / ``generate_shapes`` and their frame rates (``worldsim.video.data``);
- coordinates and colours: ``maze2d.vec_from_xy`` / ``xy_to_rowcol`` (Minari's frame), ``video.pixel_to_cell``
  and the renderer's palette ``render.FLOOR/WALL/GOAL/AGENT`` (agent finding in ``worldsim.video``).

The task interface planned in DESIGN.md (a ``worldsim_add_tasks`` hook) is to replace the maze-specific
part of this by task objects any plugin can provide.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def envs(submodule: str | None = None) -> ModuleType:
    """``worldsim_envs`` (or one of its submodules: ``generate``, ``maze2d``, ``render``, ``video``)."""
    import worldsim_envs  # the core's one import of the environments package

    return worldsim_envs if submodule is None else importlib.import_module(f"worldsim_envs.{submodule}")
