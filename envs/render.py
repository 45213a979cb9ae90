"""Top-down RGB frames of a maze drawn with numpy (no OpenGL needed): walls, goal, agent."""

from __future__ import annotations

import numpy as np

FLOOR, WALL, GOAL, AGENT = (235, 235, 225), (90, 90, 90), (220, 50, 50), (40, 90, 220)


def draw_disk(img: np.ndarray, centre_px, radius_px: float, color) -> None:
    """Paint the pixels of ``img`` whose centre (i + .5, j + .5) lies within ``radius_px`` of ``centre_px`` (row, col)."""
    h, w = img.shape[:2]
    ys, xs = np.ogrid[:h, :w]
    inside = (ys + 0.5 - centre_px[0]) ** 2 + (xs + 0.5 - centre_px[1]) ** 2 <= radius_px**2
    img[inside] = color


def render_topdown(walls: np.ndarray, pos, goal=None, cell_px: int = 32) -> np.ndarray:
    """A ``(rows * cell_px, cols * cell_px, 3)`` uint8 image; ``pos``/``goal`` are D4RL ``(row, col)``.

    Image row = maze row (downwards), image column = maze column, as :func:`worldsim_envs.draw_maze`.
    The agent (radius 0.1, as the point mass) is drawn at 0.15 of a cell to stay visible; the goal disk
    has the success radius 0.5.
    """
    img = np.empty((walls.shape[0] * cell_px, walls.shape[1] * cell_px, 3), dtype=np.uint8)
    img[:] = FLOOR
    img[np.kron(walls, np.ones((cell_px, cell_px), dtype=walls.dtype)).astype(bool)] = WALL
    to_px = lambda p: (np.asarray(p, dtype=np.float64) + 0.5) * cell_px  # noqa: E731 - cell (i, j) spans i-0.5..i+0.5
    if goal is not None:
        draw_disk(img, to_px(goal), 0.5 * cell_px, GOAL)  # a goal cell centre: the disk stays inside its cell
    draw_disk(img, to_px(pos), 0.15 * cell_px, AGENT)
    return img
