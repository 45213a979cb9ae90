"""Reacher: gymnasium's MuJoCo ``Reacher-v5`` (a two-link arm in the plane, torque control) as a planning env, with a
classical expert that makes its offline data.

``worldsim/Reacher-v5`` is Reacher-v5 (same model, dynamics, reward ``-distance - |a|^2`` and 50-step limit) with
``info["goal"]`` (the target's (x, y)) and ``info["success"]`` (the fingertip within ``SUCCESS_RADIUS`` of it).

A data step is ``(a_t, s_{t+1})`` with ``s = observe(obs)`` = (fingertip x, y, cos q1, sin q1, cos q2, sin q2, q1',
q2') (``STEP_FEATURES``): the arm's state, with the fingertip, which a goal objective reads, first. The target is not
in the step; the planner's guidance brings it in, as the goal of maze2d.

The expert: inverse kinematics of the target (links 0.1 and 0.11; the elbow solution nearer the current one) and a
PD law on the joint angles, ``a = clip(kp (q* - q) - kd q', -1, 1)``; with kp 0.3, kd 0.05 it reaches every target
(100 seeded episodes: return -3.98, the random policy's -42.5). The data varies the gains and adds action noise, so
that states off the expert's path and the actions that correct them are in the data.
"""

from __future__ import annotations

import functools
import math

import gymnasium as gym
import numpy as np

from worldsim.errors import ConfigError, check_int

REACHER_ID = "worldsim/Reacher-v5"
EPISODE_STEPS = 50  # Reacher-v5's time limit
SUCCESS_RADIUS = 0.02  # the fingertip within 2 cm of the target (the arm reaches 0.21)
LINKS = (0.1, 0.11)  # shoulder -> elbow, elbow -> fingertip
EXPERT_GAINS = (0.3, 0.05)  # kp, kd of the reference expert
#: ranges the data generator draws per episode: kp, kd, action noise std
DATA_KP, DATA_KD, DATA_NOISE = (0.2, 0.6), (0.03, 0.08), (0.0, 0.3)
STEP_FEATURES = ("tip_x", "tip_y", "cos_q1", "sin_q1", "cos_q2", "sin_q2", "dq1", "dq2")
REFERENCE_EPISODES = 100


class ReacherGoal(gym.Wrapper):
    """Adds the target (``goal``) and ``success`` to Reacher-v5's ``info``."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, **_goal_info(obs)}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, **_goal_info(obs)}


def _goal_info(obs: np.ndarray) -> dict:
    return {"goal": np.array(obs[4:6], dtype=np.float64), "success": bool(np.hypot(obs[8], obs[9]) <= SUCCESS_RADIUS)}


def make_reacher(**kwargs) -> gym.Env:
    """Reacher-v5 with the goal in ``info`` (the entry point of ``worldsim/Reacher-v5``)."""
    from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

    return ReacherGoal(ReacherEnv(**kwargs))


def observe(obs) -> np.ndarray:
    """Reacher-v5 observations ``(..., 10)`` -> step features ``(..., 8)`` (``STEP_FEATURES``)."""
    o = np.asarray(obs, dtype=np.float64)
    tip = o[..., 8:10] + o[..., 4:6]  # (fingertip - target) + target
    return np.concatenate([tip, o[..., 0:1], o[..., 2:3], o[..., 1:2], o[..., 3:4], o[..., 6:8]], axis=-1)


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def inverse_kinematics(x: float, y: float, q2_now: float) -> tuple[float, float]:
    """Joint angles putting the fingertip at (x, y) (the nearest reachable point if it is out of reach), the elbow
    solution nearer ``q2_now``."""
    l1, l2 = LINKS
    c2 = min(1.0, max(-1.0, (x * x + y * y - l1 * l1 - l2 * l2) / (2 * l1 * l2)))
    best = None
    for sign in (1.0, -1.0):
        q2 = sign * math.acos(c2)
        q1 = math.atan2(y, x) - math.atan2(l2 * math.sin(q2), l1 + l2 * math.cos(q2))
        if best is None or abs(_wrap(q2 - q2_now)) < abs(_wrap(best[1] - q2_now)):
            best = (q1, q2)
    assert best is not None, "two candidate solutions"
    return best


class ReacherExpert:
    """``act(obs) -> a``: inverse kinematics of the target and a PD law on the joints (see the module docstring)."""

    def __init__(self, kp: float = EXPERT_GAINS[0], kd: float = EXPERT_GAINS[1], noise: float = 0.0, rng=None):
        self.kp, self.kd, self.noise = float(kp), float(kd), float(noise)
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def act(self, obs) -> np.ndarray:
        q1, q2 = math.atan2(obs[2], obs[0]), math.atan2(obs[3], obs[1])
        g1, g2 = inverse_kinematics(float(obs[4]), float(obs[5]), q2)
        a = np.array([self.kp * _wrap(g1 - q1) - self.kd * obs[6], self.kp * _wrap(g2 - q2) - self.kd * obs[7]])
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, 2)
        return np.clip(a, -1.0, 1.0)


def generate_reacher(episodes: int, seed: int = 0, progress: bool = True) -> np.ndarray:
    """``episodes`` expert episodes as step vectors ``(episodes, 50, 10)`` float32: (a_t, observe(o_{t+1})). Each
    episode draws its gains and action noise from ``DATA_KP``, ``DATA_KD``, ``DATA_NOISE``. Seeded."""
    episodes = check_int("--episodes", episodes)
    rng = np.random.default_rng([seed, 7])
    env = make_reacher()
    out = np.empty((episodes, EPISODE_STEPS, 2 + len(STEP_FEATURES)), dtype=np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, desc="reacher expert", unit="episode", mininterval=0.5)
    for e in range(episodes):
        obs, _ = env.reset(seed=int(rng.integers(1 << 31)))
        expert = ReacherExpert(rng.uniform(*DATA_KP), rng.uniform(*DATA_KD), rng.uniform(*DATA_NOISE), rng)
        for t in range(EPISODE_STEPS):
            a = expert.act(obs)
            obs, *_ = env.step(a)
            out[e, t, :2], out[e, t, 2:] = a, observe(obs)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    env.close()
    return out


POLICIES = ("random", "expert", "zero")


def run_policy(policy: str, episodes: int = REFERENCE_EPISODES) -> dict[str, np.ndarray]:
    """``returns``, ``reached`` (ever within ``SUCCESS_RADIUS``) and ``at_end`` of ``episodes`` seeded episodes (seeds
    0, 1, ..., the episodes ``worldsim plan --seed 0`` runs) of a reference policy: uniformly random torques, the
    expert with ``EXPERT_GAINS`` and no noise, or no torque at all."""
    if policy not in POLICIES:
        raise ConfigError(f"policy: got {policy!r}; expected one of {', '.join(POLICIES)}")
    episodes = check_int("episodes", episodes)
    env = gym.make(REACHER_ID)
    returns, reached, at_end = np.zeros(episodes), np.zeros(episodes, dtype=bool), np.zeros(episodes, dtype=bool)
    for e in range(episodes):
        obs, info = env.reset(seed=e)
        rng, expert = np.random.default_rng([e, 2]), ReacherExpert()
        for _ in range(EPISODE_STEPS):
            if policy == "random":
                a = rng.uniform(-1.0, 1.0, 2)
            else:
                a = expert.act(obs) if policy == "expert" else np.zeros(2)
            obs, reward, _, _, info = env.step(a)
            returns[e] += float(reward)
            reached[e] |= info["success"]
        at_end[e] = info["success"]
    env.close()
    return {"returns": returns, "reached": reached, "at_end": at_end}


@functools.lru_cache(maxsize=1)
def reference_returns(episodes: int = REFERENCE_EPISODES) -> tuple[float, float]:
    """(random, expert) mean returns over ``episodes`` seeded episodes (:func:`run_policy`)."""
    return float(run_policy("random", episodes)["returns"].mean()), float(
        run_policy("expert", episodes)["returns"].mean()
    )


def baselines(episodes: int = REFERENCE_EPISODES) -> str:
    """A table of the reference policies over the planner's episodes: mean return +- standard error, reached, at end."""
    lines = [f"{'policy':<8} {'return':>15} {'reached':>8} {'at end':>7}"]
    for policy in POLICIES:
        r = run_policy(policy, episodes)
        err = r["returns"].std(ddof=1) / math.sqrt(episodes) if episodes > 1 else 0.0
        lines.append(f"{policy:<8} {r['returns'].mean():>8.2f} +- {err:<4.2f} {100 * r['reached'].mean():>7.0f}% "
                     f"{100 * r['at_end'].mean():>6.0f}%")  # fmt: skip
    return "\n".join(lines)


def draw_reacher(ax, goal=None) -> None:
    """The arm's reach (a circle of radius 0.21 round the shoulder) on a matplotlib axis, x to the right, y up."""
    from matplotlib.patches import Circle

    reach = sum(LINKS)
    ax.add_patch(Circle((0.0, 0.0), reach, facecolor="0.93", edgecolor="0.6"))
    ax.plot([0.0], [0.0], "s", color="0.35", ms=6)
    ax.set_xlim(-0.25, 0.25)
    ax.set_ylim(-0.25, 0.25)
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
