"""Action-conditioned video on disk, and the ``video`` data set (frames as uint8, actions, true positions).

File layout (``worldsim-video-v1``), one HDF5 file; fill it from your own recordings with
:func:`write_video_file` (or h5py directly):

- ``frames``    uint8 ``(E, L, H, W, 3)``: E episodes of L RGB frames each (all episodes the same length),
  chunked one episode per chunk.
- ``actions``   float32 ``(E, L, A)``: ``actions[e, t]`` is the action applied between frame t-1 and frame t,
  so frame t is the result of ``actions[e, t]``; ``actions[e, 0]`` led to the first frame (zeros if unknown).
- ``positions`` float32 ``(E, L, 2)``, optional: the true position of the tracked object in each frame, in the unit
  of its video task.
- root attributes: ``format`` = ``"worldsim-video-v1"``, ``task`` (a registered video task, or any name for user
  data), ``fps`` (int) and, for generated files, ``settings``: a JSON string of the generation settings (task,
  resolution, episodes, length, seed and the video task's own).

The ``video`` data set (``dataset=video``) reads such a file; a missing file is generated first by the video task
``dataset.task`` (the ``worldsim_add_video_tasks`` hook, :mod:`worldsim.video.tasks`) from the node's settings, and
a generated file with other recorded settings is refused. ``split="train"`` is every episode but the last
``eval_episodes``; ``split="eval"`` those last ones, cut to the rollout length.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from worldsim.data.sequence import SequenceData
from worldsim.errors import ConfigError, DataError, check_int
from worldsim.runtime import check_fits
from worldsim.video.tasks import CORE_KEYS, build_video_task, check_task_name

FORMAT = "worldsim-video-v1"


@dataclass
class VideoData:
    """The content of a video file: ``frames`` uint8 (E, L, H, W, 3), ``actions`` float32 (E, L, A), ``positions``."""

    frames: np.ndarray
    actions: np.ndarray
    positions: np.ndarray | None = None
    task: str = "video"
    fps: int = 1
    settings: dict[str, Any] = field(default_factory=dict)


def _check_arrays(where: str, frames, actions, positions, values: bool = True) -> None:
    """Dtypes and sizes of numpy arrays or (unread) h5py datasets; with ``values``, also that they are finite."""
    if getattr(frames, "dtype", None) != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        found = f"{getattr(frames, 'dtype', type(frames).__name__)} {getattr(frames, 'shape', '')}".strip()
        raise DataError(f"{where}: 'frames' must be uint8 (episodes, length, H, W, 3), found {found}")
    e, n = frames.shape[:2]
    if actions.ndim != 3 or actions.shape[:2] != (e, n):
        raise DataError(
            f"{where}: 'actions' must be (episodes, length, action_dim) = ({e}, {n}, A) like 'frames', "
            f"found shape {actions.shape}"
        )
    if not np.issubdtype(actions.dtype, np.number):
        raise DataError(f"{where}: 'actions' must be numbers, found {actions.dtype}")
    if values and not np.isfinite(actions).all():
        raise DataError(f"{where}: 'actions' contains NaN or inf values")
    if positions is not None:
        if positions.ndim != 3 or positions.shape != (e, n, 2):
            raise DataError(
                f"{where}: 'positions' must be (episodes, length, 2) = ({e}, {n}, 2), found shape {positions.shape}"
            )
        if not np.issubdtype(positions.dtype, np.number):
            raise DataError(f"{where}: 'positions' must be numbers, found {positions.dtype}")
        if values and not np.isfinite(positions).all():
            raise DataError(f"{where}: 'positions' contains NaN or inf values")


def write_video_file(
    path,
    frames: np.ndarray,
    actions: np.ndarray,
    positions: np.ndarray | None = None,
    task: str = "video",
    fps: int = 1,
    settings: dict[str, Any] | None = None,
) -> Path:
    """Write a ``worldsim-video-v1`` file atomically (temp file in the same folder, then ``os.replace``)."""
    import h5py

    path = Path(path)
    actions = np.asarray(actions)
    positions = None if positions is None else np.asarray(positions)
    _check_arrays(str(path), frames, actions, positions)
    fps = check_int("fps", fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("frames", data=frames, chunks=(1,) + frames.shape[1:])
            f.create_dataset("actions", data=actions.astype(np.float32))
            if positions is not None:
                f.create_dataset("positions", data=positions.astype(np.float32))
            f.attrs["format"] = FORMAT
            f.attrs["task"] = str(task)
            f.attrs["fps"] = fps
            if settings is not None:
                f.attrs["settings"] = json.dumps(settings, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _open(path: Path):
    import h5py

    if not path.is_file():
        raise DataError(f"dataset.path: no such file {path}")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"dataset.path: cannot read {path} as HDF5 ({str(exc).splitlines()[0]})") from None


def _settings_of(f, path: Path) -> dict[str, Any]:
    raw = f.attrs.get("settings")
    if raw is None:
        return {}
    try:
        settings = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        raise DataError(f"dataset.path: the 'settings' attribute of {path} is not JSON") from None
    if not isinstance(settings, dict):
        raise DataError(f"dataset.path: the 'settings' attribute of {path} is not a JSON object")
    return settings


def _datasets(f, path: Path) -> tuple:
    """The checked (frames, actions, positions or None) datasets of an open file, not read yet."""
    import h5py

    for key in ("frames", "actions"):
        if key not in f or not isinstance(f[key], h5py.Dataset):
            raise DataError(f"dataset.path: {path} has no '{key}' dataset (found: {', '.join(f.keys()) or 'nothing'})")
    found = f["frames"], f["actions"], f["positions"] if "positions" in f else None
    _check_arrays(f"dataset.path: {path}", *found, values=False)
    return found


def read_video_header(path) -> tuple[dict[str, Any], tuple[int, ...]]:
    """(the recorded generation settings, {} for files made elsewhere; the frames' shape (E, L, H, W, 3)),
    without reading the frames."""
    path = Path(path)
    with _open(path) as f:
        return _settings_of(f, path), tuple(_datasets(f, path)[0].shape)


def read_video_file(path, episodes: slice = slice(None), length: int | None = None) -> VideoData:
    """Read and check a ``worldsim-video-v1`` file, only ``episodes`` and their first ``length`` frames (default:
    all); bad content raises a one-line :class:`DataError`."""
    path = Path(path)
    with _open(path) as f:
        part = (episodes, slice(0, length))
        frames_ds, actions_ds, positions_ds = _datasets(f, path)  # frames and actions are always there
        frames, actions = frames_ds[part], actions_ds[part]
        positions = None if positions_ds is None else positions_ds[part]
        task = f.attrs.get("task", "video")
        fps = f.attrs.get("fps", 1)
        settings = _settings_of(f, path)
    _check_arrays(f"dataset.path: {path}", frames, actions, positions)
    return VideoData(
        frames,
        actions.astype(np.float32, copy=False),
        None if positions is None else positions.astype(np.float32, copy=False),
        task.decode() if isinstance(task, bytes) else str(task),
        int(fps),
        settings,
    )


# -- generation ---------------------------------------------------------------------------------------------


def video_settings(node: dict[str, Any], registry=None) -> dict[str, Any]:
    """The checked generation settings of a ``dataset`` node: ``task``, ``resolution``, ``episodes``, ``length``,
    ``seed`` and the video task's own (its ``settings``), which a generated file records.

    configs/dataset/video.yaml fills what ``node`` lacks (:func:`worldsim.config.dataset_node`); errors name the
    field as ``dataset.KEY``.
    """
    from worldsim.config import dataset_node
    from worldsim.registry import default_registry

    registry = default_registry() if registry is None else registry
    node = dataset_node({**node, "name": "video"})
    task = check_task_name(node["task"], registry)
    settings: dict[str, Any] = {
        "task": task,
        "resolution": check_int("dataset.resolution", node["resolution"], minimum=16),
        "episodes": check_int("dataset.episodes", node["episodes"]),
        "length": check_int("dataset.length", node["length"], minimum=2),
        "seed": check_int("dataset.seed", node["seed"], minimum=0),
    }
    own = build_video_task(node, settings["resolution"], registry).settings
    settings.update({k: v for k, v in own.items() if k not in CORE_KEYS})
    res = settings["resolution"]
    check_fits(
        [f"dataset.{k}={settings[k]}" for k in ("episodes", "length", "resolution")],
        settings["episodes"] * settings["length"] * res * res * 3,
        "the frames alone (uint8)",
    )
    return settings


def generate_video_arrays(
    settings: dict[str, Any], only: range | None = None, progress: bool = True, registry=None
) -> tuple[dict[str, np.ndarray], int]:
    """(frames / actions / positions arrays, fps) of checked ``settings`` (:func:`video_settings`, or those a file
    records); ``only``: just those episodes, the same frames they have in the whole set."""
    s = settings
    task = build_video_task(s, s["resolution"], registry)
    arrays = task.generate(s["episodes"], s["length"], s["seed"], only=only, progress=progress)
    return arrays, int(task.fps)


def generate_video_file(path, settings: dict[str, Any], progress: bool = True, registry=None) -> dict[str, Any]:
    """Generate a video file from checked ``settings`` (:func:`video_settings`); returns path, shape, seconds."""
    start = time.perf_counter()
    s = dict(settings)
    arrays, fps = generate_video_arrays(s, progress=progress, registry=registry)
    write_video_file(
        path, arrays["frames"], arrays["actions"], arrays["positions"], task=s["task"], fps=fps, settings=s
    )
    seconds = time.perf_counter() - start
    frames = s["episodes"] * s["length"]
    return {"path": str(path), **s, "fps": fps, "seconds": seconds, "frames": frames, "frames_per_s": frames / seconds}


def default_video_path(settings: dict[str, Any]) -> Path:
    return Path(f"data/video-{settings['task']}-{settings['resolution']}.h5")


def _check_recorded(path: Path, recorded: dict[str, Any], wanted: dict[str, Any]) -> None:
    if not recorded:
        return  # a user file: read as it is
    differ = [k for k, v in wanted.items() if k in recorded and recorded[k] != v]
    if recorded.get("task") != wanted["task"]:
        differ = ["task"]
    if differ:
        diffs = ", ".join(f"{k}={recorded.get(k)!r} (dataset.{k}={wanted.get(k)!r})" for k in differ)
        raise DataError(
            f"dataset.path: {path} was generated with other settings: {diffs}; "
            f"delete the file or set dataset.path to another file"
        )


def _longer_episodes(
    path: Path, recorded: dict[str, Any], episodes: slice, n_frames: int, length: int, registry=None
) -> VideoData:
    """Episodes of a generated file continued to ``length`` frames: generated again from the settings the file
    records (each episode has its own seeds, so its first frames are the stored ones); a user's file can't be."""
    if not recorded:
        raise DataError(f"dataset.path: rollouts need episodes of {length} frames but {path} has {n_frames}")
    settings = {**recorded, "length": length}
    print(
        f"dataset: the episodes of {path} have {n_frames} frames; generating them again to {length} frames "
        f"(same seeds)",
        flush=True,
    )
    arrays, fps = generate_video_arrays(
        settings, only=range(episodes.start, episodes.stop), progress=False, registry=registry
    )
    return VideoData(arrays["frames"], arrays["actions"], arrays["positions"], settings["task"], fps, settings)


def read_episodes(path, episodes: slice, length: int | None, registry=None) -> VideoData:
    """``read_video_file`` of ``episodes``, continued to ``length`` frames when the file is a generated one (with
    recorded settings) whose episodes are shorter; a user's recording is read as it is, however long."""
    path = Path(path)
    recorded, shape = read_video_header(path)
    if length is not None and shape[1] < length and recorded:
        start, stop, _ = episodes.indices(shape[0])
        return _longer_episodes(path, recorded, slice(start, stop), shape[1], length, registry)
    return read_video_file(path, episodes, length)


def _held_out_range(node: dict[str, Any], n_ep: int, count: int | None) -> range:
    """The held-out episodes (the last ``dataset.eval_episodes`` of ``n_ep``), at most ``count`` of them."""
    eval_n = check_int("dataset.eval_episodes", node["eval_episodes"])
    if eval_n >= n_ep:
        raise DataError(f"dataset.eval_episodes: {n_ep} episodes; eval_episodes={eval_n} leaves none to train on")
    n = min(count, eval_n) if count else eval_n
    return range(n_ep - eval_n, n_ep - eval_n + n)


def _held_out_only(
    path: Path, settings: dict[str, Any], node: dict[str, Any], length: int | None, count: int | None, registry=None
) -> VideoData:
    """The held-out episodes of a data set that is not on disk, generated in memory (as a rollout of a shipped
    model needs them: the same frames the file would hold, without writing the training episodes)."""
    held_out = _held_out_range(node, int(settings["episodes"]), count)
    settings = {**settings, "length": max(int(settings["length"]), length or 0)}
    print(
        f"dataset: {path} not found; generating its {len(held_out)} held-out {settings['task']} episodes "
        f"({settings['length']} frames, seed {settings['seed']}) for the rollout",
        flush=True,
    )
    arrays, fps = generate_video_arrays(settings, only=held_out, progress=False, registry=registry)
    frames = slice(0, length)
    return VideoData(
        arrays["frames"][:, frames], arrays["actions"][:, frames], arrays["positions"][:, frames], settings["task"],
        fps, settings,
    )  # fmt: skip


def _read_split(
    path: Path,
    settings: dict[str, Any] | None,
    node: dict[str, Any],
    split: str,
    length: int | None,
    count: int | None,
    registry=None,
) -> VideoData:
    """A split of a video file: the training episodes, or the held-out ones (continued to ``length`` frames when
    the file is generated and its episodes are shorter)."""
    recorded, shape = read_video_header(path)
    if settings is not None:
        _check_recorded(path, recorded, settings)
    n_ep, n_frames = shape[:2]
    try:
        held_out = _held_out_range(node, n_ep, count)
    except DataError as exc:
        raise DataError(f"{exc} in {path}") from None
    if split != "eval":
        return read_video_file(path, slice(0, held_out.start))
    episodes = slice(held_out.start, held_out.stop)
    if length is not None and n_frames < length:
        return _longer_episodes(path, recorded, episodes, n_frames, length, registry)
    return read_video_file(path, episodes, length)


CLI_HELP = {
    "task": "the video task that makes the frames (worldsim plugins lists them)",
    "resolution": "frame height = width, at least 16",
    "episodes": "episodes to generate (the last eval_episodes are held out)",
    "length": "frames per episode",
    "seed": "generation seed",
    "path": "the file to write, e.g. data/video-NAME-32.h5",
}


class VideoDataSet:
    """The ``video`` data set: per-episode uint8 frames ``(L, H, W, 3)``, actions ``(L, A)``, positions ``(L, 2)``;
    ``meta`` holds the file's task, fps, resolution and recorded settings. Its settings: configs/dataset/video.yaml
    and the video task's own keys."""

    modality = "video"  # worldsim rollout reports its models as video world models

    def __init__(self, path, task, eval_episodes, registry=None, **settings):
        from worldsim.registry import default_registry

        self.registry = default_registry() if registry is None else registry
        self.node = {"path": path, "task": task, "eval_episodes": eval_episodes, **settings}
        has_path = bool(path) and path != "???"  # a config value: a path, or missing / None / "???"
        if not has_path and not task:
            raise ConfigError(
                "dataset.path: the video data set needs a file (dataset.path=...) or generation settings "
                "(dataset.task=NAME, a registered video task)"
            )
        given = Path(path) if has_path else None
        #: the generation settings: read whenever the file may be generated (and to compare with a generated one)
        self.settings: dict[str, Any] | None = None
        if given is None or not given.exists() or task:
            self.settings = video_settings(self.node, self.registry)
        self.path = given if given is not None else default_video_path(cast(dict[str, Any], self.settings))

    @staticmethod
    def cli_options(registry) -> tuple[dict[str, str], dict[str, str]]:
        """Help texts and other option names of ``worldsim data video``: its own and its video tasks'
        (their ``cli_help`` and ``cli_aliases``)."""
        helps, aliases = dict(CLI_HELP), dict[str, str]()
        for name in registry.names("video_task"):
            factory = registry.get("video_task", name)
            helps.update(getattr(factory, "cli_help", {}))
            aliases.update(getattr(factory, "cli_aliases", {}))
        return helps, aliases

    def generate(self, progress: bool = True) -> str:
        """Write the file of the settings to ``path``; returns what was made."""
        if self.settings is None:
            raise ConfigError("dataset.task: generating a video file needs a video task")
        s = generate_video_file(self.path, self.settings, progress, self.registry)
        r = s["resolution"]
        return (
            f"{s['episodes']} {s['task']} episodes x {s['length']} frames x {r}x{r} "
            f"in {s['seconds']:.1f} s ({s['frames_per_s']:,.0f} frames/s)"
        )

    def load(self, split: str = "train", length: int | None = None, count: int | None = None) -> SequenceData:
        path, settings, node, registry = self.path, self.settings, self.node, self.registry
        if path.exists():
            data = _read_split(path, settings, node, split, length, count, registry)
        else:
            assert settings is not None, "settings are read whenever the file does not exist"
            if split == "eval":  # rollouts need only the held-out episodes: no file is written
                data = _held_out_only(path, settings, node, length, count, registry)
            else:
                print(
                    f"dataset: {path} not found; generating {settings['episodes']} {settings['task']} episodes of "
                    f"{settings['length']} frames at {settings['resolution']}x{settings['resolution']} "
                    f"(seed {settings['seed']})",
                    flush=True,
                )
                generate_video_file(path, settings, registry=registry)
                data = _read_split(path, settings, node, split, length, count, registry)
        meta = {"task": data.task, "fps": data.fps, "resolution": int(data.frames.shape[2]), "settings": data.settings}
        positions = None if data.positions is None else list(data.positions)
        return SequenceData(list(data.frames), list(data.actions), positions=positions, meta=meta)
