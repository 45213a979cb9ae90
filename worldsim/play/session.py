"""A video world model played by a person: one :class:`PlayWorld` per model, one :class:`PlaySession` per player.

The world holds what every player shares: the run (weights, tokenizer, sampling settings), the held-out episodes
whose first frames start a game, the video task that made them (to find the tracked object, and its true world
when the task has one) and the action of each key. A session is one player's game: a :class:`Stream` over the
model, started from a held-out episode's context frames and actions, that generates the next frame each time the
player chooses an action; beside it the task's true world, stepped by the same actions, and the distance between
the object found in the model's frame and the true one. Sessions share nothing mutable, so players do not mix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.config import to_plain
from worldsim.data.sources import dataset_modality
from worldsim.diffusion.stream import Stream
from worldsim.errors import ConfigError
from worldsim.experiment import LoadedRun, stack_frames
from worldsim.settings import RolloutSettings, SamplingSettings
from worldsim.video.io import side_by_side, write_video
from worldsim.video.rollout import load_eval_video, to_uint8, video_task_of

KEYS = ("up", "down", "left", "right", "none")
MAX_RECORDED = 3000  # frames a session keeps for its video download (about 2 minutes at 25 frames/s)
STREAM_CAPACITY = 64  # tokens a session's stream buffers before it drops those the model no longer sees


def default_action_keys(action_dim: int) -> dict[str, list[float]]:
    """Keys move along the first two action dimensions, (row, col) as in an image: up is -1 on the first."""
    zero = [0.0] * action_dim
    keys = {"none": zero}
    if action_dim >= 1:
        keys["up"], keys["down"] = _unit(action_dim, 0, -1.0), _unit(action_dim, 0, 1.0)
    if action_dim >= 2:
        keys["left"], keys["right"] = _unit(action_dim, 1, -1.0), _unit(action_dim, 1, 1.0)
    return keys


def _unit(dim: int, axis: int, sign: float) -> list[float]:
    v = [0.0] * dim
    v[axis] = sign
    return v


@dataclass
class Frame:
    """One played frame: the model's, the true world's (None without one), the tracked object's distance between
    them in the task's unit (None where the model's frame shows none, or without a world) and the time the model
    took, in ms."""

    model: np.ndarray
    world: np.ndarray | None
    error: float | None
    step: int
    ms: float


class PlayWorld:
    """What the players of one video model share; ``context`` tokens of held-out episodes start their games."""

    def __init__(self, run: LoadedRun, registry, context: int | None = None, episodes: int | None = None) -> None:
        name = str(run.cfg.dataset.name)
        if dataset_modality(name, registry) != "video":
            raise ConfigError(
                f"worldsim play: {run.checkpoint} models {name} data, not video; play needs a video world model "
                f"(a run of dataset=video, or a shipped video model: worldsim plugins lists them)"
            )
        settings = RolloutSettings.from_config(run.cfg.rollout)
        self.run, self.registry = run, registry
        self.frames_per_token = int(run.tokenizer.frames_per_token)
        tokens = int(context if context is not None else settings.context)
        if tokens < 1:
            raise ConfigError(f"--context: expected at least 1 token, got {tokens}")
        self.context = tokens * self.frames_per_token
        frames, actions, positions, meta = load_eval_video(run, self.context, int(episodes or settings.episodes), None)
        self.frames, self.actions, self.positions = frames, actions, positions
        self.task = video_task_of(meta, registry)
        self.fps = int(meta.get("fps") or 8)
        self.sampling = SamplingSettings.from_config(run.cfg.sampling)
        self.action_dim = int(run.action_dim)
        keys = getattr(self.task, "action_keys", None) or default_action_keys(self.action_dim)
        self.keys = {k: [float(a) for a in v] for k, v in keys.items()}

    @property
    def has_world(self) -> bool:
        has = self.task is not None and callable(getattr(self.task, "world", None))
        return has and self.positions is not None and self.actions is not None

    def describe(self) -> dict[str, Any]:
        """What the page needs to know: the model, its keys, frame size and rate, whether a true world is shown."""
        return {
            "model": str(self.run.checkpoint),
            "step": self.run.step,
            "task": None if self.task is None else self.run.cfg.dataset.get("task"),
            "resolution": list(self.frames.shape[2:4]),
            "fps": self.fps,
            "keys": self.keys if self.action_dim else {},
            "action_dim": self.action_dim,
            "episodes": int(self.frames.shape[0]),
            "context_frames": self.context,
            "world": self.has_world,
            "position_unit": None if self.task is None else str(self.task.position_unit),
            "tracked_within": None if self.task is None else float(self.task.tracked_within),
            "sampling": to_plain(self.run.cfg.sampling),
        }


class PlaySession:
    """One player's game on a :class:`PlayWorld`; ``seed`` seeds its noise."""

    def __init__(self, world: PlayWorld, seed: int = 0) -> None:
        self.world, self.seed = world, seed
        self.episode, self.games = -1, 0
        self.recorded: list[tuple[np.ndarray | None, np.ndarray]] = []
        self.reset()

    def reset(self) -> Frame:
        """A new game from the next held-out episode's context; returns its last context frame."""
        w, run = self.world, self.world.run
        self.episode = (self.episode + 1) % w.frames.shape[0]
        self.games += 1
        e, n = self.episode, w.context
        device = next(run.model.parameters()).device
        with torch.no_grad():
            context = run.tokenizer.encode(torch.from_numpy(w.frames[e : e + 1, :n]).to(device))
        cond = None
        if w.action_dim:
            assert w.actions is not None, "an action-conditioned model's held-out episodes have actions"
            cond = stack_frames(torch.as_tensor(np.asarray(w.actions[e, :n]), dtype=torch.float32), w.frames_per_token)
            cond = cond[None].to(device=device, dtype=context.dtype)
        seed = int(np.random.SeedSequence([self.seed, self.games]).generate_state(1)[0])
        generator = torch.Generator(device=device).manual_seed(seed)
        self.stream = Stream(run.model, w.sampling, context, cond, generator, capacity=STREAM_CAPACITY)
        self.true_world = w.task.world(w.positions[e, :n], w.actions[e, :n]) if w.has_world else None
        self.step_count = 0
        last = w.frames[e, n - 1]
        shown = last if self.true_world is not None else None
        self.recorded = [(shown, last)]
        self.start_frame = Frame(last, shown, None, 0, 0.0)
        return self.start_frame

    def action_of(self, action: Any) -> np.ndarray:
        """A key name of the world's keys, or a list of ``action_dim`` finite numbers; else a ConfigError."""
        w = self.world
        if isinstance(action, str):
            if action not in w.keys:
                raise ConfigError(f"action: unknown key {action!r}; expected one of {', '.join(w.keys)}")
            return np.asarray(w.keys[action], dtype=np.float32)
        ok = isinstance(action, list) and len(action) == w.action_dim
        ok = ok and all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in action)
        if not ok:
            raise ConfigError(
                f"action: expected a key ({', '.join(w.keys)}) or a list of {w.action_dim} finite numbers, got {action!r}"
            )
        return np.asarray(action, dtype=np.float32)

    def step(self, action: Any) -> list[Frame]:
        """The frames after ``action`` (held for every frame of one token): the model's next token, decoded, and
        the true world stepped alike."""
        w, run = self.world, self.world.run
        a = self.action_of(action) if w.action_dim else np.zeros(0, dtype=np.float32)
        f = w.frames_per_token
        start = time.perf_counter()
        cond = None
        if w.action_dim:
            cond = torch.as_tensor(np.tile(a, f), dtype=torch.float32)[None, None]
        with torch.no_grad():
            token = self.stream.step(cond)
            frames = to_uint8(run.tokenizer.decode(token))[0]
        ms = 1000 * (time.perf_counter() - start)
        out = []
        for model_frame in frames:
            world_frame, error = None, None
            if self.true_world is not None:
                world_frame, position = self.true_world.step(a)
                error = self._error(model_frame, position)
            self.step_count += 1
            out.append(Frame(model_frame, world_frame, error, self.step_count, ms / len(frames)))
            self.recorded.append((world_frame, model_frame))
        del self.recorded[:-MAX_RECORDED]
        return out

    def _error(self, frame: np.ndarray, position: np.ndarray) -> float | None:
        task = self.world.task
        found = task.find(frame[None])
        if not bool(np.asarray(found["found"])[0]):
            return None
        return float(np.linalg.norm(task.to_position(np.asarray(found["centroid_px"])[0]) - position))

    def write_video(self, path: Path) -> Path:
        """The frames played since the last reset, [true world | model] side by side, as an mp4 (atomic)."""
        models = np.stack([m for _, m in self.recorded])
        panels, labels = [models], ["model"]
        if self.true_world is not None:
            panels.insert(0, np.stack([t for t, _ in self.recorded if t is not None]))
            labels.insert(0, "true world")
        return write_video(path, side_by_side(panels, labels=labels), fps=self.world.fps)
