"""Video task ``maze-pixels``: PointMaze seen from above (``worldsim_envs.video``), Diffusion Forcing's video world-model
setting on a D4RL maze.

The point mass of ``worldsim_envs.maze2d`` is driven by the noisy waypoint expert (D4RL's noisy data), one action per
frame held for ``frame_skip`` physics steps; frames show the walls, the goal disk and the agent in the renderer's
exact colours; ``positions`` are D4RL ``(row, col)`` in maze cells. Rollouts find the agent by the nearest palette
colour (and, as ``agent_found_tol60``, by the stricter rule of a colour within 60 of the agent's) and count it tracked
within D4RL's goal radius, 0.5 cells, of its true position. Settings (``dataset.KEY``, defaults in
configs/dataset/video.yaml): ``maze`` (umaze, medium or large), ``frame_skip``, ``action_noise`` (std of the expert's
action noise, so that actions matter). Uses only worldsim's public API.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import worldsim
from worldsim.errors import ConfigError, check_int
from worldsim.video import find_agents

STRICT_AGENT_TOL = 60.0  # agent_found_tol60: the stricter colour rule, kept in rollout.json for comparison
TRACKED_WITHIN_CELLS = 0.5  # an agent found within D4RL's goal radius of its true position counts as tracked


def _video():
    from worldsim_envs import video  # MuJoCo loads when a task is built, not when the plugin is

    return video


class MazePixels:
    """One maze at one resolution; see the module docstring."""

    position_unit = "cells"
    tracked_within = TRACKED_WITHIN_CELLS
    cli_help = {
        "maze": "maze-pixels: umaze, medium or large",
        "frame_skip": "maze-pixels: physics steps per frame (one action each)",
        "action_noise": "maze-pixels: std of the expert's action noise",
    }

    def __init__(self, resolution: int, maze: str, frame_skip: int, action_noise: float):
        import worldsim_envs

        if isinstance(action_noise, bool) or not isinstance(action_noise, (int, float)) or not action_noise >= 0:
            raise ConfigError(f"dataset.action_noise: got {action_noise!r}; expected a standard deviation >= 0")
        self.resolution = check_int("dataset.resolution", resolution, minimum=16)
        self.settings = {
            "maze": worldsim_envs.check_maze(maze, "dataset.maze"),
            "frame_skip": check_int("dataset.frame_skip", frame_skip),
            "action_noise": float(action_noise),
        }
        self.fps = _video().maze_pixels_fps(self.settings["frame_skip"])

    def generate(
        self, episodes: int, length: int, seed: int, only: range | None = None, progress: bool = True
    ) -> dict[str, np.ndarray]:
        s = self.settings
        return _video().generate_maze_pixels(
            s["maze"], self.resolution, episodes, length, s["frame_skip"], s["action_noise"], seed,
            progress=progress, only=only,
        )  # fmt: skip

    def find(self, frames) -> dict[str, np.ndarray]:
        """The agent: the blob nearest to the agent's colour among the renderer's floor, wall, goal and agent."""
        from worldsim_envs.render import AGENT, FLOOR, GOAL, WALL

        return find_agents(frames, AGENT, palette=(FLOOR, WALL, GOAL, AGENT))

    def extra_metrics(self, frames) -> dict[str, np.ndarray]:
        from worldsim_envs.render import AGENT

        return {"agent_found_tol60": find_agents(frames, AGENT, tol=STRICT_AGENT_TOL)["found"]}

    def world(self, positions: np.ndarray, actions: np.ndarray):
        """The true world where a context (its positions and actions ``(L, 2)``) left the agent, stepped by actions."""
        s = self.settings
        return _video().MazePixelsWorld(s["maze"], self.resolution, s["frame_skip"], positions, actions)

    def to_position(self, centroid_px: np.ndarray) -> np.ndarray:
        """Pixel (row, col) -> D4RL (row, col) in maze cells."""
        return _video().pixel_to_cell(centroid_px, self.settings["maze"], self.resolution)


@worldsim.hookimpl
def worldsim_add_video_tasks() -> dict[str, Any]:
    return {"maze-pixels": MazePixels}  # the class is the factory; its settings' defaults: configs/dataset/video.yaml
