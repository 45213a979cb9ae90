"""Read a local Minari dataset (never downloads; minari itself is not needed).

Layout: ``<dataset>/data/main_data.hdf5`` with groups ``episode_{i}``, each holding ``observations`` (a
dataset, or a group for dict observations: PointMaze has ``observation``, ``achieved_goal``,
``desired_goal``; one more row than the actions), ``actions``, ``rewards``, ``terminations``, ``truncations``.
A dataset id like ``D4RL/pointmaze/umaze-v2`` is looked up under ``$MINARI_DATASETS_PATH`` or
``~/.minari/datasets``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

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


def read_minari(path_or_name, maze: str | None = None) -> list[dict]:
    """Episodes of a local Minari dataset, in file order: dicts with ``observations`` (array, or dict of arrays),
    ``actions``, ``rewards``, ``terminations``, ``truncations`` and ``id``.

    Minari PointMaze data is in gymnasium-robotics' ``(x, y)`` frame. With ``maze`` (umaze/medium/large) the
    PointMaze observation, the goals and the actions are converted to D4RL's ``(row, col)`` frame (see
    ``worldsim_envs.maze2d``), as everything else in worldsim; without it they are returned as stored.
    """
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
        if maze is not None:
            episode = _to_d4rl_frame(episode, maze, f"{file}: {name}")
        episodes.append(episode)
    return episodes


def _to_d4rl_frame(ep: dict, maze: str, where: str) -> dict:
    from worldsim.environments import envs

    check_maze, maze_map = envs().check_maze, envs().maze_map
    vec_from_xy, xy_to_rowcol = envs("maze2d").vec_from_xy, envs("maze2d").xy_to_rowcol

    shape = maze_map(check_maze(maze, "maze")).shape
    obs = ep["observations"]
    if not isinstance(obs, dict) or "observation" not in obs or obs["observation"].shape[-1] != 4:
        raise DataError(
            f"{where}: expected PointMaze observations (a group with a 4-wide 'observation') to convert to maze {maze!r}"
        )
    out = dict(obs)
    o = obs["observation"]
    out["observation"] = np.concatenate([xy_to_rowcol(o[:, :2], shape), vec_from_xy(o[:, 2:])], axis=1).astype(o.dtype)
    for key in ("achieved_goal", "desired_goal"):
        if key in obs:
            out[key] = xy_to_rowcol(obs[key], shape).astype(obs[key].dtype)
    return {**ep, "observations": out, "actions": vec_from_xy(ep["actions"]).astype(ep["actions"].dtype)}
