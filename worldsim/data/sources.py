"""Data sets by name: each turns a ``dataset`` config node into episodes of observations (and actions).

``split="eval"`` asks for held-out episodes of at least ``length`` steps, used by rollouts to compare
against the true continuation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.oscillators import make_oscillators
from worldsim.data.sequence import SequenceData
from worldsim.errors import ConfigError, DataError
from worldsim.runtime import check_fits

#: bytes make_oscillators holds per (step, oscillator): eight float64 arrays of that size at its peak
OSCILLATOR_BYTES_PER_VALUE = 64


def _oscillators(node: dict[str, Any], split: str, length: int | None, count: int | None) -> SequenceData:
    seed = int(node["seed"]) + (1_000_003 if split == "eval" else 0)
    episodes, steps = count or int(node["num_episodes"]), length or int(node["episode_len"])
    oscillators = int(node["num_oscillators"])
    check_fits(
        [f"dataset.num_episodes={episodes}", f"dataset.episode_len={steps}", f"dataset.num_oscillators={oscillators}"],
        episodes * steps * oscillators * OSCILLATOR_BYTES_PER_VALUE,
        "generating the oscillators",
    )
    obs = make_oscillators(
        num_episodes=episodes,
        episode_len=steps,
        num_oscillators=oscillators,
        dt=float(node["dt"]),
        omega=tuple(node["omega"]),
        damping=tuple(node["damping"]),
        seed=seed,
    )
    return SequenceData(list(obs))


def _npz(node: dict[str, Any], split: str, length: int | None, count: int | None) -> SequenceData:
    path = node.get("path")
    if not path or path == "???":
        raise ConfigError("dataset.path: the npz data set needs a file, e.g. dataset.path=data/my_sequences.npz")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset.path: no such file {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # zip / format errors
        raise DataError(f"dataset.path: cannot read {path} as .npz ({type(exc).__name__}: {exc})") from None
    if "observations" not in arrays:
        raise DataError(f"dataset.path: {path} has no 'observations' array (found: {', '.join(arrays) or 'nothing'})")
    obs = arrays["observations"]
    if obs.ndim < 3:
        raise DataError(f"dataset.path: 'observations' in {path} must be (episodes, steps, ...), got shape {obs.shape}")
    act = arrays.get("actions")
    if act is not None and (act.ndim != 3 or act.shape[:2] != obs.shape[:2]):
        raise DataError(
            f"dataset.path: 'actions' in {path} must be (episodes, steps, action_dim) matching observations {obs.shape[:2]}, got {act.shape}"
        )
    data = SequenceData(list(obs.astype(np.float32)), None if act is None else list(act.astype(np.float32)))
    if split == "eval":
        if length is not None and obs.shape[1] < length:
            raise DataError(f"dataset.path: rollouts need episodes of {length} steps but {path} has {obs.shape[1]}")
        n = count or len(data.observations)
        data = SequenceData(
            [o[:length] for o in data.observations[-n:]],
            None if data.actions is None else [a[:length] for a in data.actions[-n:]],
        )
    return data


def write_npz(path: str | Path, arrays: dict[str, Any]) -> Path:
    """Write ``arrays`` as the .npz file the ``npz`` data set reads, atomically: a temp file in the same folder, then
    ``os.replace``, so a reader never sees half a file."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _maze2d(node: dict[str, Any], split: str, length: int | None, count: int | None) -> SequenceData:
    from worldsim.data.maze2d import load_maze2d  # imports gymnasium / MuJoCo only when used

    return load_maze2d(node, split, length, count)


def _video(node: dict[str, Any], split: str, length: int | None, count: int | None) -> SequenceData:
    from worldsim.video.data import load_video  # imports h5py / the generators only when used

    return load_video(node, split, length, count)


DATASETS: dict[str, Callable[..., SequenceData]] = {
    "oscillators": _oscillators,
    "npz": _npz,
    "maze2d": _maze2d,
    "video": _video,
}


def load_dataset(
    node: dict[str, Any], split: str = "train", length: int | None = None, count: int | None = None
) -> SequenceData:
    """Episodes for a ``dataset`` config node (a plain dict with ``name``)."""
    from worldsim.config import dataset_node

    name = node.get("name")
    if name not in DATASETS:
        raise ConfigError(f"dataset.name: unknown data set {name!r}; expected one of {', '.join(sorted(DATASETS))}")
    return DATASETS[name](dataset_node(node), split, length, count)
