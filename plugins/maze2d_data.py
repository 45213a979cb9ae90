"""The ``maze2d`` data set: D4RL-layout waypoint-expert data, as per-step vectors (a_t, o_{t+1}).

A step vector has 6 numbers (``STEP_LAYOUT``, which the ``maze2d`` task plans with): the action a_t (2), then the
position (2) and the velocity (2) of the observation it led to, o_{t+1}; "token = (action, next observation)" as in
Diffusion Forcing's maze planning. All in D4RL's ``(row, col)`` frame (see ``worldsim_envs.maze2d``). The stream is
split into episodes only where it is really discontinuous (``terminals``, or a position jump > 0.5 between rows),
never at ``timeouts``. ``split="eval"`` is the last 10% of the stream, ``"train"`` the first 90%.

A missing file is generated first (``worldsim data maze2d`` does the same by hand) and written with the settings it
was made with; a file with different recorded settings is refused rather than silently reused. Files made elsewhere
(no recorded settings, observations at least 4 wide) are read as they are. The settings' defaults live in
configs/dataset/maze2d.yaml. Uses only worldsim's public API.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

import worldsim
from worldsim.data import SequenceData, check_fits, read_d4rl_attrs, read_d4rl_hdf5, write_d4rl_hdf5
from worldsim.errors import ConfigError, DataError, check_int

#: where each part of a maze2d step vector lives (the one home of the layout: the task plans with it)
STEP_LAYOUT = {"action": slice(0, 2), "observation": slice(2, 6), "position": slice(2, 4), "velocity": slice(4, 6)}
JUMP = 0.5  # a position jump larger than this between rows marks a discontinuity
EVAL_FRACTION = 0.1
GENERATOR = "worldsim waypoint expert v1"
#: bytes the generator holds per step: observations, actions, goals, qpos/qvel (float64), rewards, flags
MAZE2D_BYTES_PER_STEP = 176  # (with the executed actions kept when the intended ones are recorded)
#: what a file of this generator written before a setting existed holds for it
SETTINGS_BEFORE_THEY_EXISTED = {"record": "executed"}


def _envs():
    import worldsim_envs  # gymnasium and MuJoCo load when the data set is built, not when the plugin is

    return worldsim_envs


def maze2d_settings(node: dict[str, Any]) -> dict[str, Any]:
    """The checked generation settings of a complete ``dataset`` node (maze, steps, noisy, record, pause_prob,
    pause_steps, seed); errors name ``dataset.KEY``.

    ``maze`` is a D4RL maze name or a text map (``worldsim_envs.mazes``), kept in its canonical form. ``steps``
    None means D4RL's size for the maze (1M / 2M / 4M; 1M for a text map).
    """
    from worldsim_envs.generate import check_record

    envs = _envs()
    maze = envs.check_maze(node["maze"], "dataset.maze")
    steps = node["steps"]
    pause_prob = node["pause_prob"]
    if isinstance(pause_prob, bool) or not isinstance(pause_prob, (int, float)) or not 0 <= pause_prob <= 1:
        raise ConfigError(f"dataset.pause_prob: got {pause_prob!r}; expected a probability in [0, 1]")
    pause_steps = node["pause_steps"]
    if (
        not isinstance(pause_steps, (list, tuple))
        or len(pause_steps) != 2
        or any(isinstance(n, bool) or not isinstance(n, int) for n in pause_steps)
        or not 0 <= pause_steps[0] <= pause_steps[1]
    ):
        raise ConfigError(f"dataset.pause_steps: got {pause_steps!r}; expected [lo, hi] whole steps, 0 <= lo <= hi")
    noisy = node["noisy"]
    if not isinstance(noisy, bool):
        raise ConfigError(f"dataset.noisy: got {noisy!r}; expected true or false")
    record = check_record(node["record"], "dataset.record")
    return {
        "maze": maze,
        "steps": envs.dataset_steps(maze) if steps is None else check_int("dataset.steps", steps),
        "noisy": noisy,
        "record": record,
        "pause_prob": float(pause_prob),
        "pause_steps": [int(pause_steps[0]), int(pause_steps[1])],
        "seed": check_int("dataset.seed", node["seed"], minimum=0),
    }


def generate_maze2d_file(
    path,
    maze: str,
    steps: int,
    *,
    noisy: bool,
    record: str,
    seed: int,
    pause_prob: float,
    pause_steps: tuple[int, int] | list[int],
    progress: bool = True,
) -> dict[str, Any]:
    """Generate expert data and write it to ``path`` (atomically); returns a summary (path, steps, seconds, ...).
    The settings have no defaults here: their home is ``configs/dataset/maze2d.yaml``, read by ``maze2d_settings``."""
    from worldsim_envs.generate import generate_maze2d, targets_reached

    check_fits([f"dataset.steps={steps}"], steps * MAZE2D_BYTES_PER_STEP, "generating the expert data")
    start = time.perf_counter()
    lo, hi = (int(n) for n in pause_steps)
    arrays = generate_maze2d(
        maze,
        steps,
        noisy=noisy,
        seed=seed,
        pause_prob=pause_prob,
        pause_steps=(lo, hi),
        progress=progress,
        record=record,
    )
    settings = {
        "maze": maze,
        "steps": int(steps),
        "noisy": bool(noisy),
        "record": str(record),
        "pause_prob": float(pause_prob),
        "pause_steps": [lo, hi],
        "seed": int(seed),
    }
    write_d4rl_hdf5(path, arrays, attrs={"generator": GENERATOR, **settings})
    seconds = time.perf_counter() - start  # generating and writing
    return {"path": str(path), **settings, "seconds": seconds, "targets_reached": targets_reached(arrays["infos/goal"])}


def _check_recorded(path: Path, settings: dict[str, Any]) -> None:
    attrs = read_d4rl_attrs(path)
    if attrs.get("generator") != GENERATOR:
        return  # made elsewhere: nothing to compare
    for key, want in settings.items():
        have = attrs.get(key, SETTINGS_BEFORE_THEY_EXISTED.get(key))
        if isinstance(have, np.ndarray):
            have = have.tolist()
        if have is not None and have != want:
            raise DataError(
                f"dataset.path: {path} was generated with {key}={have!r} but dataset.{key}={want!r}; "
                f"delete the file or set dataset.path to another file"
            )


def step_vectors(arrays: dict[str, np.ndarray], where: str = "dataset") -> list[np.ndarray]:
    """Per-step vectors (a_t, o_{t+1}) ``(L, 6)`` float32 of a D4RL-layout stream, split at discontinuities."""
    obs, act = arrays["observations"], arrays["actions"]
    if obs.shape[1] < 4:
        raise DataError(
            f"{where}: 'observations' must have at least 4 columns (row, col, v_row, v_col), got {obs.shape[1]}"
        )
    if act.shape[1] != 2:
        raise DataError(f"{where}: 'actions' must have 2 columns (a_row, a_col), got {act.shape[1]}")
    if len(obs) < 2:
        return []
    vectors = np.concatenate([act[:-1], obs[1:, :4]], axis=1).astype(np.float32)
    jump = np.linalg.norm(obs[1:, :2] - obs[:-1, :2], axis=1) > JUMP
    broken = np.flatnonzero(jump | arrays["terminals"][:-1].astype(bool))  # transition t -> t+1 is not real
    pieces, begin = [], 0
    for t in list(broken) + [len(vectors)]:
        if t > begin:
            pieces.append(vectors[begin:t])
        begin = t + 1
    return pieces


def maze2d_path(node: dict[str, Any]) -> Path:
    """The file of a ``dataset`` node: ``dataset.path``, else ``data/maze2d-<maze>.hdf5`` (a text map's name is
    ``custom-<hash>``)."""
    raw_path = node.get("path")
    if raw_path and raw_path != "???":
        return Path(raw_path)
    envs = _envs()
    return Path(f"data/maze2d-{envs.maze_slug(envs.check_maze(node['maze'], 'dataset.maze'))}.hdf5")


CLI_HELP = {
    "maze": "umaze, medium, large, or a text map in D4RL's notation: '#' wall, 'O' open, 'G' goal, rows split by "
    "'\\' (e.g. '#####\\#GOO#\\###O#\\#OOO#\\#####')",
    "steps": "rows to generate (default: D4RL's 1M / 2M / 4M; 1M a map)",
    "noisy": "add N(0, 0.5^2) noise to the expert's actions (D4RL's noisy data)",
    "record": "the action stored: the one the env ran (executed, D4RL) or the expert's before its noise "
    "(intended, DART-style)",
    "pause_prob": "chance to hold still at a reached target",
    "pause_steps": "how long a hold lasts: uniform in [LO, HI] steps",
    "seed": "generation seed",
    "path": "output file (default: data/maze2d-<maze>.hdf5, as training reads it)",
}


class Maze2dData:
    """The ``maze2d`` data set of one maze; see the module docstring."""

    def __init__(self, maze, path, steps, noisy, record, pause_prob, pause_steps, seed):
        node = {"maze": maze, "path": path, "steps": steps, "noisy": noisy, "record": record,
                "pause_prob": pause_prob, "pause_steps": pause_steps, "seed": seed}  # fmt: skip
        self.settings = maze2d_settings(node)
        self.path = maze2d_path(node)
        self.name = f"maze2d-{_envs().maze_slug(self.settings['maze'])}"

    @staticmethod
    def cli_options(registry) -> tuple[dict[str, str], dict[str, str]]:
        """Help texts of ``worldsim data maze2d``'s options; no other option names."""
        return CLI_HELP, {}

    def generate(self, progress: bool = True) -> str:
        """Write the expert data to ``path``; returns what was made."""
        s = self.settings
        made = generate_maze2d_file(self.path, **s, progress=progress)
        lo, hi = s["pause_steps"]
        pauses = f"pause_prob {s['pause_prob']}, holds of {lo}-{hi} steps, " if s["pause_prob"] else ""
        rate = made["targets_reached"] / s["steps"] * 1000
        return (
            f"{s['steps']:,} steps of {self.name} expert data ({'noisy, ' if s['noisy'] else ''}"
            f"{s['record']} actions recorded, {pauses}seed {s['seed']}) in {made['seconds']:.1f} s "
            f"({s['steps'] / made['seconds']:,.0f} steps/s); {made['targets_reached']:,} targets reached "
            f"({rate:.1f} per 1k steps)"
        )

    def load(self, split: str = "train", length: int | None = None, count: int | None = None) -> SequenceData:
        settings, path = self.settings, self.path
        if not path.exists():
            print(
                f"dataset: {path} not found; generating {settings['steps']:,} steps of {self.name} "
                f"expert data (seed {settings['seed']}{', noisy' if settings['noisy'] else ''}, "
                f"{settings['record']} actions recorded)",
                flush=True,
            )
            generate_maze2d_file(path, **settings)
        _check_recorded(path, settings)
        arrays = read_d4rl_hdf5(path)
        cut = int(round(len(arrays["observations"]) * (1 - EVAL_FRACTION)))
        part = slice(cut, None) if split == "eval" else slice(0, cut)
        episodes = step_vectors({k: arrays[k][part] for k in ("observations", "actions", "terminals")}, str(path))
        if split == "eval" and length is not None:
            episodes = [ep[s : s + length] for ep in episodes for s in range(0, len(ep) - length + 1, length)]
            if not episodes:
                raise DataError(
                    f"dataset.path: rollouts need {length} continuous steps but the eval part of {path} has none "
                    "that long"
                )
            episodes = episodes[:count] if count else episodes
        if not episodes:
            raise DataError(f"dataset.path: the {split} part of {path} holds no continuous steps")
        return SequenceData(episodes)


@worldsim.hookimpl
def worldsim_add_datasets() -> dict[str, Any]:
    return {"maze2d": Maze2dData}  # the class is the factory; its settings' defaults: configs/dataset/maze2d.yaml
