"""The conformance kit's data checks (:mod:`worldsim.testing` exports them): ``check_dataset`` for a data set of the
``worldsim_add_datasets`` hook, ``check_video_task`` for a video task of ``worldsim_add_video_tasks``.

Each raises ``AssertionError`` naming the property that broke::

    from worldsim.testing import check_dataset, check_video_task
    def test_my_data(tmp_path):
        check_dataset(MyData(path=tmp_path / "mine.h5", episodes=8))
        check_video_task(MyVideo(resolution=16, speed=2))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

__all__ = ["check_dataset", "check_video_task"]


def _fail(prop: str, detail: str) -> NoReturn:
    raise AssertionError(f"{prop}: {detail}")


def _check_episodes(data: Any, where: str) -> tuple[tuple[int, ...], int]:
    """(obs_shape, action_dim) of a SequenceData whose episodes agree with each other."""
    from worldsim.data import SequenceData

    if not isinstance(data, SequenceData):
        _fail("load", f"{where}: expected a worldsim.data.SequenceData, got {type(data).__name__}")
    sizes = {tuple(o.shape[1:]) for o in data.observations}
    if len(sizes) != 1:
        _fail("load", f"{where}: episodes of different observation sizes {sorted(sizes)}")
    if data.actions is not None and len({a.shape[-1] for a in data.actions}) != 1:
        _fail("load", f"{where}: episodes of different action sizes")
    return data.obs_shape, data.action_dim


def check_dataset(dataset: Any, *, length: int = 4, count: int = 2) -> None:
    """Check a data set object (the ``worldsim_add_datasets`` contract).

    Properties: with ``generate``, it has a ``path`` and writes that file, returning a line of text (build the data
    set with a path in a temporary folder: the check calls it); ``load()`` gives a
    :class:`worldsim.data.SequenceData` whose episodes share one observation shape and action size, the same on a
    second call; ``load("eval", length=length, count=count)`` gives at most ``count`` episodes of exactly ``length``
    steps of the same sizes.
    """
    if not callable(getattr(dataset, "load", None)):
        _fail("load", "the data set has no load(split, length, count) method")
    generate = getattr(dataset, "generate", None)
    if generate is not None:
        path = getattr(dataset, "path", None)
        if path is None:
            _fail("generate", "a data set that generates must say where: its path attribute is missing")
        made = generate(progress=False)
        if not isinstance(made, str) or not Path(path).exists():
            _fail("generate", f"expected a line of text and the file {path}, got {made!r}")
    train = dataset.load()
    shape, action_dim = _check_episodes(train, "load()")
    again = dataset.load()
    same = len(again.observations) == len(train.observations) and all(
        np.array_equal(a, b) for a, b in zip(again.observations, train.observations, strict=True)
    )
    if not same:
        _fail("determinism", "two loads of the training split differ")
    held_out = dataset.load("eval", length=length, count=count)
    if _check_episodes(held_out, f'load("eval", length={length})') != (shape, action_dim):
        _fail("eval", f"the held-out episodes' sizes differ from the training ones {shape}, {action_dim}")
    if len(held_out.observations) > count or any(len(o) != length for o in held_out.observations):
        lengths = [len(o) for o in held_out.observations]
        _fail("eval", f"expected at most {count} episodes of {length} steps, got lengths {lengths}")


def check_video_task(task: Any, *, episodes: int = 3, length: int = 6, seed: int = 0) -> None:
    """Check a video task (the ``worldsim_add_video_tasks`` contract) on its own generated frames.

    Properties: ``settings`` is a JSON object, ``fps`` a positive int, ``position_unit`` a string and
    ``tracked_within`` a positive number; ``generate`` gives uint8 frames ``(E, L, R, R, 3)``, finite actions
    ``(E, L, A)`` that are zero at the first frame and finite positions ``(E, L, 2)``, the same for the same seed,
    the same episode when made alone (``only``) and the same first frames when made longer; ``find`` gives
    ``found`` ``(E, L)`` bools and ``centroid_px`` ``(E, L, 2)``, and on the task's own frames finds the object in
    every frame within ``tracked_within`` of its true position (the detector's own check); ``extra_metrics``, if
    given, are ``(E, L)`` arrays; ``world``, if given, steps a uint8 frame of the data's shape with the object found
    where its position says; ``action_keys``, if given, map keys to actions of the data's size.
    """
    settings = getattr(task, "settings", None)
    try:
        json.dumps(settings)
    except TypeError as exc:
        _fail("settings", f"expected plain JSON values, got {settings!r} ({exc})")
    if not isinstance(settings, dict):
        _fail("settings", f"expected a dict, got {type(settings).__name__}")
    fps = getattr(task, "fps", None)
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or fps < 1:
        _fail("fps", f"expected a positive int, got {fps!r}")
    if not isinstance(getattr(task, "position_unit", None), str):
        _fail("position_unit", f"expected a string, got {getattr(task, 'position_unit', None)!r}")
    within = getattr(task, "tracked_within", None)
    if isinstance(within, bool) or not isinstance(within, (int, float)) or not within > 0:
        _fail("tracked_within", f"expected a positive number, got {within!r}")
    made = task.generate(episodes, length, seed, only=None, progress=False)
    frames, actions, positions = (np.asarray(made.get(k)) for k in ("frames", "actions", "positions"))
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[:2] != (episodes, length):
        _fail("generate", f"frames: expected uint8 ({episodes}, {length}, R, R, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[-1] != 3 or frames.shape[2] != frames.shape[3]:
        _fail("generate", f"frames: expected square RGB frames, got {frames.shape[2:]}")
    if actions.ndim != 3 or actions.shape[:2] != (episodes, length) or not np.isfinite(actions).all():
        _fail("generate", f"actions: expected finite ({episodes}, {length}, A), got {actions.shape}")
    if np.any(actions[:, 0] != 0):
        _fail("generate", "actions[:, 0] must be zero: no action led to the first frame")
    if positions.shape != (episodes, length, 2) or not np.isfinite(positions).all():
        _fail("generate", f"positions: expected finite ({episodes}, {length}, 2), got {positions.shape}")
    again = task.generate(episodes, length, seed, only=None, progress=False)
    if not np.array_equal(again["frames"], frames) or not np.array_equal(again["actions"], actions):
        _fail("determinism", "two generations with the same seed differ")
    alone = task.generate(episodes, length, seed, only=range(episodes - 1, episodes), progress=False)
    if not np.array_equal(alone["frames"][0], frames[-1]) or not np.array_equal(alone["actions"][0], actions[-1]):
        _fail("only", f"episode {episodes - 1} made alone differs from the same episode of the whole set")
    longer = task.generate(episodes, length + 2, seed, only=None, progress=False)
    if not np.array_equal(np.asarray(longer["frames"])[:, :length], frames):
        _fail("length", "a longer generation does not continue the same episodes")
    found = task.find(frames)
    hit, centroid = np.asarray(found["found"]), np.asarray(found["centroid_px"])
    if hit.shape != (episodes, length) or hit.dtype != bool or centroid.shape != (episodes, length, 2):
        _fail("find", f"expected found ({episodes}, {length}) bools and centroid_px (..., 2), got {hit.shape}")
    if not hit.all():
        _fail("find", f"the object is not found in {int((~hit).sum())} of its own {hit.size} frames")
    error = np.linalg.norm(np.asarray(task.to_position(centroid), dtype=np.float64) - positions, axis=-1)
    if not (error < within).all():
        _fail("to_position", f"found {error.max():.3g} {task.position_unit} from the true position (> {within})")
    extra = getattr(task, "extra_metrics", None)
    for name, values in (extra(frames) if callable(extra) else {}).items():
        if np.asarray(values).shape != (episodes, length):
            _fail("extra_metrics", f"{name!r}: expected shape ({episodes}, {length}), got {np.asarray(values).shape}")
    _check_play_hooks(task, frames, actions, positions, float(within))


def _check_play_hooks(task: Any, frames: np.ndarray, actions: np.ndarray, positions: np.ndarray, within: float) -> None:
    """What ``worldsim play`` may use: ``action_keys`` map keys to actions of the data's size; the true world,
    started from the first half of episode 0 and driven by its own actions, gives frames of the data's shape with
    the object found within ``tracked_within`` of where the world says it is."""
    keys = getattr(task, "action_keys", None)
    if keys is not None and (not isinstance(keys, dict) or any(len(v) != actions.shape[2] for v in keys.values())):
        _fail("action_keys", f"expected {{key: a list of {actions.shape[2]} numbers}}, got {keys!r}")
    world_of = getattr(task, "world", None)
    if not callable(world_of):
        return
    half = max(1, frames.shape[1] // 2)
    world = world_of(positions[0, :half], actions[0, :half])
    for t in range(half, frames.shape[1]):
        frame, position = world.step(actions[0, t])
        frame, position = np.asarray(frame), np.asarray(position, dtype=np.float64)
        if frame.dtype != np.uint8 or frame.shape != frames.shape[2:] or position.shape != (2,):
            _fail("world", f"step: expected a uint8 frame {frames.shape[2:]} and a position (2,), got "
                           f"{frame.dtype} {frame.shape} and {position.shape}")  # fmt: skip
        found = task.find(frame[None])
        at = np.asarray(task.to_position(np.asarray(found["centroid_px"])[0]), dtype=np.float64)
        if not bool(np.asarray(found["found"])[0]) or not np.linalg.norm(at - position) < within:
            _fail("world", f"step {t}: the object is not found where the world's position {position} says")
