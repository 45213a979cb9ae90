"""Video task ``shapes``: a few coloured shapes bouncing in a box (``worldsim_envs.video``), shape 0 pushed by the
actions.

Elastic collisions with the borders and each other, velocity damping; shape 0 (the red disk, drawn on top) is pushed
by a smooth random action (an Ornstein-Uhlenbeck process); ``positions`` are shape 0's centre ``(row, col)`` in
pixels. Rollouts find shape 0 by its colour among the background and the other shapes' colours (found: exactly one
compact blob) and count it tracked within half its radius of its true centre. Setting (``dataset.KEY``, default in
configs/dataset/video.yaml): ``n_shapes``, the number of shapes (``worldsim data video --shapes N``). Uses only
worldsim's public API.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import worldsim
from worldsim.errors import ConfigError, check_int
from worldsim.video import find_agents

TRACKED_WITHIN_RADII = 0.5  # shape 0 found within half its radius of its true centre counts as tracked


def _video():
    from worldsim_envs import video

    return video


class Shapes:
    """``n_shapes`` shapes at one resolution; see the module docstring."""

    position_unit = "pixels"
    cli_help = {"n_shapes": "shapes: number of shapes"}
    cli_aliases = {"--shapes": "n_shapes"}

    def __init__(self, resolution: int, n_shapes: int):
        video = _video()
        self.resolution = check_int("dataset.resolution", resolution, minimum=16)
        n = check_int("dataset.n_shapes", n_shapes)
        if n > len(video.SHAPE_COLORS):
            raise ConfigError(f"dataset.n_shapes: got {n}; expected at most {len(video.SHAPE_COLORS)}")
        self.settings = {"n_shapes": n}
        self.fps = video.SHAPES_FPS
        self.radius = video.shape_radius(self.resolution)
        self.tracked_within = TRACKED_WITHIN_RADII * self.radius
        self.palette = (video.SHAPE_BACKGROUND, *video.SHAPE_COLORS[:n])

    def generate(
        self, episodes: int, length: int, seed: int, only: range | None = None, progress: bool = True
    ) -> dict[str, np.ndarray]:
        return _video().generate_shapes(
            self.resolution, episodes, length, self.settings["n_shapes"], seed, progress=progress, only=only
        )

    def find(self, frames) -> dict[str, np.ndarray]:
        """Shape 0: the one compact blob nearest to its colour among the background and the other shapes'."""
        return find_agents(frames, self.palette[1], palette=self.palette, max_spread_px=2 * self.radius + 2)

    def to_position(self, centroid_px: np.ndarray) -> np.ndarray:
        return np.asarray(centroid_px, dtype=np.float64)  # positions are pixels already


@worldsim.hookimpl
def worldsim_add_video_tasks() -> dict[str, Any]:
    return {"shapes": Shapes}  # the class is the factory; its setting's default: configs/dataset/video.yaml
