"""Read a local Minari dataset (never downloads; minari itself is not needed).

Layout: ``<dataset>/data/main_data.hdf5`` with groups ``episode_{i}``, each holding ``observations`` (a
dataset, or a group for dict observations, e.g. ``observation``, ``achieved_goal``, ``desired_goal``; one more
row than the actions), ``actions``, ``rewards``, ``terminations``, ``truncations``.
A dataset id like ``D4RL/NAME/VARIANT-v2`` is looked up under ``$MINARI_DATASETS_PATH`` or
``~/.minari/datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path

from worldsim.errors import DataError

STEP_KEYS = ("actions", "rewards", "terminations", "truncations")


def minari_root() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")).expanduser()


def _locate(path_or_name) -> Path:
    given = Path(path_or_name).expanduser()
    for candidate in (
        given,
        given / "data" / "main_data.hdf5",
        minari_root() / str(path_or_name) / "data" / "main_data.hdf5",
    ):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"minari dataset {str(path_or_name)!r}: not found (looked for {given}/data/main_data.hdf5 and "
        f"{minari_root() / str(path_or_name)}/data/main_data.hdf5; put it in ~/.minari/datasets or give its folder)"
    )


def _read(item):
    import h5py

    if isinstance(item, h5py.Group):
        return {k: _read(v) for k, v in item.items()}
    return item[()]


def _rows(obs) -> int:
    return len(next(iter(obs.values()))) if isinstance(obs, dict) else len(obs)


def read_minari(path_or_name) -> list[dict]:
    """Episodes of a local Minari dataset, in file order: dicts with ``observations`` (array, or dict of arrays),
    ``actions``, ``rewards``, ``terminations``, ``truncations`` and ``id``, as stored (an environment's package
    converts them to its own frame where it has one)."""
    import h5py

    file = _locate(path_or_name)
    try:
        with h5py.File(file, "r") as f:
            names = sorted((k for k in f if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
            raw = [(name, {k: _read(v) for k, v in f[name].items()}) for name in names]
    except (OSError, ValueError) as exc:
        raise DataError(f"{file}: cannot read it as a Minari hdf5 file ({str(exc).splitlines()[0]})") from None
    if not raw:
        raise DataError(f"{file}: no episode_* groups")
    episodes = []
    for name, ep in raw:
        for key in ("observations", *STEP_KEYS):
            if key not in ep:
                raise DataError(f"{file}: {name} has no {key!r} (found: {', '.join(sorted(ep))})")
        steps = len(ep["actions"])
        if _rows(ep["observations"]) != steps + 1:
            raise DataError(
                f"{file}: {name}/observations has {_rows(ep['observations'])} rows; expected {steps + 1} (actions + 1)"
            )
        for key in STEP_KEYS[1:]:
            if len(ep[key]) != steps:
                raise DataError(f"{file}: {name}/{key} has {len(ep[key])} rows but actions has {steps}")
        episode = {key: ep[key] for key in ("observations", *STEP_KEYS)}
        episode["id"] = int(name.split("_")[1])
        episodes.append(episode)
    return episodes
