"""Video task ``atari``: an Atari game from ale-py (``worldsim_envs.atari``), a world model of a game nobody here wrote.

Pong (``ALE/Pong-v5``): the play field at ``resolution`` squared, the right (green) paddle driven by three actions,
NOOP, UP and DOWN, as one-hot vectors; a scripted player that follows the ball with a drifting aim and plays
random stretches covers the game. Rollouts find the player's paddle by the nearest palette colour in the right
quarter of the frame (found: exactly one compact blob) and count it tracked within ``TRACKED_WITHIN_PX`` pixels of
its true centre; ``ball_found`` (an extra metric) marks frames where the ball is seen. Settings (``dataset.KEY``;
defaults: the factory's signature, or configs/dataset/video.yaml where it names the key): ``game``, ``frame_skip``
(emulator frames per action), ``sticky`` (v5's repeat_action_probability), ``epsilon`` (the player's share of random
stretches). The recorded settings name the env id. Uses only worldsim's public API.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import worldsim
from worldsim.errors import ConfigError, check_int
from worldsim.video import find_agents

TRACKED_WITHIN_PX = 2.0  # a third of the paddle's 6.4-pixel height at 64x64
BALL_MIN_WHITE = 0.3  # a pixel at least 30% ball-white (its blend with the background) shows the ball


def _atari():
    from worldsim_envs import atari  # ale-py loads when a task is built, not when the plugin is

    return atari


class Atari:
    """One game at one resolution; see the module docstring."""

    position_unit = "pixels"
    cli_help = {
        "game": "atari: the game (pong)",
        "sticky": "atari: chance an action repeats the last one (v5: 0.25)",
        "epsilon": "atari: the scripted player's chance per frame of a random stretch",
    }
    cli_aliases = {"--game": "game"}

    def __init__(self, resolution: int, game: str = "pong", frame_skip: int = 4, sticky: float = 0.25,
                 epsilon: float = 0.2) -> None:  # fmt: skip
        atari = _atari()
        for name, p in (("sticky", sticky), ("epsilon", epsilon)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise ConfigError(f"dataset.{name}: got {p!r}; expected a probability in [0, 1]")
        self.resolution = check_int("dataset.resolution", resolution, minimum=16)
        self.settings = {
            "game": str(game),
            "env_id": atari.env_id(str(game).replace("ALE/", "").lower()),
            "frame_skip": check_int("dataset.frame_skip", frame_skip),
            "sticky": float(sticky),
            "epsilon": float(epsilon),
        }
        self.fps = max(1, round(60 / self.settings["frame_skip"]))  # the console's 60 frames/s
        self.tracked_within = TRACKED_WITHIN_PX * self.resolution / 64
        self.action_keys = {"none": [1.0, 0.0, 0.0], "up": [0.0, 1.0, 0.0], "down": [0.0, 0.0, 1.0]}

    def generate(
        self, episodes: int, length: int, seed: int, only: range | None = None, progress: bool = True
    ) -> dict[str, np.ndarray]:
        s = self.settings
        return _atari().generate_pong(self.resolution, episodes, length, s["frame_skip"], s["sticky"], s["epsilon"],
                                      seed, progress=progress, only=only)  # fmt: skip

    def find(self, frames) -> dict[str, np.ndarray]:
        """The player's paddle: the green blob of the right quarter (the opponent's paddle is orange, on the left)."""
        atari = _atari()
        frames = np.asarray(frames)
        right = frames.shape[-2] * 3 // 4
        found = find_agents(frames[..., right:, :], atari.PLAYER, palette=atari.PALETTE,
                            max_spread_px=max(4, frames.shape[-3] // 6))  # fmt: skip
        centroid = np.asarray(found["centroid_px"], dtype=np.float64).copy()
        centroid[..., 1] += right
        return {**found, "centroid_px": centroid}

    def extra_metrics(self, frames) -> dict[str, np.ndarray]:
        """``ball_found``: a pixel of the field left of the player's paddle at least 30% of the way from the
        background to the ball's white."""
        atari = _atari()
        frames = np.asarray(frames)
        x = frames[..., : frames.shape[-2] * 7 // 8, :].astype(np.float64)  # left of the paddle (at 87.5% of the width)
        bg, ball = np.asarray(atari.BACKGROUND, dtype=np.float64), np.asarray(atari.BALL, dtype=np.float64)
        d = ball - bg
        share = ((x - bg) @ d) / (d @ d)  # how far along background -> white, per pixel
        off = np.linalg.norm((x - bg) - share[..., None] * d, axis=-1) / np.linalg.norm(d)  # distance off that line
        return {"ball_found": ((share >= BALL_MIN_WHITE) & (off < 0.25)).any(axis=(-1, -2))}

    def to_position(self, centroid_px: np.ndarray) -> np.ndarray:
        return np.asarray(centroid_px, dtype=np.float64)


@worldsim.hookimpl
def worldsim_add_video_tasks() -> dict[str, Any]:
    return {"atari": Atari}  # the class is the factory; its settings' defaults: its signature
