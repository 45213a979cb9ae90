"""Scheduling matrices: which noise index every token of a chunk has at every sampling row.

A matrix M of shape (rows, horizon) holds integer indices 0..steps (steps = pure noise, 0 = clean;
index j means noise level k = j / steps). A sampler walks the rows top to bottom, moving each token
from M[m, t] to M[m + 1, t]. Diffusion Forcing (Chen et al. 2024, Sec. 3.3 / Alg. 2) uses the
"pyramid" matrix: later tokens stay noisier for longer, so near tokens are sharpened before far ones.
"""

from __future__ import annotations

import numbers

import numpy as np

from worldsim.errors import ConfigError, check_int

SCHEDULING_KINDS = ("full_sequence", "autoregressive", "pyramid", "trapezoid", "keyframes")

# floor(t * u) is taken with this slack so that e.g. t * u = 2.9999999999999996 counts as 3.
_FLOOR_SLACK = 1e-9


def _staircase(offsets: np.ndarray, steps: int) -> np.ndarray:
    """M[m, t] = clip(steps + offsets[t] - m, 0, steps) for m = 0 .. steps + max(offsets) (DF Alg. 2's
    pyramid with integer delays ``offsets``); consecutive identical rows are dropped."""
    rows = steps + int(offsets.max()) + 1
    m = np.arange(rows, dtype=np.int64)[:, None]
    matrix = np.clip(steps + offsets[None, :] - m, 0, steps)
    keep = np.ones(rows, dtype=bool)
    keep[1:] = np.any(matrix[1:] != matrix[:-1], axis=1)
    return matrix[keep]


def keyframe_mask(horizon: int, stride: int) -> np.ndarray:
    """(horizon,) bool: the keyframes of a chunk, tokens stride - 1, 2 stride - 1, ... and always the last."""
    t = np.arange(horizon)
    return ((t + 1) % stride == 0) | (t == horizon - 1)


def scheduling_matrix(
    kind: str, horizon: int, steps: int, uncertainty_scale: float = 1.0, keyframe_stride: int = 4
) -> np.ndarray:
    """The (rows, horizon) int64 matrix of noise indices for ``kind``.

    - ``full_sequence``: all tokens share one level, M[m, t] = steps - m (ordinary video diffusion).
    - ``pyramid``: token t lags floor(t * u) rows behind token 0, M[m, t] = clip(steps + floor(t u) - m,
      0, steps) with u = ``uncertainty_scale`` (u = 0 is full_sequence).
    - ``autoregressive``: pyramid with u = steps, i.e. one token is fully denoised before the next starts.
    - ``trapezoid``: pyramid from both ends (delay floor(min(t, horizon - 1 - t) u)): both ends of the
      chunk are denoised first and the middle last, as for planning between a start and a goal.
    - ``keyframes``: keyframe-then-interpolate (the hierarchical mode of LVDM, He et al. 2022, and of
      Video Diffusion Models' frame interpolation): every ``keyframe_stride``-th token (and the last,
      :func:`keyframe_mask`) is denoised first while the tokens between stay at pure noise (the sparse
      "storyline"), then the tokens between are denoised with the keyframes clean on both sides. With
      per-token noise levels one Diffusion Forcing model does both stages; it needs a backbone that is
      not causal, for a token to see the keyframe after it.

    The first row is all ``steps``, the last all 0, columns never increase and consecutive rows differ
    (repeated rows, which appear when u > steps, are dropped).
    """
    if kind not in SCHEDULING_KINDS:
        raise ConfigError(
            f"sampling.schedule: unknown scheduling matrix {kind!r}; expected one of {list(SCHEDULING_KINDS)}"
        )
    horizon = check_int("sampling.horizon", horizon, 1)
    steps = check_int("sampling.steps", steps, 1)
    if isinstance(uncertainty_scale, bool) or not isinstance(uncertainty_scale, numbers.Real):
        raise ConfigError(f"sampling.uncertainty_scale: expected a number >= 0, got {uncertainty_scale!r}")
    u = float(uncertainty_scale)
    if not np.isfinite(u) or u < 0:
        raise ConfigError(f"sampling.uncertainty_scale: expected a finite number >= 0, got {uncertainty_scale!r}")

    stride = check_int("sampling.keyframe_stride", keyframe_stride, 1)
    t = np.arange(horizon, dtype=np.int64)
    if kind == "keyframes":
        delays = np.where(keyframe_mask(horizon, stride), 0, steps).astype(np.int64)
    elif kind == "full_sequence":
        delays = np.zeros(horizon, dtype=np.int64)
    elif kind == "autoregressive":
        delays = t * steps
    else:
        position = t if kind == "pyramid" else np.minimum(t, horizon - 1 - t)
        delays = np.floor(position * u + _FLOOR_SLACK).astype(np.int64)
    return _staircase(delays, steps)


def start_at(matrix: np.ndarray, index: int) -> np.ndarray:
    """The rows of ``matrix`` that a walk starting with every token at noise index ``index`` still takes:
    entries clipped to ``index``, consecutive identical rows dropped (so the first row is all ``index``).
    This is the scheduling half of SDEdit (Meng et al. 2022): a sample started from a noised estimate at
    level index / steps, with the same step spacing as a walk from pure noise."""
    index = check_int("sampling.start index", index, 0)
    clipped = np.minimum(matrix, index)
    keep = np.ones(len(clipped), dtype=bool)
    keep[1:] = np.any(clipped[1:] != clipped[:-1], axis=1)
    return clipped[keep]
