"""Atari Pong from ale-py (the Arcade Learning Environment, ROMs in its wheel), as action-conditioned video.

The env is gymnasium's ``ALE/Pong-v5`` with the minimal action set read as three actions, NOOP, UP and DOWN (the
ROM's RIGHT moves the right paddle up, LEFT down), each held for ``frame_skip`` emulator frames, with sticky actions
(``repeat_action_probability``: v5's 0.25 by default). A frame is the play field, rows 34-193 of the 210x160 screen
(the score above it and the white border below are cut), downsampled from 160x160 to ``resolution`` squared by
area averaging (pillow's box filter). The right paddle (green) is the player's.

The player is scripted so that the data cover the game: it moves its paddle towards the ball, aiming at a random
offset that changes every few frames, and with probability ``epsilon`` per frame it instead holds a random action
for 2-8 frames. Random actions alone miss nearly every ball. ``positions`` are the right paddle's centre (row, col)
in pixels of the downsampled frame, measured on the emulator's full-resolution screen. Seeded per episode.
"""

from __future__ import annotations

import numpy as np

from worldsim.errors import ConfigError, check_int

from .video import _episode_subset, _progress

FIELD = slice(34, 194)  # the play field's rows on the 210x160 screen: 160 x 160
BACKGROUND, PLAYER, OPPONENT, BALL = (144, 72, 17), (92, 186, 92), (213, 130, 74), (236, 236, 236)
PALETTE = (BACKGROUND, PLAYER, OPPONENT, BALL)
NOOP, UP, DOWN = 0, 1, 2
ALE_ACTIONS = (0, 2, 3)  # NOOP, RIGHT (paddle up), LEFT (paddle down) of Pong's minimal action set
ACTION_NAMES = ("noop", "up", "down")
PLAYER_COLUMNS = slice(136, 160)  # the right paddle's columns on the screen (it stays at 140-143)


def _gym():
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    return gymnasium


def env_id(game: str) -> str:
    """The gymnasium id of a game: pong -> ALE/Pong-v5."""
    if game != "pong":
        raise ConfigError(f"dataset.game: got {game!r}; expected pong (the one game with a frame-based tracker)")
    return "ALE/Pong-v5"


def make_env(game: str, frame_skip: int, sticky: float):
    """The ALE env: ``frame_skip`` emulator frames per action, ``sticky`` the chance an action repeats the last."""
    return _gym().make(env_id(game), frameskip=frame_skip, repeat_action_probability=sticky, full_action_space=False)


def downsample(screen: np.ndarray, resolution: int) -> np.ndarray:
    """The play field of a 210x160 screen, area-averaged to ``resolution`` x ``resolution`` uint8 RGB."""
    from PIL import Image

    field = np.ascontiguousarray(screen[FIELD])
    return np.asarray(Image.fromarray(field).resize((resolution, resolution), Image.Resampling.BOX))


def _centroid(mask: np.ndarray) -> np.ndarray | None:
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return np.array([rows.mean() + 0.5, cols.mean() + 0.5])


def player_position(screen: np.ndarray, resolution: int) -> np.ndarray:
    """The right paddle's centre (row, col) in pixels of the downsampled frame, from the full screen (NaN while it
    is off the field)."""
    field = screen[FIELD]
    mask = np.zeros(field.shape[:2], dtype=bool)
    mask[:, PLAYER_COLUMNS] = (field[:, PLAYER_COLUMNS] == PLAYER).all(axis=-1)
    centre = _centroid(mask)
    scale = resolution / field.shape[0]
    return np.full(2, np.nan) if centre is None else centre * scale


def _ball_row(screen: np.ndarray) -> float | None:
    field = screen[FIELD]
    mask = (field == BALL).all(axis=-1)
    centre = _centroid(mask)
    return None if centre is None else float(centre[0])


class ScriptedPlayer:
    """Follows the ball with a drifting aim, and now and then plays a few random frames (see the module)."""

    def __init__(self, rng: np.random.Generator, epsilon: float) -> None:
        self.rng, self.epsilon = rng, epsilon
        self.offset, self.random_left, self.random_action = 0.0, 0, NOOP

    def act(self, screen: np.ndarray) -> int:
        rng = self.rng
        if self.random_left > 0:
            self.random_left -= 1
            return self.random_action
        if rng.random() < self.epsilon:
            self.random_left, self.random_action = int(rng.integers(1, 8)), int(rng.integers(3))
            return self.random_action
        if rng.random() < 0.1:
            self.offset = float(rng.uniform(-12, 12))
        ball = _ball_row(screen)
        paddle = player_position(screen, 160)[0]
        if ball is None or np.isnan(paddle):
            return NOOP
        gap = ball + self.offset - paddle
        return NOOP if abs(gap) < 4 else (DOWN if gap > 0 else UP)


def _start(env, seed: int, resolution: int) -> np.ndarray:
    """Reset, then NOOPs until the field and the player's paddle are drawn (the first screens show neither)."""
    screen, _ = env.reset(seed=seed)
    for _ in range(200):
        if np.isfinite(player_position(screen, resolution)).all():
            return screen
        screen, *_ = env.step(ALE_ACTIONS[NOOP])
    raise RuntimeError("pong: the player's paddle did not appear within 200 frames of a reset")


def generate_pong(
    resolution: int = 64,
    episodes: int = 600,
    length: int = 144,
    frame_skip: int = 4,
    sticky: float = 0.25,
    epsilon: float = 0.2,
    seed: int = 0,
    progress: bool = False,
    only: range | None = None,
) -> dict[str, np.ndarray]:
    """``episodes`` Pong episodes of ``length`` frames: ``frames`` (E, L, R, R, 3) uint8, ``actions`` (E, L, 3) one-hot
    (``actions[:, t]`` led to frame t; zeros at t = 0) and ``positions`` (E, L, 2). Episode e resets the env with its
    own seed, derived from ``(seed, e)``, and its player draws from ``(seed, e, 1)``: ``only`` makes just those
    episodes, the same frames as in the whole set, and a longer ``length`` continues them. A game that ends within
    an episode starts again (a Pong game runs for thousands of frames; these episodes are far shorter)."""
    resolution = check_int("resolution", resolution, minimum=16)
    episodes, length = check_int("episodes", episodes), check_int("length", length)
    frame_skip, seed = check_int("frame_skip", frame_skip), check_int("seed", seed, minimum=0)
    for name, p in (("sticky", sticky), ("epsilon", epsilon)):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise ConfigError(f"{name}: got {p!r}; expected a probability in [0, 1]")
    indices = _episode_subset(only, episodes)
    env = make_env("pong", frame_skip, float(sticky))
    frames = np.empty((len(indices), length, resolution, resolution, 3), dtype=np.uint8)
    actions = np.zeros((len(indices), length, 3), dtype=np.float32)
    positions = np.empty((len(indices), length, 2), dtype=np.float32)
    bar = _progress(len(indices), f"pong {resolution}x{resolution}", progress)
    try:
        for i, e in enumerate(indices):
            reset_seed = int(np.random.SeedSequence([seed, e]).generate_state(1)[0])
            screen = _start(env, reset_seed, resolution)
            player = ScriptedPlayer(np.random.default_rng([seed, e, 1]), float(epsilon))
            for t in range(length):
                if t > 0:
                    a = player.act(screen)
                    screen, _, terminated, truncated, _ = env.step(ALE_ACTIONS[a])
                    actions[i, t, a] = 1.0
                    if terminated or truncated:
                        screen = _start(env, reset_seed + t, resolution)
                frames[i, t] = downsample(screen, resolution)
                at = player_position(screen, resolution)
                positions[i, t] = at if np.isfinite(at).all() else positions[i, t - 1]  # hidden in the border: kept
            if bar is not None:
                bar.update(1)
    finally:
        env.close()
        if bar is not None:
            bar.close()
    return {"frames": frames, "actions": actions, "positions": positions}
