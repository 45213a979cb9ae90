"""Scheduling matrices: invariants every sampler relies on, and the plain DF formulas."""

import math

import numpy as np
import pytest

from worldsim.diffusion.scheduling import SCHEDULING_KINDS, scheduling_matrix
from worldsim.errors import ConfigError

CASES = [(h, s, u) for h in (1, 2, 5, 8) for s in (1, 3, 10) for u in (0.0, 0.5, 1.0, 2.5, 20.0)]


def _reference(kind, horizon, steps, u):
    """DF Alg. 2 pyramid written entry by entry; other kinds via their definitions in terms of it."""
    if kind == "full_sequence":
        return [[steps - m] * horizon for m in range(steps + 1)]
    if kind == "keyframes":  # stride 4: tokens 3, 7, ... and the last walk first, the others after them
        key = [(t + 1) % 4 == 0 or t == horizon - 1 for t in range(horizon)]
        first = [[steps - m if k else steps for k in key] for m in range(steps + 1)]
        then = [[0 if k else steps - m for k in key] for m in range(1, steps + 1)]
        full = first + (then if not all(key) else [])
        return [r for i, r in enumerate(full) if i == 0 or r != full[i - 1]]
    if kind == "autoregressive":
        u = steps
    pos = [t if kind != "trapezoid" else min(t, horizon - 1 - t) for t in range(horizon)]
    rows = steps + math.floor(max(pos) * u) + 1
    full = [[min(max(steps + math.floor(p * u) - m, 0), steps) for p in pos] for m in range(rows)]
    # Repeated rows (when the delay between neighbours exceeds steps) are dropped.
    return [r for i, r in enumerate(full) if i == 0 or r != full[i - 1]]


@pytest.mark.parametrize("kind", SCHEDULING_KINDS)
@pytest.mark.parametrize("horizon,steps,u", CASES)
def test_invariants(kind, horizon, steps, u):
    m = scheduling_matrix(kind, horizon, steps, u)
    assert m.dtype == np.int64 and m.ndim == 2 and m.shape[1] == horizon
    assert m.min() >= 0 and m.max() <= steps
    assert (m[0] == steps).all(), "first row must be pure noise"
    assert (m[-1] == 0).all(), "last row must be clean"
    assert (np.diff(m, axis=0) <= 0).all(), "a token's noise index never increases"
    assert (np.diff(m, axis=0) != 0).any(axis=1).all(), "consecutive rows must differ"
    assert m.tolist() == _reference(kind, horizon, steps, u)


def test_pyramid_plain_formula_and_row_count():
    steps, horizon, u = 4, 6, 1.0
    m = scheduling_matrix("pyramid", horizon, steps, u)
    assert m.shape == (steps + (horizon - 1) + 1, horizon)
    for r in range(m.shape[0]):
        for t in range(horizon):
            assert m[r, t] == min(max(steps + t - r, 0), steps)


def test_pyramid_fractional_uncertainty():
    m = scheduling_matrix("pyramid", 5, 10, 0.5)
    # token t lags floor(t / 2) rows behind token 0
    assert m.shape[0] == 10 + 2 + 1
    assert m[1].tolist() == [9, 9, 10, 10, 10]
    assert (m[:, 0] == np.clip(10 - np.arange(m.shape[0]), 0, 10)).all()


def test_pyramid_with_zero_uncertainty_is_full_sequence():
    assert np.array_equal(scheduling_matrix("pyramid", 7, 5, 0.0), scheduling_matrix("full_sequence", 7, 5))


def test_full_sequence():
    m = scheduling_matrix("full_sequence", 3, 4)
    assert m.tolist() == [[4] * 3, [3] * 3, [2] * 3, [1] * 3, [0] * 3]


def test_autoregressive_finishes_each_token_before_the_next_starts():
    steps, horizon = 3, 4
    m = scheduling_matrix("autoregressive", horizon, steps, uncertainty_scale=0.3)  # u is ignored
    assert m.shape[0] == steps * horizon + 1
    for t in range(1, horizon):
        started = np.flatnonzero(m[:, t] < steps)[0]
        assert m[started - 1, t - 1] == 0 and (m[started - 1, t:] == steps).all()
    assert np.array_equal(m, scheduling_matrix("pyramid", horizon, steps, steps))


def test_trapezoid_is_symmetric_and_denoises_ends_first():
    m = scheduling_matrix("trapezoid", 7, 5, 1.0)
    assert np.array_equal(m, m[:, ::-1])
    assert m.shape[0] == 5 + 3 + 1
    assert m[1].tolist() == [4, 5, 5, 5, 5, 5, 4]
    # the middle token is the last one to become clean
    assert np.flatnonzero(m[:, 3] == 0)[0] == m.shape[0] - 1


def test_accepts_numpy_integers():
    assert scheduling_matrix("pyramid", np.int64(3), np.int32(2)).shape == (5, 3)


@pytest.mark.parametrize(
    "args,field",
    [
        (("pyramids", 4, 10), "sampling.schedule"),
        (("pyramid", 0, 10), "sampling.horizon"),
        (("pyramid", 4, 0), "sampling.steps"),
        (("pyramid", 4, 2.5), "sampling.steps"),
        (("pyramid", 4, True), "sampling.steps"),
        (("pyramid", 4, 10, -1.0), "sampling.uncertainty_scale"),
        (("pyramid", 4, 10, float("nan")), "sampling.uncertainty_scale"),
        (("pyramid", 4, 10, "1"), "sampling.uncertainty_scale"),
    ],
)
def test_bad_arguments_are_config_errors(args, field):
    with pytest.raises(ConfigError, match=field):
        scheduling_matrix(*args)


@pytest.mark.parametrize("kind", SCHEDULING_KINDS)
@pytest.mark.parametrize("index", [1, 4, 10])
def test_start_at_keeps_the_walk_below_the_start_index(kind, index):
    from worldsim.diffusion.scheduling import start_at

    full = scheduling_matrix(kind, 7, 10, 0.5)
    m = start_at(full, index)
    assert (m[0] == index).all() and (m[-1] == 0).all()
    assert (np.diff(m, axis=0) <= 0).all() and (np.abs(np.diff(m, axis=0)).sum(1) > 0).all()
    # every row of the clipped walk is a row of the full walk clipped: the same step spacing
    assert {tuple(r) for r in m} <= {tuple(np.minimum(r, index)) for r in full}
    assert len(m) <= len(full) and (index < 10 or np.array_equal(m, full))


def test_keyframes_walk_the_storyline_first_then_the_frames_between():
    m = scheduling_matrix("keyframes", 6, 3, keyframe_stride=3)
    # keyframes: tokens 2 and 5 (every third, and the last); the others wait at pure noise until they are clean
    assert m.tolist() == [
        [3, 3, 3, 3, 3, 3],
        [3, 3, 2, 3, 3, 2],
        [3, 3, 1, 3, 3, 1],
        [3, 3, 0, 3, 3, 0],
        [2, 2, 0, 2, 2, 0],
        [1, 1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 0],
    ]
    assert np.array_equal(
        scheduling_matrix("keyframes", 5, 4, keyframe_stride=1), scheduling_matrix("full_sequence", 5, 4)
    )
    with pytest.raises(ConfigError, match="sampling.keyframe_stride"):
        scheduling_matrix("keyframes", 5, 4, keyframe_stride=0)
