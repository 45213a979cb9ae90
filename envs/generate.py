"""D4RL-layout maze2d data from the waypoint expert: one continuous stream from one reset."""

from __future__ import annotations

import numpy as np

from worldsim.errors import ConfigError, check_int

from .expert import WaypointExpert
from .maze2d import SUCCESS_RADIUS, Maze2dEnv
from .mazes import check_maze, max_episode_steps, maze_slug

NOISY_ACTION_STD = 0.5  # D4RL's "-noisy" data sets
RECORDED_ACTIONS = ("executed", "intended")


def check_record(record: str, field: str = "record") -> str:
    """``record`` if it names a recorded action (``RECORDED_ACTIONS``); else a ConfigError naming ``field``."""
    if record not in RECORDED_ACTIONS:
        raise ConfigError(f"{field}: got {record!r}; expected one of {', '.join(RECORDED_ACTIONS)}")
    return record


def generate_maze2d(
    maze: str,
    steps: int,
    noisy: bool = False,
    seed: int = 0,
    pause_prob: float = 0.0,
    progress: bool = True,
    pause_steps: tuple[int, int] = (10, 50),
    record: str = "executed",
) -> dict[str, np.ndarray]:
    """``steps`` rows of expert data on ``maze`` in the D4RL hdf5 layout (all in D4RL's (row, col) frame).

    Row t holds the observation o_t, the action a_t taken from it, ``rewards[t]`` = D4RL's sparse reward of
    o_t for the maze's fixed goal (as D4RL's relabelled files), ``terminals`` all False, ``timeouts`` True
    every ``max_episode_steps`` rows (bookkeeping only: the stream goes on without a reset), and
    ``infos/goal`` the expert's current target cell, ``infos/qpos``/``infos/qvel`` the position/velocity
    (= the observation's halves, as in D4RL). Seeded: the same arguments give the same arrays.

    ``record`` says which action row t holds: ``"executed"`` (D4RL: the noisy action the env ran) or
    ``"intended"`` (the expert's action before the noise, as DART records it: the states still come from the
    noisy rollout, so they leave the expert's path, but the actions stored there are the corrections back to
    it, not the noise); then ``infos/executed_actions`` holds the noisy ones. Without noise the two are equal.
    """
    maze = check_maze(maze)
    steps = check_int("steps", steps)
    intended = check_record(record) == "intended"
    env = Maze2dEnv(maze)
    env.reset(seed=seed)
    expert = WaypointExpert(
        maze,
        seed=np.random.default_rng([seed, 1]),
        action_noise=NOISY_ACTION_STD if noisy else 0.0,
        pause_prob=pause_prob,
        pause_steps=pause_steps,
    )
    obs = np.empty((steps, 4), dtype=np.float64)
    act = np.empty((steps, 2), dtype=np.float64)
    ran = np.empty((steps, 2), dtype=np.float64) if intended else act
    goal = np.empty((steps, 2), dtype=np.float64)
    bar = _progress(steps, maze, progress)
    state = env.state()
    chunk = 10_000
    for t in range(steps):
        obs[t] = state
        a = expert.act(*state)
        ran[t] = a
        if intended:
            act[t] = expert.intended
        goal[t] = expert.target
        state = env.advance(*a)
        if bar is not None and (t + 1) % chunk == 0:
            bar.update(chunk)
    if bar is not None:
        bar.update(steps - bar.n)
        bar.close()

    fixed_goal = env.fixed_goal
    dist = np.hypot(obs[:, 0] - fixed_goal[0], obs[:, 1] - fixed_goal[1])
    timeouts = np.zeros(steps, dtype=bool)
    timeouts[max_episode_steps(maze) - 1 :: max_episode_steps(maze)] = True
    arrays = {
        "observations": obs.astype(np.float32),
        "actions": act.astype(np.float32),
        "rewards": (dist <= SUCCESS_RADIUS).astype(np.float32),
        "terminals": np.zeros(steps, dtype=bool),
        "timeouts": timeouts,
        "infos/goal": goal.astype(np.float32),
        "infos/qpos": obs[:, :2].astype(np.float32),
        "infos/qvel": obs[:, 2:].astype(np.float32),
    }
    if intended:
        arrays["infos/executed_actions"] = ran.astype(np.float32)
    return arrays


def targets_reached(goals: np.ndarray) -> int:
    """How many targets the expert reached in a stream: the number of changes of ``infos/goal``."""
    return int(np.any(np.diff(goals, axis=0) != 0, axis=1).sum()) if len(goals) > 1 else 0


def _progress(total: int, maze: str, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=f"maze2d-{maze_slug(maze)} expert",
        unit="step",
        unit_scale=True,
        mininterval=0.5,
        smoothing=0.1,
        miniters=1,
        dynamic_ncols=True,
    )
