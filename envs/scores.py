"""D4RL's normalized score for maze2d: ``100 * (return - min) / (max - min)``."""

from __future__ import annotations

import numpy as np

from worldsim.errors import ConfigError

from .mazes import MAZES, MULTI_GOAL_MAZES

#: maze2d-v1 reference returns (min = random policy, max = expert), from D4RL
REF_SCORES = {"umaze": (23.85, 161.86), "medium": (13.13, 277.39), "large": (6.7, 273.99)}

# every accepted name -> short maze name (the multi-goal ids use the fixed-goal constants)
_ALIASES = {
    **{n: n for n in REF_SCORES},
    **{v: k for k, v in MAZES.items()},
    **{v: k for k, v in MULTI_GOAL_MAZES.items()},
}


def normalized_score(env_id: str, returns):
    """Normalized score of episode ``returns`` (a number or an array) on a maze2d env id or short name."""
    if env_id not in _ALIASES:
        raise ConfigError(f"normalized_score: unknown env {env_id!r}; expected one of {', '.join(sorted(_ALIASES))}")
    lo, hi = REF_SCORES[_ALIASES[env_id]]
    score = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(score) if score.ndim == 0 else score
