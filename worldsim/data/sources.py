"""Data sets by name (the ``worldsim_add_datasets`` hook): a ``dataset`` config node -> episodes.

:func:`load_dataset` builds the data set the node names from the registry and loads a split of it;
``split="eval"`` asks for held-out episodes of at least ``length`` steps, used by rollouts to compare against the
true continuation. The core's own data sets are registered here like any plugin's: ``oscillators`` (procedural),
``npz`` (your arrays) and ``video`` (:mod:`worldsim.video.data`). Domains bring theirs as plugins.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import worldsim
from worldsim.data.oscillators import make_oscillators
from worldsim.data.sequence import SequenceData
from worldsim.errors import ConfigError, DataError, PluginError
from worldsim.registry import default_registry
from worldsim.runtime import check_fits
from worldsim.video.data import VideoDataSet

#: what a data set's episodes may be (its factory's ``modality``): frames, or vectors of state
MODALITIES = ("video", "state")
#: bytes make_oscillators holds per (step, oscillator): eight float64 arrays of that size at its peak
OSCILLATOR_BYTES_PER_VALUE = 64


class Oscillators:
    """``oscillators``: damped oscillators made on the fly (:mod:`worldsim.data.oscillators`); the held-out
    episodes come from another seed."""

    def __init__(self, num_episodes, episode_len, num_oscillators, dt, omega, damping, seed):
        self.node = {"num_episodes": num_episodes, "episode_len": episode_len, "num_oscillators": num_oscillators,
                     "dt": dt, "omega": omega, "damping": damping, "seed": seed}  # fmt: skip

    def load(self, split: str = "train", length: int | None = None, count: int | None = None) -> SequenceData:
        node = self.node
        seed = int(node["seed"]) + (1_000_003 if split == "eval" else 0)
        episodes, steps = count or int(node["num_episodes"]), length or int(node["episode_len"])
        oscillators = int(node["num_oscillators"])
        check_fits(
            [f"dataset.num_episodes={episodes}", f"dataset.episode_len={steps}",
             f"dataset.num_oscillators={oscillators}"],
            episodes * steps * oscillators * OSCILLATOR_BYTES_PER_VALUE,
            "generating the oscillators",
        )  # fmt: skip
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


class NpzFile:
    """``npz``: your sequences, an .npz file with ``observations`` (N, L, ...) and optionally ``actions`` (N, L, A);
    the held-out episodes are the last ones."""

    def __init__(self, path):
        if not path or path == "???":
            raise ConfigError("dataset.path: the npz data set needs a file, e.g. dataset.path=data/my_sequences.npz")
        self.path = Path(path)

    def load(self, split: str = "train", length: int | None = None, count: int | None = None) -> SequenceData:
        path = self.path
        if not path.is_file():
            raise DataError(f"dataset.path: no such file {path}")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except Exception as exc:  # zip / format errors
            raise DataError(f"dataset.path: cannot read {path} as .npz ({type(exc).__name__}: {exc})") from None
        if "observations" not in arrays:
            found = ", ".join(arrays) or "nothing"
            raise DataError(f"dataset.path: {path} has no 'observations' array (found: {found})")
        obs = arrays["observations"]
        if obs.ndim < 3:
            raise DataError(
                f"dataset.path: 'observations' in {path} must be (episodes, steps, ...), got shape {obs.shape}"
            )
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


@worldsim.hookimpl
def worldsim_add_datasets():
    return {"oscillators": Oscillators, "npz": NpzFile, "video": VideoDataSet}


# -- by name -----------------------------------------------------------------------------------------------------


def dataset_settings(node: Mapping[str, Any], registry=None) -> dict[str, Any]:
    """A ``dataset`` node completed with its data set's defaults: ``configs/dataset/NAME.yaml`` when worldsim ships
    one (:func:`worldsim.config.dataset_node`), else the factory's keyword defaults; unknown names fail."""
    from worldsim.config import config_dir, dataset_node

    registry = default_registry() if registry is None else registry
    name = node.get("name")
    if name not in registry.datasets:
        import difflib

        names = registry.names("dataset")
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"dataset.name: unknown data set {name!r}; {hint}registered: {', '.join(names)}")
    if (config_dir() / "dataset" / f"{name}.yaml").is_file():
        return dataset_node(node)
    return {"name": name, **registry.factory_defaults("dataset", name), **node}


def dataset_modality(name: str, registry=None) -> str:
    """What the episodes of the data set ``name`` are: its factory's ``modality`` (``video`` frames, or ``state``
    vectors when it declares none; see ``worldsim_add_datasets``)."""
    registry = default_registry() if registry is None else registry
    modality = getattr(registry.get("dataset", name), "modality", "state")
    if modality not in MODALITIES:
        raise PluginError(f"dataset {name!r}: modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    return str(modality)


def build_dataset(node: Mapping[str, Any], registry=None):
    """The data set object of a ``dataset`` node (see ``worldsim_add_datasets``)."""
    registry = default_registry() if registry is None else registry
    settings = dataset_settings(node, registry)
    name = settings.pop("name")
    wants_registry = "registry" in inspect.signature(registry.get("dataset", name)).parameters
    return registry.build("dataset", name, {"registry": registry} if wants_registry else {}, settings)


def load_dataset(
    node: Mapping[str, Any], split: str = "train", length: int | None = None, count: int | None = None, registry=None
) -> SequenceData:
    """Episodes for a ``dataset`` config node (a plain dict with ``name``); ``registry``: where the data set's name
    is looked up (default: the plugins of :func:`worldsim.plugins.get_plugin_manager`)."""
    data = build_dataset(node, registry).load(split=split, length=length, count=count)
    if not isinstance(data, SequenceData):
        raise DataError(f"dataset {node.get('name')!r}: load() must return a SequenceData, got {type(data).__name__}")
    return data
