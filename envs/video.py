"""Procedural action-conditioned video: ``maze-pixels`` (PointMaze seen from above) and ``shapes``.

Both return ``frames`` uint8 ``(E, L, H, W, 3)``, ``actions`` float32 ``(E, L, 2)`` and ``positions`` float32
``(E, L, 2)``, with ``actions[e, t]`` the action applied between frame t-1 and frame t (``actions[e, 0]`` = 0:
nothing led to the first frame), the layout of :mod:`worldsim.video.data`. Everything is drawn with numpy at
the target resolution: a pixel ``(i, j)`` spans ``[i, i + 1) x [j, j + 1)`` and takes the colour of what
covers its centre ``(i + 0.5, j + 0.5)`` (no anti-aliasing, exact colours).

- maze-pixels: Diffusion Forcing's video world-model setting on a D4RL maze (Chen et al., 2024): the point
  mass of :class:`worldsim_envs.maze2d.Maze2dEnv` driven by the noisy waypoint expert (D4RL's noisy data,
  Fu et al., 2020), one action per frame held for ``frame_skip`` physics steps; ``positions`` are D4RL
  ``(row, col)`` in maze cells.
- shapes: a few coloured shapes bouncing in a box (elastic collisions with the borders and each other,
  velocity damping), shape 0 pushed by a smooth random action (an Ornstein-Uhlenbeck process);
  ``positions`` are shape 0's centre ``(row, col)`` in pixels.
"""

from __future__ import annotations

import numpy as np

from worldsim.errors import ConfigError, check_int

from .render import AGENT, FLOOR, GOAL, WALL, draw_disk

AGENT_RADIUS = 0.3  # of a cell: ~2 px at 32x32 on umaze, clearly visible
GOAL_RADIUS = 0.5  # of a cell: D4RL's success radius
PHYSICS_DT = 0.01  # PointMaze's time step (s)

SHAPE_KINDS = ("circle", "square", "triangle")
SHAPE_COLORS = (
    (230, 70, 70),
    (70, 200, 90),
    (80, 130, 240),
    (235, 200, 60),
    (200, 90, 220),
    (60, 210, 210),
    (240, 140, 50),
    (240, 240, 240),
)
SHAPE_BACKGROUND = (18, 18, 28)
SHAPE_DAMPING = 0.98  # velocity kept per frame
OU_THETA, OU_SIGMA = 0.15, 0.35  # Ornstein-Uhlenbeck action: a <- a - theta * a + sigma * N(0, 1), clipped to [-1, 1]


def _check_resolution(resolution: object, field: str = "resolution") -> int:
    return check_int(field, resolution, minimum=16)


# -- maze-pixels geometry ---------------------------------------------------------------------------------


def maze_pixel_geometry(maze: str, resolution: int) -> dict:
    """How a maze sits in a square ``resolution`` image: ``rows``, ``cols``, ``cell_px`` (float) and ``offset_px``.

    ``cell_px = resolution / max(rows, cols)`` (= ``resolution / cols`` for the D4RL mazes, which are at
    least as wide as high); a maze with fewer rows than columns is centred vertically (``offset_px`` =
    (top, left) in pixels), the margin drawn as wall.
    """
    from .mazes import maze_map

    resolution = _check_resolution(resolution)
    rows, cols = maze_map(maze).shape
    cell_px = resolution / max(rows, cols)
    return {
        "rows": rows,
        "cols": cols,
        "cell_px": cell_px,
        "resolution": resolution,
        "offset_px": ((resolution - rows * cell_px) / 2, (resolution - cols * cell_px) / 2),
    }


def cell_to_pixel(pos_rowcol, maze: str, resolution: int) -> np.ndarray:
    """D4RL ``(..., 2)`` positions ``(row, col)`` (cell (i, j) spans i-0.5..i+0.5) -> continuous pixel coordinates."""
    g = maze_pixel_geometry(maze, resolution)
    return (np.asarray(pos_rowcol, dtype=np.float64) + 0.5) * g["cell_px"] + np.asarray(g["offset_px"])


def pixel_to_cell(px_rowcol, maze: str, resolution: int) -> np.ndarray:
    """Continuous pixel coordinates ``(..., 2)`` (pixel (i, j) spans [i, i+1)) -> D4RL ``(row, col)`` (inverse of the above)."""
    g = maze_pixel_geometry(maze, resolution)
    return (np.asarray(px_rowcol, dtype=np.float64) - np.asarray(g["offset_px"])) / g["cell_px"] - 0.5


def _pixel_centres(resolution: int) -> np.ndarray:
    return np.arange(resolution, dtype=np.float64) + 0.5


def maze_background(maze: str, resolution: int) -> np.ndarray:
    """The static part of a maze-pixels frame ``(R, R, 3)`` uint8: floor, walls and the fixed goal disk."""
    from .mazes import goal_cell, maze_map

    g = maze_pixel_geometry(maze, resolution)
    walls = maze_map(maze)
    c = _pixel_centres(g["resolution"])
    ri = np.floor((c - g["offset_px"][0]) / g["cell_px"]).astype(np.int64)  # cell row of each pixel row
    ci = np.floor((c - g["offset_px"][1]) / g["cell_px"]).astype(np.int64)
    inside_r, inside_c = (ri >= 0) & (ri < g["rows"]), (ci >= 0) & (ci < g["cols"])
    wall = np.ones((g["resolution"], g["resolution"]), dtype=bool)  # outside the maze counts as wall
    ok = inside_r[:, None] & inside_c[None, :]
    wall[ok] = walls[np.clip(ri, 0, g["rows"] - 1)[:, None], np.clip(ci, 0, g["cols"] - 1)[None, :]][ok].astype(bool)
    img = np.empty((g["resolution"], g["resolution"], 3), dtype=np.uint8)
    img[:] = FLOOR
    img[wall] = WALL
    draw_disk(img, cell_to_pixel(goal_cell(maze), maze, resolution), GOAL_RADIUS * g["cell_px"], GOAL)
    return img


def render_maze_frames(positions, maze: str, resolution: int, background: np.ndarray | None = None) -> np.ndarray:
    """Frames ``(L, R, R, 3)`` uint8 of the agent disk (radius 0.3 cell, drawn last) at D4RL ``positions`` ``(L, 2)``."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    bg = maze_background(maze, resolution) if background is None else background
    px = cell_to_pixel(positions, maze, resolution)
    r2 = (AGENT_RADIUS * maze_pixel_geometry(maze, resolution)["cell_px"]) ** 2
    c = _pixel_centres(bg.shape[0])
    agent = ((c[None, :, None] - px[:, 0, None, None]) ** 2 + (c[None, None, :] - px[:, 1, None, None]) ** 2) <= r2
    frames = np.broadcast_to(bg, (len(positions),) + bg.shape).copy()
    frames[agent] = AGENT
    return frames


class MazePixelsWorld:
    """The maze-pixels world driven live (``worldsim play``): the point mass placed where a context left it, each
    action held for ``frame_skip`` physics steps as in the data, the frame rendered as the data's."""

    def __init__(self, maze: str, resolution: int, frame_skip: int, positions, actions) -> None:
        """``positions`` ``(L, 2)`` and ``actions`` ``(L, 2)``: a context of the data (``actions[t]`` led to frame t).
        The data record no velocities, so the mass starts at rest at the first position and the context's actions
        are replayed: an episode starts with a velocity of N(0, 0.1^2) per axis, which this leaves out (a few
        hundredths of a cell after 16 frames, against 0.2 when starting at the last position with the velocity of
        the last frame step)."""
        from .maze2d import Maze2dEnv

        self.maze, self.resolution, self.frame_skip = maze, resolution, frame_skip
        self.env = Maze2dEnv(maze)
        self.background = maze_background(maze, resolution)
        p = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
        self.env.set_state(p[0], (0.0, 0.0))
        for action in np.asarray(actions, dtype=np.float64).reshape(-1, 2)[1 : len(p)]:
            self.step(action)

    def step(self, action) -> tuple[np.ndarray, np.ndarray]:
        """Frame ``(R, R, 3)`` uint8 and position ``(2,)`` after ``action`` (a_row, a_col) held for a frame."""
        a_row, a_col = (float(a) for a in np.asarray(action, dtype=np.float64).reshape(2))
        for _ in range(self.frame_skip):
            state = self.env.advance(a_row, a_col)
        pos = np.array(state[:2])
        return render_maze_frames(pos[None], self.maze, self.resolution, self.background)[0], pos


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="episode", mininterval=0.5, dynamic_ncols=True)


def generate_maze_pixels(
    maze: str = "umaze",
    resolution: int = 32,
    episodes: int = 600,
    length: int = 96,
    frame_skip: int = 4,
    action_noise: float = 0.5,
    seed: int = 0,
    progress: bool = False,
    only: range | None = None,
) -> dict[str, np.ndarray]:
    """``episodes`` maze-pixels episodes of ``length`` frames (see the module docstring); seeded.

    Episode e starts from its own env reset (seed derived from ``(seed, e)``) with its own expert; each frame's
    action is the expert's (plus N(0, ``action_noise``^2) noise, clipped) held for ``frame_skip`` physics steps.
    ``only`` generates just those episodes of the ``episodes`` (the same frames as in the whole set); a longer
    ``length`` continues the same episodes.
    """
    from .expert import WaypointExpert
    from .maze2d import Maze2dEnv
    from .mazes import check_maze

    maze = check_maze(maze)
    resolution = _check_resolution(resolution)
    episodes, length = check_int("episodes", episodes), check_int("length", length)
    frame_skip, seed = check_int("frame_skip", frame_skip), check_int("seed", seed, minimum=0)
    if isinstance(action_noise, bool) or not isinstance(action_noise, (int, float)) or not action_noise >= 0:
        raise ConfigError(f"action_noise: got {action_noise!r}; expected a standard deviation >= 0")
    indices = _episode_subset(only, episodes)
    env = Maze2dEnv(maze)
    bg = maze_background(maze, resolution)
    frames = np.empty((len(indices), length, resolution, resolution, 3), dtype=np.uint8)
    actions = np.zeros((len(indices), length, 2), dtype=np.float32)
    positions = np.empty((len(indices), length, 2), dtype=np.float32)
    bar = _progress(len(indices), f"maze-pixels {maze} {resolution}x{resolution}", progress)
    for i, e in enumerate(indices):
        env.reset(seed=int(np.random.SeedSequence([seed, e]).generate_state(1)[0]))
        expert = WaypointExpert(maze, seed=np.random.default_rng([seed, e, 1]), action_noise=float(action_noise))
        state = env.state()
        pos = positions[i]
        pos[0] = state[:2]
        for t in range(1, length):
            a_row, a_col = expert.act(*state)
            for _ in range(frame_skip):
                state = env.advance(a_row, a_col)
            actions[i, t] = a_row, a_col
            pos[t] = state[:2]
        frames[i] = render_maze_frames(pos, maze, resolution, bg)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"frames": frames, "actions": actions, "positions": positions}


def _episode_subset(only: range | None, episodes: int) -> range:
    """The episode indices to generate: ``only`` (within ``range(episodes)``), else all."""
    if only is None:
        return range(episodes)
    if not isinstance(only, range) or only.step != 1 or only.start < 0 or only.stop > episodes:
        raise ConfigError(f"only: got {only!r}; expected a range of episodes within 0..{episodes}")
    return only


def maze_pixels_fps(frame_skip: int) -> int:
    """Frames per second of maze-pixels video: one frame per ``frame_skip`` physics steps of 0.01 s."""
    return max(1, int(round(1.0 / (PHYSICS_DT * frame_skip))))


# -- shapes -----------------------------------------------------------------------------------------------


def shape_radius(resolution: int) -> float:
    """The collision radius of every shape: resolution / 8 pixels."""
    return resolution / 8.0


def _shape_masks(kind: str, dy: np.ndarray, dx: np.ndarray, r: float) -> np.ndarray:
    if kind == "circle":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        s = 0.75 * r
        return (np.abs(dy) <= s) & (np.abs(dx) <= s)
    # triangle: apex at the top (dy = -r), base at dy = r/2, half-width 0.866 r there (inscribed in the circle)
    return (dy >= -r) & (dy <= 0.5 * r) & (np.abs(dx) <= (dy + r) / (1.5 * r) * 0.866 * r)


def render_shapes(centres: np.ndarray, resolution: int) -> np.ndarray:
    """Frames ``(..., R, R, 3)`` uint8 of shapes at ``centres`` ``(..., N, 2)`` (pixel row, col); shape 0 on top."""
    centres = np.asarray(centres, dtype=np.float64)
    lead, n = centres.shape[:-2], centres.shape[-2]
    flat = centres.reshape(-1, n, 2)
    r = shape_radius(resolution)
    c = _pixel_centres(resolution)
    img = np.empty((len(flat), resolution, resolution, 3), dtype=np.uint8)
    img[:] = SHAPE_BACKGROUND
    for k in list(range(1, n)) + [0]:
        dy = c[None, :, None] - flat[:, k, 0, None, None]
        dx = c[None, None, :] - flat[:, k, 1, None, None]
        img[_shape_masks(SHAPE_KINDS[k % len(SHAPE_KINDS)], dy, dx, r)] = SHAPE_COLORS[k]
    return img.reshape(lead + (resolution, resolution, 3))


def _initial_centres(rng: np.random.Generator, n: int, resolution: int, r: float) -> np.ndarray:
    lo, hi = r, resolution - r
    for _ in range(1000):
        p = rng.uniform(lo, hi, size=(n, 2))
        d = np.linalg.norm(p[:, None] - p[None, :], axis=-1) + np.eye(n) * 1e9
        if d.min() >= 2.2 * r:
            return p
    raise ConfigError(
        f"n_shapes: {n} shapes of radius {r:g} px do not fit in a {resolution}x{resolution} box; use fewer"
    )


def generate_shapes(
    resolution: int = 32,
    episodes: int = 600,
    length: int = 96,
    n_shapes: int = 3,
    seed: int = 0,
    progress: bool = False,
    return_all: bool = False,
    only: range | None = None,
) -> dict[str, np.ndarray]:
    """``episodes`` shapes episodes of ``length`` frames (see the module docstring); seeded, all episodes at once.
    ``only`` returns (and renders) just those episodes; a longer ``length`` continues the same episodes.

    Per frame: shape 0's velocity += 0.05 r * action, all velocities *= 0.98 and are capped at r/2 pixels
    per frame (so nothing tunnels), positions move, shapes bounce off the borders (reflection) and off each
    other (equal masses: the velocity components along the normal are exchanged; overlaps are pushed apart).
    ``return_all`` adds ``centres`` ``(E, L, N, 2)`` of every shape.
    """
    resolution = _check_resolution(resolution)
    episodes, length = check_int("episodes", episodes), check_int("length", length)
    n = check_int("n_shapes", n_shapes)
    seed = check_int("seed", seed, minimum=0)
    if n > len(SHAPE_COLORS):
        raise ConfigError(f"n_shapes: got {n}; expected at most {len(SHAPE_COLORS)} (one distinct colour each)")
    rng = np.random.default_rng([seed, 2])
    r = shape_radius(resolution)
    vmax, accel = 0.5 * r, 0.05 * r
    pos = np.stack([_initial_centres(rng, n, resolution, r) for _ in range(episodes)])  # (E, N, 2)
    angle = rng.uniform(0, 2 * np.pi, size=(episodes, n))
    speed = rng.uniform(0.05, 0.2, size=(episodes, n)) * r
    vel = np.stack([np.sin(angle), np.cos(angle)], axis=-1) * speed[..., None]
    centres = np.empty((episodes, length, n, 2), dtype=np.float64)
    actions = np.zeros((episodes, length, 2), dtype=np.float32)
    a = np.zeros((episodes, 2))
    centres[:, 0] = pos
    lo, hi = r, resolution - r
    for t in range(1, length):
        a = np.clip(a - OU_THETA * a + OU_SIGMA * rng.standard_normal((episodes, 2)), -1.0, 1.0)
        actions[:, t] = a
        vel[:, 0] += accel * a
        vel *= SHAPE_DAMPING
        norm = np.linalg.norm(vel, axis=-1, keepdims=True)
        vel *= np.minimum(1.0, vmax / np.maximum(norm, 1e-12))
        pos += vel
        for i in range(n):  # shape-shape collisions
            for j in range(i + 1, n):
                d = pos[:, j] - pos[:, i]
                dist = np.linalg.norm(d, axis=-1)
                hit = dist < 2 * r
                if not hit.any():
                    continue
                nrm = d[hit] / np.maximum(dist[hit], 1e-9)[:, None]
                rel = np.einsum("bk,bk->b", vel[hit, i] - vel[hit, j], nrm)
                dv = np.maximum(rel, 0.0)[:, None] * nrm  # only when approaching
                vel[hit, i] -= dv
                vel[hit, j] += dv
                push = ((2 * r - dist[hit]) / 2)[:, None] * nrm
                pos[hit, i] -= push
                pos[hit, j] += push
        low, high = pos < lo, pos > hi  # border collisions: reflect
        pos = np.where(low, 2 * lo - pos, np.where(high, 2 * hi - pos, pos))
        vel = np.where(low, np.abs(vel), np.where(high, -np.abs(vel), vel))
        pos = np.clip(pos, lo, hi)
        centres[:, t] = pos
    indices = _episode_subset(only, episodes)
    centres, actions = centres[indices.start : indices.stop], actions[indices.start : indices.stop]
    frames = np.empty((len(indices), length, resolution, resolution, 3), dtype=np.uint8)
    bar = _progress(len(indices), f"shapes {resolution}x{resolution}", progress)
    for e in range(len(indices)):
        frames[e] = render_shapes(centres[e], resolution)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    out: dict[str, np.ndarray] = {
        "frames": frames,
        "actions": actions,
        "positions": centres[:, :, 0].astype(np.float32),
    }
    if return_all:
        out["centres"] = centres.astype(np.float32)
    return out


SHAPES_FPS = 15
