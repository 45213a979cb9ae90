"""The D4RL hdf5 layout: flat datasets ``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``
(one row per step, same length) plus optional ``infos/*`` (e.g. ``infos/goal``, ``infos/qpos``, ``infos/qvel``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from worldsim.errors import DataError

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def write_d4rl_hdf5(path, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object] | None = None) -> Path:
    """Write ``arrays`` (keys like ``observations`` or ``infos/goal``) to ``path`` atomically.

    The file is written next to ``path`` under a temporary name and renamed, so an interrupted write never
    leaves a file that looks complete. ``attrs`` become file attributes (e.g. how the data was generated).
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in arrays.items():
                f.create_dataset(key, data=np.asarray(value), compression="gzip", compression_opts=1, shuffle=True)
            for key, attr in (attrs or {}).items():
                f.attrs[key] = attr
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _datasets(group, prefix: str = "") -> dict:
    import h5py

    out = {}
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            out[prefix + key] = item
        elif isinstance(item, h5py.Group):
            out.update(_datasets(item, f"{prefix}{key}/"))
    return out


def read_d4rl_hdf5(path) -> dict[str, np.ndarray]:
    """All datasets of a D4RL-layout file as ``{key: array}`` (nested groups as ``infos/goal``), validated.


    Every problem is a one-line DataError naming the file and the key: a missing file, not hdf5, a missing
    required key, rows that do not match ``observations``, observations/actions not 2-D, NaN or inf.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            arrays = {key: ds[()] for key, ds in _datasets(f).items()}
    except OSError as exc:
        raise DataError(f"{path}: cannot read it as an hdf5 file ({str(exc).splitlines()[0]})") from None
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        found = ", ".join(sorted(arrays)) or "nothing"
        raise DataError(f"{path}: missing key {missing[0]!r} (found: {found})")
    for key in ("observations", "actions"):
        if arrays[key].ndim != 2:
            raise DataError(f"{path}: {key!r} must be 2-D (steps, dim), got shape {arrays[key].shape}")
    rows = len(arrays["observations"])
    for key, value in arrays.items():
        if key not in REQUIRED_KEYS and not key.startswith("infos/"):
            continue  # e.g. D4RL's metadata/* scalars
        if value.ndim == 0 or len(value) != rows:
            got = "a scalar" if value.ndim == 0 else f"{len(value)} rows"
            raise DataError(f"{path}: {key!r} has {got} but 'observations' has {rows}")
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            what = "NaN" if np.isnan(value).any() else "inf"
            raise DataError(f"{path}: {key!r} contains {what}")
    arrays["terminals"] = arrays["terminals"].astype(bool)
    arrays["timeouts"] = arrays["timeouts"].astype(bool)
    return arrays


def _plain(value):
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def read_d4rl_attrs(path) -> dict:
    """The file attributes of an hdf5 file as plain Python values (empty if it has none)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: _plain(v) for k, v in f.attrs.items()}
    except OSError as exc:
        raise DataError(f"{path}: cannot read it as an hdf5 file ({str(exc).splitlines()[0]})") from None
