"""The core's one door to the environments package, ``worldsim_envs``; no other core module imports it.

What the core asks of it, all through :func:`envs` (so the dependency is one documented interface, and
gymnasium / MuJoCo load only when a command needs them):

- the mazes: ``check_maze``, ``dataset_steps``, ``maze_slug``, ``env_id``, ``maze_map``, and importing the package
  registers the ``worldsim/Maze2d-*`` gymnasium ids (``worldsim.data.maze2d``, ``worldsim.data.minari``,
  ``worldsim data maze2d``);
- data generation: ``generate.generate_maze2d`` / ``targets_reached`` (``worldsim.data.maze2d``) and
  ``video.generate_maze_pixels`` / ``generate_shapes`` and their frame rates (``worldsim.video.data``);
- coordinates and colours: ``maze2d.vec_from_xy`` / ``xy_to_rowcol`` (Minari's frame), ``video.pixel_to_cell``
  and the renderer's palette ``render.FLOOR/WALL/GOAL/AGENT`` (agent finding in ``worldsim.video``).

The planner itself does not come through here: it reads its environment from the run's task (the
``worldsim_add_tasks`` hook; the first-party ``maze2d`` and ``reacher`` tasks import ``worldsim_envs`` themselves).
"""

from __future__ import annotations

import importlib
from types import ModuleType


def envs(submodule: str | None = None) -> ModuleType:
    """``worldsim_envs`` (or one of its submodules: ``generate``, ``maze2d``, ``render``, ``video``)."""
    import worldsim_envs  # the core's one import of the environments package

    return worldsim_envs if submodule is None else importlib.import_module(f"worldsim_envs.{submodule}")
