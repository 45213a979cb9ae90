"""Noise schedules and parameterizations against plain float64 formulas."""

import math

import pytest
import torch

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.parameterization import PREDICTIONS, expand_levels, target, to_x0_eps
from worldsim.diffusion.schedules import ALPHA_BAR_MIN, SCHEDULES, alpha_bar, alpha_sigma, snr
from worldsim.errors import ConfigError

GRID = torch.linspace(0, 1, 1001, dtype=torch.float64)


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


# Each schedule's defining formula, written out with the math module.
PLAIN = {
    "linear": lambda k: math.exp(-(0.1 * k + 0.5 * (20.0 - 0.1) * k * k)),
    "cosine": lambda k: math.cos((k + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2,
    "sigmoid": lambda k: (_sigmoid(3.0) - _sigmoid(6.0 * k - 3.0)) / (_sigmoid(3.0) - _sigmoid(-3.0)),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_alpha_bar_matches_plain_formula(schedule):
    got = alpha_bar(schedule, GRID)
    ref = torch.tensor([min(max(PLAIN[schedule](k), ALPHA_BAR_MIN), 1.0) for k in GRID.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_variance_preserving_and_snr(schedule):
    alpha, sigma = alpha_sigma(schedule, GRID)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(GRID), rtol=0, atol=1e-14)
    assert (alpha >= 0).all() and (sigma >= 0).all()
    ab = alpha_bar(schedule, GRID)
    inner = GRID > 0
    torch.testing.assert_close(snr(schedule, GRID)[inner], (ab / (1 - ab))[inner], rtol=1e-12, atol=0)
    torch.testing.assert_close(snr(schedule, GRID)[inner], (alpha**2 / sigma**2)[inner], rtol=1e-9, atol=0)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_endpoints(schedule, dtype):
    k = torch.tensor([0.0, 1.0], dtype=dtype)
    alpha, sigma = alpha_sigma(schedule, k)
    # k = 0 is exactly clean in every precision.
    assert alpha[0].item() == 1.0 and sigma[0].item() == 0.0
    assert snr(schedule, k)[0].item() == math.inf
    # k = 1 is (almost) pure noise, but alpha stays >= sqrt(ALPHA_BAR_MIN) so x0 = (x - sigma eps) / alpha is finite.
    assert alpha_bar(schedule, k)[1].item() < 1e-4
    assert alpha[1].item() >= math.sqrt(ALPHA_BAR_MIN) * (1 - 1e-6)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_monotone_in_k(schedule):
    ab = alpha_bar(schedule, GRID)
    assert (ab[1:] <= ab[:-1]).all()
    unclamped = ab[:-1] > ALPHA_BAR_MIN
    assert (ab[1:][unclamped] < ab[:-1][unclamped]).all(), "alpha_bar must strictly decrease until the floor"
    s = snr(schedule, GRID)
    assert (s[1:] <= s[:-1]).all()


def test_linear_is_ddpm_linear_betas():
    # DDPM (Ho et al. 2020): betas linear in 1e-4 .. 0.02 over K = 1000 steps, alpha_bar_i = prod (1 - beta_j).
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    discrete = torch.cumprod(1 - betas, 0)
    k = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert (alpha_bar("linear", k) - discrete).abs().max() < 1e-3


def test_unknown_schedule_is_config_error():
    with pytest.raises(ConfigError, match="diffusion.schedule.*'cosin'"):
        alpha_bar("cosin", GRID)


# -- parameterizations ---------------------------------------------------------------------------


def _pair(shape=(3, 5, 2, 4), seed=0, schedule="cosine"):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    k = torch.rand(shape[:2], generator=g, dtype=torch.float64) * 0.98 + 0.01
    alpha, sigma = alpha_sigma(schedule, k)
    return x0, eps, expand_levels(alpha, x0), expand_levels(sigma, x0)


def test_expand_levels_broadcasts_per_token():
    x = torch.zeros(2, 3, 4, 5)
    v = torch.arange(6.0).reshape(2, 3)
    e = expand_levels(v, x)
    assert e.shape == (2, 3, 1, 1)
    assert torch.equal((e + x)[1, 2], torch.full((4, 5), 5.0))


def test_targets_plain_formulas():
    x0, eps, alpha, sigma = _pair()
    assert torch.equal(target("eps", x0, eps, alpha, sigma), eps)
    assert torch.equal(target("x0", x0, eps, alpha, sigma), x0)
    # v = alpha eps - sigma x0 (Salimans & Ho 2022, Sec. 4), elementwise with per-token alpha, sigma.
    a, s = alpha.expand_as(x0), sigma.expand_as(x0)
    v_ref = torch.tensor(
        [
            ai * ei - si * xi
            for ai, ei, si, xi in zip(
                a.flatten().tolist(), eps.flatten().tolist(), s.flatten().tolist(), x0.flatten().tolist(), strict=True
            )
        ],
        dtype=torch.float64,
    ).reshape(x0.shape)
    torch.testing.assert_close(target("v", x0, eps, alpha, sigma), v_ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_round_trip_to_x0_eps(prediction, schedule):
    x0, eps, alpha, sigma = _pair(schedule=schedule)
    x_t = alpha * x0 + sigma * eps
    out = target(prediction, x0, eps, alpha, sigma)
    x0_hat, eps_hat = to_x0_eps(prediction, out, x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-10)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-10)


@pytest.mark.parametrize("src", PREDICTIONS)
@pytest.mark.parametrize("dst", PREDICTIONS)
def test_conversion_between_predictions(src, dst):
    # Output of a src-model -> (x0, eps) -> dst target equals the dst target computed from the truth.
    x0, eps, alpha, sigma = _pair(seed=1)
    x_t = alpha * x0 + sigma * eps
    x0_hat, eps_hat = to_x0_eps(src, target(src, x0, eps, alpha, sigma), x_t, alpha, sigma)
    torch.testing.assert_close(
        target(dst, x0_hat, eps_hat, alpha, sigma), target(dst, x0, eps, alpha, sigma), rtol=0, atol=1e-10
    )


def test_v_prediction_identities():
    x0, eps, alpha, sigma = _pair(seed=2)
    x_t = alpha * x0 + sigma * eps
    v = target("v", x0, eps, alpha, sigma)
    torch.testing.assert_close(alpha * x_t - sigma * v, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(sigma * x_t + alpha * v, eps, rtol=0, atol=1e-12)


def test_x0_prediction_at_clean_level_is_finite():
    x0 = torch.randn(2, 3, 4, dtype=torch.float64)
    alpha, sigma = alpha_sigma("linear", torch.zeros(2, 3, dtype=torch.float64))
    x0_hat, eps_hat = to_x0_eps("x0", x0, x0, expand_levels(alpha, x0), expand_levels(sigma, x0))
    assert torch.equal(x0_hat, x0) and torch.isfinite(eps_hat).all()


def test_unknown_prediction_is_config_error():
    x0, eps, alpha, sigma = _pair()
    with pytest.raises(ConfigError, match="diffusion.prediction"):
        target("noise", x0, eps, alpha, sigma)
    with pytest.raises(ConfigError, match="diffusion.prediction"):
        to_x0_eps("noise", x0, x0, alpha, sigma)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_models_table_of_a_samplers_levels_is_the_schedule_itself(schedule, dtype):
    """alpha_sigma_at(index, steps) reads a table built once; it equals the schedule at index / steps exactly."""
    model = DiffusionModel(torch.nn.Identity(), schedule, "x0")
    index = torch.tensor([[0, 1, 7], [20, 13, 2]])
    like = torch.zeros(2, 3, 4, dtype=dtype)
    for _ in range(2):  # built, then read
        got = model.alpha_sigma_at(index, 20, like)
        want = model.alpha_sigma(index.to(dtype) / 20, like)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == dtype and torch.equal(g, w)
