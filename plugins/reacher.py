"""The ``reacher`` task: planning with gymnasium's MuJoCo Reacher-v5, a two-link arm that brings its fingertip to a
random target (``worldsim_envs.reacher``: the env with the goal in ``info``, the expert, the data generator).

A data step is (a_t, s_{t+1}): the two torques, then the arm's state (fingertip x, y, cos/sin of both joints, joint
velocities), 10 numbers; the fingertip is what a goal objective reads (``guidance=goal`` pulls it to the target). The
normalized score uses reference returns computed over 100 seeded episodes: uniformly random torques and the
inverse-kinematics expert. ``worldsim data task reacher --episodes N --out F.npz`` makes the offline data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import worldsim
from worldsim.errors import ConfigError

STEP_LAYOUT = {"action": slice(0, 2), "observation": slice(2, 10), "position": slice(2, 4)}


def _reacher():
    from worldsim_envs import reacher  # MuJoCo loads when a task is built, not when the plugin is

    return reacher


class ReacherTask:
    """Planning in ``worldsim/Reacher-v5``; see the module docstring."""

    name = "reacher"
    env_id = "worldsim/Reacher-v5"
    step_layout = STEP_LAYOUT

    def make_env(self, env_id: str | None = None):
        import gymnasium as gym

        import worldsim_envs  # noqa: F401  (registers the ids)

        if env_id not in (None, self.env_id):
            raise ConfigError(f"--env: the reacher task plans in {self.env_id}, not {env_id!r}")
        return gym.make(self.env_id)

    def observe(self, obs: np.ndarray) -> np.ndarray:
        return _reacher().observe(obs)

    def goal(self, info: dict[str, Any]) -> np.ndarray:
        return np.asarray(info["goal"], dtype=np.float64)

    def success(self, info: dict[str, Any]) -> np.ndarray:
        return np.asarray(info["success"], dtype=bool)

    def guidance_context(self) -> dict[str, Any]:
        return {}

    def reference_returns(self, env_id: str | None = None) -> tuple[float, float]:
        return _reacher().reference_returns()

    def draw(self, ax, env_id: str | None = None) -> None:
        _reacher().draw_reacher(ax)

    def plot_xy(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p)

    def make_data(self, episodes: int, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
        """Expert episodes as the npz data set reads them: ``observations`` (episodes, 50, 10) step vectors."""
        return {"observations": _reacher().generate_reacher(episodes, seed, progress)}


def build_reacher(dataset: dict[str, Any]) -> ReacherTask:
    """Factory of ``reacher``: a run trained on step vectors of 10 numbers (``dataset=npz``, e.g. the file of
    ``worldsim data task reacher``)."""
    if dataset.get("name") != "npz":
        raise ConfigError(
            f"task reacher: its data set is npz (worldsim data task reacher), got {dataset.get('name')!r}"
        )
    return ReacherTask()


@worldsim.hookimpl
def worldsim_add_tasks():
    return {"reacher": build_reacher}
