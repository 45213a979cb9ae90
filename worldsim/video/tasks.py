"""Video tasks by name (the ``worldsim_add_video_tasks`` hook): the domains of the ``video`` data set.

A video task makes a domain's action-conditioned video and knows what to measure in its frames (see the hook's
docstring). :func:`build_video_task` builds one from a data set's settings, or from the settings a generated file
records; the task's own settings are the factory's parameters (``resolution`` is derived).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

import numpy as np

from worldsim.errors import ConfigError

#: the settings every generated video records, whatever its task (the task adds its own)
CORE_KEYS = ("task", "resolution", "episodes", "length", "seed")


def task_keys(factory) -> list[str]:
    """The settings a video task's factory takes (its named parameters but ``resolution``)."""
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "resolution"]


def check_task_name(name: Any, registry, field: str = "dataset.task") -> str:
    """``name`` when a video task of that name is registered; else a ConfigError naming ``field``."""
    names = registry.names("video_task")
    if isinstance(name, str) and name in names:
        return name
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(f"{field}: unknown video task {name!r}; {hint}registered: {', '.join(names) or 'none'}")


def build_video_task(settings: Mapping[str, Any], resolution: int, registry=None):
    """The video task ``settings["task"]`` at ``resolution``, given the keys of ``settings`` its factory takes
    (keys it lacks take the factory's defaults)."""
    from worldsim.registry import default_registry

    registry = default_registry() if registry is None else registry
    name = check_task_name(settings.get("task"), registry)
    kwargs = {k: settings[k] for k in task_keys(registry.get("video_task", name)) if k in settings}
    return registry.build("video_task", name, {"resolution": int(resolution)}, kwargs)


def no_dynamics_baselines(context: np.ndarray, truth: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Guesses of ``truth`` ``(B, N, ...)`` (frames or positions) that know no dynamics, from ``context``
    ``(B, C, ...)``: ``frozen`` repeats the last context entry (for frames: copy the last frame); ``random`` is an
    entry drawn uniformly (seeded) from the context's and the continuation's, the same draw for frames and positions
    of one rollout (so a random frame shows its object at the random position)."""
    pool = np.concatenate([context.reshape(-1, *context.shape[2:]), truth.reshape(-1, *truth.shape[2:])])
    draw = np.random.default_rng([seed, 7]).integers(len(pool), size=truth.shape[:2])
    return {"frozen": np.broadcast_to(context[:, -1:], truth.shape), "random": pool[draw]}


def position_baselines(context_pos: np.ndarray, true_pos: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """:func:`no_dynamics_baselines` of the true positions ``(B, N, 2)``, as float64: reference points for the
    model's error and tracked share."""
    return {k: np.asarray(v, dtype=np.float64) for k, v in no_dynamics_baselines(context_pos, true_pos, seed).items()}
