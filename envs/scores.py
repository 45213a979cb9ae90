"""D4RL's normalized score for maze2d: ``100 * (return - min) / (max - min)``.

min and max are the returns of a random policy and of an expert. For D4RL's three mazes they are D4RL's
maze2d-v1 constants; for a custom text map they are computed here, as D4RL made its own: the mean return over
``REFERENCE_EPISODES`` episodes (seeds 0, 1, ...) of the fixed-goal env of uniformly random actions, and of the
waypoint expert driving to the goal cell and holding there.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from worldsim.errors import ConfigError

from .mazes import check_maze, goal_cell, max_episode_steps, maze_of_env

#: maze2d-v1 reference returns (min = random policy, max = expert), from D4RL
REF_SCORES = {"umaze": (23.85, 161.86), "medium": (13.13, 277.39), "large": (6.7, 273.99)}
REFERENCE_EPISODES = 100
#: the expert holds at the goal for the rest of the episode: longer than any time limit
_HOLD = 10**9


def _maze_of(env_id: str) -> str:
    """The maze of an env id, a short name or a text map."""
    found = maze_of_env(env_id)
    if found is not None:
        return found[0]
    try:
        return check_maze(env_id)
    except ConfigError:
        raise ConfigError(
            f"normalized_score: unknown env {env_id!r}; expected a worldsim maze2d id, a maze name or a text map"
        ) from None


def reference_returns(maze: str) -> tuple[float, float]:
    """(random, expert) mean returns of a maze: D4RL's constants, or computed for a text map."""
    maze = check_maze(maze)
    return REF_SCORES[maze] if maze in REF_SCORES else compute_reference_returns(maze)


@functools.lru_cache(maxsize=16)
def compute_reference_returns(maze: str, episodes: int = REFERENCE_EPISODES) -> tuple[float, float]:
    """(random, expert) mean returns over ``episodes`` seeded episodes of the maze's fixed-goal env, computed (for
    any maze, D4RL's too: its own constants came from its own env and expert)."""
    maze = check_maze(maze)
    from .expert import WaypointExpert
    from .maze2d import SUCCESS_RADIUS, Maze2dEnv

    env = Maze2dEnv(maze)
    goal, limit = goal_cell(maze), max_episode_steps(maze)
    means = []
    for policy in ("random", "expert"):
        total = 0.0
        for seed in range(episodes):
            env.reset(seed=seed)
            rng = np.random.default_rng([seed, 2])
            expert = WaypointExpert(maze, seed=rng, pause_prob=1.0, pause_steps=(_HOLD, _HOLD))
            noise = rng.uniform(-1.0, 1.0, size=(limit, 2)).tolist()
            state = env.state()
            if policy == "expert":
                expert.set_target(state[0], state[1], goal)
            for t in range(limit):
                a = noise[t] if policy == "random" else expert.act(*state)
                state = env.advance(*a)
                total += math.hypot(state[0] - goal[0], state[1] - goal[1]) <= SUCCESS_RADIUS
        means.append(total / episodes)
    env.close()
    return means[0], means[1]


def normalized_score(env_id: str, returns):
    """Normalized score of episode ``returns`` (a number or an array) on a maze2d env id, short name or text map."""
    lo, hi = reference_returns(_maze_of(env_id))
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(score) if score.ndim == 0 else score
