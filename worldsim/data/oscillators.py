"""Procedural damped harmonic oscillators: the toy sequence data set.

Each episode holds ``num_oscillators`` independent under-damped oscillators with random angular
frequency omega, damping ratio zeta, amplitude and phase, observed every ``dt`` as (position,
velocity) pairs. Closed form: x(t) = A exp(-zeta omega t) cos(omega_d t + phi),
omega_d = omega sqrt(1 - zeta^2), so any continuation is exact. Omega and zeta are hidden: a model
must infer them from the context.
"""

from __future__ import annotations

import numpy as np

from worldsim.errors import DataError


def make_oscillators(
    num_episodes: int,
    episode_len: int,
    num_oscillators: int = 2,
    dt: float = 0.1,
    omega: tuple[float, float] = (0.5, 2.0),
    damping: tuple[float, float] = (0.0, 0.02),
    seed: int = 0,
) -> np.ndarray:
    """Observations (num_episodes, episode_len, 2 * num_oscillators), float32: [x_1, v_1, x_2, v_2, ...]."""
    if num_episodes < 1 or episode_len < 1 or num_oscillators < 1:
        raise DataError("dataset (oscillators): num_episodes, episode_len and num_oscillators must be positive")
    if not (0 < omega[0] <= omega[1]) or not (0 <= damping[0] <= damping[1] < 1):
        raise DataError(
            f"dataset (oscillators): expected 0 < omega_min <= omega_max and 0 <= damping < 1, got omega={omega}, damping={damping}"
        )
    rng = np.random.default_rng(seed)
    shape = (num_episodes, 1, num_oscillators)
    w = rng.uniform(omega[0], omega[1], shape)
    zeta = rng.uniform(damping[0], damping[1], shape)
    amp = rng.uniform(0.5, 1.0, shape)
    phi = rng.uniform(0.0, 2 * np.pi, shape)
    t = (np.arange(episode_len) * dt).reshape(1, -1, 1)
    wd = w * np.sqrt(1 - zeta**2)
    envelope = amp * np.exp(-zeta * w * t)
    pos = envelope * np.cos(wd * t + phi)
    # d/dt of the closed form
    vel = envelope * (-zeta * w * np.cos(wd * t + phi) - wd * np.sin(wd * t + phi))
    obs = np.stack([pos, vel], axis=-1).reshape(num_episodes, episode_len, 2 * num_oscillators)
    return obs.astype(np.float32)
