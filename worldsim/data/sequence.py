"""Episodes of observations (and actions): what every data set loader returns, and what training reads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldsim.errors import DataError


@dataclass
class SequenceData:
    """Episodes of observations ``(L_i, *obs_shape)`` and optional actions ``(L_i, A)``.

    ``positions`` ``(L_i, 2)``: optional true agent positions per step (video data, for rollout metrics);
    ``meta``: optional facts about the source (video: task, fps, resolution, settings).
    """

    observations: list[np.ndarray]
    actions: list[np.ndarray] | None = None
    positions: list[np.ndarray] | None = None
    meta: dict | None = None

    def __post_init__(self) -> None:
        if not self.observations:
            raise DataError("dataset: it holds no episodes")
        for i, obs in enumerate(self.observations):
            if obs.dtype.kind not in "iub" and not np.isfinite(obs).all():  # integer frames cannot hold NaN
                raise DataError(f"dataset: episode {i} of the observations contains NaN or inf values")
        for name, per_step in (("actions", self.actions), ("positions", self.positions)):
            if per_step is None:
                continue
            if len(per_step) != len(self.observations):
                raise DataError(
                    f"dataset: {len(self.observations)} episodes of observations but {len(per_step)} of {name}"
                )
            for i, (obs, arr) in enumerate(zip(self.observations, per_step, strict=True)):
                if arr.shape[0] != obs.shape[0]:
                    raise DataError(f"dataset: episode {i} has {obs.shape[0]} observations but {arr.shape[0]} {name}")
                if not np.isfinite(arr).all():
                    raise DataError(f"dataset: episode {i} of the {name} contains NaN or inf values")

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self.observations[0].shape[1:])

    @property
    def action_dim(self) -> int:
        return 0 if self.actions is None else int(self.actions[0].shape[-1])


def strided(data: SequenceData, stride: int) -> SequenceData:
    """Every ``stride``-th step of each episode, at every phase: ``stride`` episodes per episode, steps ``stride``
    env steps apart (jumpy sequences: a token then covers ``stride`` times the time, as the high level of
    Hierarchical Diffuser, Chen et al. 2024, plans sub-goals 15 steps apart). ``stride`` 1 returns ``data``."""
    if stride == 1:
        return data

    def split(per_step: list[np.ndarray] | None) -> list[np.ndarray] | None:
        if per_step is None:
            return None
        return [ep[phase::stride] for ep, n in zip(per_step, lengths, strict=True) for phase in range(min(stride, n))]

    lengths = [len(obs) for obs in data.observations]
    observations = split(data.observations)
    assert observations is not None, "observations are never None"
    return SequenceData(observations, split(data.actions), split(data.positions), data.meta)
