"""Samplers: oracle recovery for every scheduling kind, DDPM posterior, cache/window bookkeeping,
guidance, callbacks and determinism. Fake backbones are defined here; everything is tiny and CPU."""

from __future__ import annotations

import pytest
import torch
from helpers import sampling_settings
from torch import nn

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.sampling import SAMPLERS, Guidance, ddim_step, sample
from worldsim.diffusion.schedules import alpha_sigma
from worldsim.diffusion.scheduling import SCHEDULING_KINDS, scheduling_matrix
from worldsim.errors import ConfigError


def _expand(v, x):
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def _positions(total, batch=2, dtype=torch.float64):
    """cond = the absolute token index, so a backbone can tell which tokens it was given."""
    return torch.arange(total, dtype=dtype).repeat(batch, 1)[..., None]


class Oracle(nn.Module):
    """Knows the data: reads each token's absolute index from cond and returns the exact target
    (x0, eps = (x - alpha x0) / sigma, or v = alpha eps - sigma x0) for the noisy input it is given."""

    causal = False

    def __init__(self, data, schedule, prediction, max_tokens=None):
        super().__init__()
        self.register_buffer("data", data)
        self.schedule, self.prediction, self.max_tokens = schedule, prediction, max_tokens
        self.calls = []

    def forward(self, x, k, cond=None, cache=None):
        idx = cond[..., 0].round().long()
        self.calls.append((idx[0].tolist(), x.detach().clone(), k.detach().clone()))
        if self.max_tokens is not None:
            assert x.shape[1] <= self.max_tokens
        x0 = self.data[torch.arange(x.shape[0])[:, None], idx]
        alpha, sigma = (_expand(v, x) for v in alpha_sigma(self.schedule, k))
        eps = torch.where(sigma > 0, (x - alpha * x0) / sigma.clamp_min(1e-30), torch.zeros_like(x))
        return {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}[self.prediction]


class CumMean(nn.Module):
    """Causal: token t sees the running mean of per-token features over tokens <= t. The cache is
    (running sum, count); counters record that the cached path really ran."""

    causal = True

    def __init__(self, dim=2, cond_dim=1, hidden=8, max_tokens=None):
        super().__init__()
        self.enc = nn.Linear(dim + 1 + cond_dim, hidden)
        self.dec = nn.Linear(2 * hidden + dim + 1, dim)
        self.hidden, self.max_tokens = hidden, max_tokens
        self.cached_calls = self.appends = 0

    def _h(self, x, k, cond):
        return torch.tanh(self.enc(torch.cat([x, k[..., None], cond], -1)))

    def forward(self, x, k, cond=None, cache=None):
        if self.max_tokens is not None:
            assert x.shape[1] <= self.max_tokens
        if cache is None:
            cache = self.init_cache(x.shape[0])
        else:
            self.cached_calls += 1
        total, count = cache
        h = self._h(x, k, cond)
        counts = count + torch.arange(1, x.shape[1] + 1, dtype=x.dtype)
        mean = (total[:, None] + h.cumsum(1)) / counts[None, :, None]
        return self.dec(torch.cat([h, mean, x, k[..., None]], -1))

    def init_cache(self, batch_size):
        return torch.zeros(batch_size, self.hidden, dtype=self.enc.weight.dtype), 0

    def append(self, cache, x, k, cond):
        self.appends += 1
        if self.max_tokens is not None:
            assert cache[1] + x.shape[1] <= self.max_tokens
        return cache[0] + self._h(x, k, cond).sum(1), cache[1] + x.shape[1]


class GaussianPrior(nn.Module):
    """Exact denoiser for N(0, I) data with x0 prediction: E[x0 | x_k] = alpha_k x_k."""

    causal = True
    max_tokens = None

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, x, k, cond=None, cache=None):
        alpha, _ = alpha_sigma(self.schedule, k)
        return _expand(alpha, x) * x


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# the DDIM / DDPM step


def test_ddpm_step_is_the_posterior_q_xb_given_xa_x0():
    """eta = 1 gives the DDPM posterior (Ho et al. 2020 eq. 7), written here with betas."""
    torch.manual_seed(0)
    ab_a = torch.tensor([0.3, 0.05, 0.7, 1e-5], dtype=torch.float64)[:, None]  # alpha_bar at level a
    ab_b = torch.tensor([0.6, 0.5, 0.9, 0.2], dtype=torch.float64)[:, None]  # less noisy level b
    x0, eps_true = torch.randn(2, 4, 3, dtype=torch.float64)
    x_a = ab_a.sqrt() * x0 + (1 - ab_a).sqrt() * eps_true
    beta = 1 - ab_a / ab_b
    mean = ab_b.sqrt() * beta / (1 - ab_a) * x0 + (ab_a / ab_b).sqrt() * (1 - ab_b) / (1 - ab_a) * x_a
    var = (1 - ab_b) / (1 - ab_a) * beta

    args = (x_a, x0, eps_true, ab_a.sqrt(), (1 - ab_a).sqrt(), ab_b.sqrt(), (1 - ab_b).sqrt(), 1.0)
    got_mean = ddim_step(*args, noise=torch.zeros_like(x0))
    got_std = ddim_step(*args, noise=torch.ones_like(x0)) - got_mean
    torch.testing.assert_close(got_mean, mean, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got_std, var.sqrt().expand_as(x0), atol=1e-12, rtol=1e-10)
    # eta = 0: deterministic DDIM, x_b = alpha_b x0 + sigma_b eps (noise has no effect)
    det = (*args[:-1], 0.0)
    expected = ab_b.sqrt() * x0 + (1 - ab_b).sqrt() * eps_true
    torch.testing.assert_close(ddim_step(*det, noise=torch.ones_like(x0)), expected)


def test_ddpm_sampler_equals_ddim_with_eta_one():
    model = DiffusionModel(GaussianPrior("cosine"), "cosine", "x0")
    kw = dict(horizon=5, batch_size=2, token_shape=(3,))
    s = dict(steps=6, schedule="pyramid", chunk_size=2)
    a = sample(model, sampling_settings(sampler="ddpm", **s), generator=_gen(3), **kw)
    b = sample(model, sampling_settings(sampler="ddim", eta=1.0, **s), generator=_gen(3), **kw)
    c = sample(model, sampling_settings(sampler="ddim", eta=0.0, **s), generator=_gen(3), **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, c)


# ----------------------------------------------------------------------------------------------
# oracle recovery


@pytest.mark.parametrize("kind", SCHEDULING_KINDS)
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("prediction,schedule", [("x0", "linear"), ("eps", "cosine"), ("v", "sigmoid")])
@pytest.mark.parametrize("n_context", [0, 3])
def test_oracle_recovers_the_data_exactly(kind, sampler, prediction, schedule, n_context):
    horizon, batch = 7, 2
    data = torch.randn(batch, n_context + horizon, 2, generator=_gen(1), dtype=torch.float64)
    model = DiffusionModel(Oracle(data, schedule, prediction), schedule, prediction)
    settings = sampling_settings(sampler=sampler, steps=8, schedule=kind, uncertainty_scale=1.5, chunk_size=3,
                                 stabilization_level=0.1 if n_context else 0.0)  # fmt: skip
    out = sample(
        model, settings, horizon=horizon, context=data[:, :n_context] if n_context else None, batch_size=batch,
        token_shape=(2,), cond=_positions(n_context + horizon), generator=_gen(2),
    )  # fmt: skip
    assert out.shape == (batch, horizon, 2) and out.dtype == torch.float64
    torch.testing.assert_close(out, data[:, n_context:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_oracle_sliding_window_and_image_tokens(prediction):
    """Past max_tokens, with (C, H, W) tokens and float32: the window slices x, k and cond together."""
    data = torch.randn(1, 4 + 9, 2, 2, 3, generator=_gen(5))
    model = DiffusionModel(Oracle(data, "cosine", prediction, max_tokens=5), "cosine", prediction)
    settings = sampling_settings(steps=10, stabilization_level=0.05, chunk_size=2, sampler="ddpm")
    out = sample(
        model, settings, horizon=9, context=data[:, :4], cond=_positions(13, 1, torch.float32), generator=_gen(0)
    )
    torch.testing.assert_close(out, data[:, 4:], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# window and stabilization bookkeeping


def test_window_shows_the_most_recent_finished_tokens_at_the_stabilization_level():
    n_ctx, horizon, window, chunk, k_s = 4, 9, 5, 2, 0.2
    data = torch.randn(1, n_ctx + horizon, 2, generator=_gen(7), dtype=torch.float64)
    backbone = Oracle(data, "linear", "x0", max_tokens=window)
    out = sample(
        DiffusionModel(backbone, "linear", "x0"),
        sampling_settings(steps=3, schedule="autoregressive", chunk_size=chunk, stabilization_level=k_s),
        horizon=horizon, context=data[:, :n_ctx], cond=_positions(n_ctx + horizon, 1), generator=_gen(0),
    )  # fmt: skip
    torch.testing.assert_close(out, data[:, n_ctx:])
    shown = {}  # absolute index -> the noisy value the model was shown for that finished token
    starts = []
    for idx, x, k in backbone.calls:
        assert len(idx) <= window and idx == list(range(idx[0], idx[-1] + 1))
        first_chunk_token = n_ctx + (idx[-1] - n_ctx) // chunk * chunk  # chunks: 4-5, 6-7, .., 12
        n_chunk = idx[-1] - first_chunk_token + 1
        starts.append(first_chunk_token)
        prefix = idx[: len(idx) - n_chunk]
        # the window is full whenever enough finished tokens exist
        assert len(prefix) == min(first_chunk_token, window - n_chunk)
        for j, t in enumerate(prefix):
            assert k[0, j] == pytest.approx(k_s)
            v = x[0, j]
            assert not torch.allclose(v, data[0, t])  # noised ...
            shown.setdefault(t, v)
            torch.testing.assert_close(v, shown[t], atol=0, rtol=0)  # ... once, with the same noise every time
    assert sorted(set(starts)) == list(range(n_ctx, n_ctx + horizon, chunk))


def test_window_errors():
    model = DiffusionModel(CumMean(max_tokens=4), "linear", "x0")
    kw = dict(horizon=6, batch_size=1, token_shape=(2,), cond=_positions(6, 1))
    with pytest.raises(ConfigError, match="window"):
        sample(model, sampling_settings(steps=2, chunk_size=None), window=5, **kw)
    with pytest.raises(ConfigError, match="chunk_size"):
        sample(model, sampling_settings(steps=2, chunk_size=5), **kw)


# ----------------------------------------------------------------------------------------------
# cache


@pytest.mark.parametrize("max_tokens", [None, 5])
def test_cached_and_uncached_paths_agree(max_tokens):
    torch.manual_seed(0)
    backbone = CumMean(max_tokens=max_tokens).double()
    model = DiffusionModel(backbone, "cosine", "v")
    context = torch.randn(2, 3, 2, dtype=torch.float64, generator=_gen(4))
    kw = dict(horizon=7, context=context, cond=_positions(10))
    s = dict(sampler="ddpm", steps=5, schedule="pyramid", chunk_size=2, stabilization_level=0.15)
    cached = sample(model, sampling_settings(use_cache=True, **s), generator=_gen(1), **kw)
    assert backbone.cached_calls > 0 and backbone.appends > 0
    calls = backbone.cached_calls
    uncached = sample(model, sampling_settings(use_cache=False, **s), generator=_gen(1), **kw)
    assert backbone.cached_calls == calls
    torch.testing.assert_close(cached, uncached, atol=1e-10, rtol=0)
    # the context matters on both paths
    other = sample(model, sampling_settings(use_cache=True, **s), generator=_gen(1), **{**kw, "context": context + 1})
    assert not torch.allclose(other, cached)


def test_unlimited_window_builds_the_cache_once_and_appends_each_chunk():
    backbone = CumMean().double()
    model = DiffusionModel(backbone, "linear", "eps")
    sample(model, sampling_settings(steps=3, chunk_size=3), horizon=7, context=torch.zeros(1, 3, 2, dtype=torch.float64),
           cond=_positions(10, 1), generator=_gen(0))  # fmt: skip
    # the context, then per chunk its finished leading tokens as the pyramid finishes them (2 of each 3-token
    # chunk, 1 of the last), and the whole chunk again from the chunk's start at its end
    assert backbone.appends == 1 + (2 + 1) + (2 + 1) + (0 + 1)


class CountingCumMean(CumMean):
    """CumMean that records how many tokens every cached forward call ran."""

    def __init__(self):
        super().__init__()
        self.lengths = []

    def forward(self, x, k, cond=None, cache=None):
        if cache is not None:
            self.lengths.append(x.shape[1])
        return super().forward(x, k, cond, cache)


@pytest.mark.parametrize("k_s", [0.0, 0.2])
def test_finished_leading_tokens_leave_the_row_with_the_same_plan(k_s):
    """A pyramid finishes a chunk's first tokens first; with a cache they are committed and later rows run only
    the rest: the rows get shorter, and the plan, guided by an objective that couples all tokens, is the same as
    the uncached path's, which runs every finished token in every row."""
    torch.manual_seed(0)
    backbone = CountingCumMean().double()
    model = DiffusionModel(backbone, "cosine", "x0")
    context = torch.randn(2, 2, 2, dtype=torch.float64, generator=_gen(3))

    def coupled(x0):  # not a sum over tokens: the finished tokens' values change the others' gradient
        return -(x0[:, :, 0].sum(1) - 1).pow(2) + (x0[:, 1:, 1] * x0[:, :-1, 1]).sum(1)

    kw = dict(horizon=6, context=context, cond=_positions(8), guidance=Guidance(coupled, 0.5, 1))
    s = dict(steps=4, schedule="pyramid", uncertainty_scale=1, stabilization_level=k_s)
    cached = sample(model, sampling_settings(use_cache=True, **s), generator=_gen(1), **kw)
    assert min(backbone.lengths) == 1 and max(backbone.lengths) == 6
    uncached = sample(model, sampling_settings(use_cache=False, **s), generator=_gen(1), **kw)
    torch.testing.assert_close(cached, uncached, atol=1e-10, rtol=0)


class NonCausal(CountingCumMean):
    """The same network declared non-causal: every row runs the whole chunk, with no cache."""

    causal = False


@pytest.mark.parametrize("gradient", [None, "x0", "model"])
def test_a_causal_row_runs_only_up_to_the_last_token_it_moves(gradient):
    """Unguided, or guided at the prediction (x0), nothing depends on the predictions of the tokens a pyramid row
    leaves at full noise: a causal model's row runs only the tokens it moves, and the plan is the one the whole
    chunk gives. A gradient through the model values every token's prediction, so its rows run the whole chunk."""
    torch.manual_seed(0)
    backbone = CountingCumMean().double()
    model = DiffusionModel(backbone, "cosine", "x0")
    guidance = None if gradient is None else Guidance(_sum_value, 0.5, 1, gradient)
    kw = dict(horizon=6, context=torch.randn(2, 2, 2, dtype=torch.float64, generator=_gen(3)), cond=_positions(8),
              guidance=guidance)  # fmt: skip
    s = sampling_settings(steps=4, schedule="pyramid", uncertainty_scale=1)
    moved = sample(model, s, generator=_gen(1), **kw)
    whole = NonCausal().double()
    whole.load_state_dict(backbone.state_dict())
    every = sample(DiffusionModel(whole, "cosine", "x0"), s, generator=_gen(1), **kw)
    torch.testing.assert_close(moved, every, atol=1e-10, rtol=0)
    # the first row moves the first token only; a row moves at most `steps` (4) tokens of the 6
    if gradient == "model":
        assert backbone.lengths[0] == 6 and max(backbone.lengths) == 6
    else:
        assert backbone.lengths == [1, 2, 3, 4, 4, 4, 3, 2, 1]


def test_the_x0_gradient_is_exact_for_standard_normal_tokens():
    """For N(0, I) tokens the model's Jacobian dx0_hat/dx is alpha I, so guidance at the prediction (no pass
    through the model) walks the same rows as the gradient through it."""
    model = DiffusionModel(GaussianPrior("cosine"), "cosine", "x0")
    goal = torch.tensor([0.5, -1.0], dtype=torch.float64)

    def value(x0):
        return -((x0 - goal) ** 2).sum(dim=(1, 2)) - x0[:, 1:, 0].mul(x0[:, :-1, 1]).sum(1)

    kw = dict(horizon=5, context=torch.zeros(3, 0, 2, dtype=torch.float64), generator=_gen(0))
    s = sampling_settings(steps=6, schedule="full_sequence")
    through = sample(model, s, guidance=Guidance(value, 0.7, 1, "model"), **kw)
    at_x0 = sample(model, s, guidance=Guidance(value, 0.7, 1, "x0"), **{**kw, "generator": _gen(0)})
    torch.testing.assert_close(at_x0, through, atol=1e-10, rtol=1e-10)
    plain = sample(model, s, **{**kw, "generator": _gen(0)})
    assert value(at_x0).mean() > value(plain).mean() + 1


def test_the_x0_gradient_refuses_monte_carlo_guidance_and_unknown_kinds():
    with pytest.raises(ConfigError, match="sampling.mc_samples: Monte Carlo guidance"):
        Guidance(_sum_value, 1.0, 2, "x0")
    with pytest.raises(ConfigError, match="sampling.guidance_gradient: expected one of model, x0"):
        Guidance(_sum_value, 1.0, 1, "jacobian")


# ----------------------------------------------------------------------------------------------
# callback, guidance, determinism, errors


def test_callback_reports_every_matrix_row():
    rows = []
    model = DiffusionModel(GaussianPrior("linear"), "linear", "x0")
    settings = sampling_settings(steps=4, schedule="pyramid", uncertainty_scale=2, chunk_size=3)
    sample(model, settings, horizon=5, batch_size=2, token_shape=(3,), generator=_gen(0),
           callback=lambda info: rows.append(info))  # fmt: skip
    for chunk, start, length in [(0, 0, 3), (1, 3, 2)]:
        got = [r for r in rows if r["chunk"] == chunk]
        matrix = torch.as_tensor(scheduling_matrix("pyramid", length, 4, 2)) / 4
        assert [r["row"] for r in got] == list(range(len(matrix)))
        assert all(r["start"] == start and r["x"].shape == (2, length, 3) for r in got)
        for r, levels in zip(got, matrix, strict=True):
            torch.testing.assert_close(r["k"], levels.expand(2, length).float())


def _sum_value(x0):
    return x0.sum(dim=(1, 2))


@pytest.mark.parametrize("inference", [False, True])
def test_guidance_moves_samples_toward_higher_objective(inference):
    model = DiffusionModel(GaussianPrior("cosine"), "cosine", "x0")
    kw = dict(horizon=4, batch_size=64, token_shape=(2,), generator=_gen(0))
    plain = sample(model, sampling_settings(steps=10), **kw)
    with torch.inference_mode() if inference else torch.no_grad():
        guided = sample(model, sampling_settings(steps=10), guidance=Guidance(_sum_value, 2.0, 1),
                        **{**kw, "generator": _gen(0)})  # fmt: skip
    assert guided.mean() > plain.mean() + 0.5
    assert not guided.requires_grad


def test_guided_ddim_row_matches_the_classifier_guidance_formula():
    """One guided DDIM row in float64 against Dhariwal & Nichol 2021 (Sec. 4.2) written out by hand:
    eps_g = eps - scale sigma_a d value / d x_a, x0_g = (x_a - sigma_a eps_g) / alpha_a,
    x_b = alpha_b x0_g + sigma_b eps_g."""
    schedule, scale, steps = "cosine", 0.7, 4
    model = DiffusionModel(GaussianPrior(schedule), schedule, "x0")
    states = {}
    goal = torch.tensor([0.5, -1.0], dtype=torch.float64)

    def value(x0):
        return -((x0 - goal) ** 2).sum(dim=(1, 2))

    empty = torch.zeros(3, 0, 2, dtype=torch.float64)  # no context; sets batch, token shape and dtype
    sample(model, sampling_settings(steps=steps, schedule="full_sequence"), horizon=1, context=empty,
           guidance=Guidance(value, scale, 1), generator=_gen(0),
           callback=lambda r: states.setdefault(r["row"], r["x"]))  # fmt: skip
    alpha_a, sigma_a = alpha_sigma(schedule, torch.tensor(1.0, dtype=torch.float64))
    alpha_b, sigma_b = alpha_sigma(schedule, torch.tensor(0.75, dtype=torch.float64))
    x_a = states[0]
    x0 = alpha_a * x_a
    eps = (x_a - alpha_a * x0) / sigma_a
    grad = -2 * (x0 - goal) * alpha_a  # d value / d x_a through x0 = alpha_a x_a
    eps_g = eps - scale * sigma_a * grad
    x0_g = (x_a - sigma_a * eps_g) / alpha_a
    torch.testing.assert_close(states[1], alpha_b * x0_g + sigma_b * eps_g, atol=1e-10, rtol=1e-10)


def test_guidance_with_a_cached_trained_model_under_inference_mode():
    torch.manual_seed(0)
    model = DiffusionModel(CumMean(), "linear", "eps")
    settings = sampling_settings(steps=4, chunk_size=2)
    kw = dict(horizon=4, context=torch.randn(2, 2, 2), cond=_positions(6, 2, torch.float32),
              guidance=Guidance(_sum_value, 1.0, 1))  # fmt: skip
    with torch.inference_mode():
        a = sample(model, settings, generator=_gen(0), **kw)
    b = sample(model, settings, generator=_gen(0), **kw)
    c = sample(model, settings, generator=_gen(0), **{**kw, "guidance": Guidance(_sum_value, 0.0, 1)})
    torch.testing.assert_close(a, b)
    assert not torch.allclose(b, c)


def test_same_seed_same_output():
    model = DiffusionModel(GaussianPrior("sigmoid"), "sigmoid", "x0")
    settings = sampling_settings(sampler="ddpm", steps=5, chunk_size=4, stabilization_level=0.3, clip_x0=1.0)
    kw = dict(horizon=6, batch_size=2, token_shape=(3,))
    a, b = sample(model, settings, generator=_gen(9), **kw), sample(model, settings, generator=_gen(9), **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a, sample(model, settings, generator=_gen(10), **kw))
    assert a.abs().max() <= 1.0  # the last row takes the clipped x0


def test_bad_arguments_raise_config_errors():
    model = DiffusionModel(GaussianPrior("linear"), "linear", "x0")
    ok, settings = dict(horizon=3, batch_size=1, token_shape=(2,)), sampling_settings(steps=2)
    with pytest.raises(ConfigError, match="batch_size and token_shape"):
        sample(model, settings, horizon=3)
    with pytest.raises(ConfigError, match="cond"):
        sample(model, settings, cond=torch.zeros(1, 2, 1), **ok)
    with pytest.raises(ConfigError, match="token_shape"):
        sample(model, settings, horizon=3, context=torch.zeros(1, 2, 3), token_shape=(2,))
    with pytest.raises(ConfigError, match="sampling: expected a worldsim.settings.SamplingSettings"):
        sample(model, {"steps": 2}, **ok)
    with pytest.raises(ConfigError, match="sampling.guidance: expected a Guidance"):
        sample(model, settings, guidance=_sum_value, **ok)


@pytest.mark.parametrize(
    "field, value",
    [("sampler", "euler"), ("stabilization_level", 1.0), ("schedule", "zigzag"), ("eta", -1.0), ("steps", 0),
     ("chunk_size", 0), ("clip_x0", 0.0), ("uncertainty_scale", -1.0), ("use_cache", "yes")],
)  # fmt: skip
def test_bad_settings_are_refused_when_built_naming_the_field(field, value):
    """However the settings object is built (from a config or in code), a bad value stops it, naming the field."""
    with pytest.raises(ConfigError, match=rf"sampling\.{field}"):
        sampling_settings(**{field: value})


# Monte Carlo guidance (DF Sec. 3.4)


def test_monte_carlo_guidance_without_an_uncertain_future_is_plain_guidance():
    """Under full_sequence every token of the chunk has the same level: there is no noisier future to
    resample, so any number of Monte Carlo samples gives exactly the plain guided sample."""
    torch.manual_seed(0)
    model = DiffusionModel(CumMean(), "linear", "x0")
    settings = sampling_settings(steps=5, schedule="full_sequence")
    kw = dict(horizon=4, context=torch.randn(2, 2, 2), cond=_positions(6, 2, torch.float32))
    plain = sample(model, settings, generator=_gen(0), guidance=Guidance(_sum_value, 1.0, 1), **kw)
    mc = sample(model, settings, generator=_gen(0), guidance=Guidance(_sum_value, 1.0, 4), **kw)
    torch.testing.assert_close(mc, plain, atol=1e-6, rtol=1e-6)


def _near_one(x0):
    """A nonlinear objective: CumMean's x0 is linear in the other tokens' features, so only an objective
    that is not linear in x0 gives the present a gradient that depends on the future."""
    return -(x0 - 1).pow(2).sum(dim=(1, 2))


def test_monte_carlo_guidance_averages_over_sampled_futures():
    torch.manual_seed(0)
    model = DiffusionModel(CumMean(), "linear", "x0")
    settings = sampling_settings(steps=6, schedule="pyramid")
    kw = dict(horizon=6, context=torch.randn(32, 2, 2), cond=_positions(8, 32, torch.float32))
    unguided = sample(model, settings, generator=_gen(0), guidance=Guidance(_near_one, 0.0, 1), **kw)
    plain = sample(model, settings, generator=_gen(0), guidance=Guidance(_near_one, 1.0, 1), **kw)
    a = sample(model, settings, generator=_gen(0), guidance=Guidance(_near_one, 1.0, 4), **kw)
    b = sample(model, settings, generator=_gen(0), guidance=Guidance(_near_one, 1.0, 4), **kw)
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # seeded: the futures come from the generator
    assert not torch.allclose(a, plain)  # the resampled futures change the gradient
    assert _near_one(a).mean() > _near_one(unguided).mean()  # and it still climbs the objective
    with pytest.raises(ConfigError, match="sampling.mc_samples"):
        Guidance(_near_one, 1.0, 0)


class IdentityX0(nn.Module):
    """x0_hat = x: with a linear objective the guidance gradient is the same constant for every token."""

    causal = True
    max_tokens = None

    def forward(self, x, k, cond=None, cache=None):
        return x


@pytest.mark.parametrize("mc_samples", [1, 2, 4])
@pytest.mark.parametrize("n_ctx", [0, 2])
def test_monte_carlo_guidance_applies_the_plain_gradient_to_every_moving_token_of_a_linear_objective(mc_samples, n_ctx):
    """Identity x0-denoiser and value = sum(x0): the true gradient is 1 on every token, in every row of
    the pyramid (also after the chunk's first tokens are finished) and for any number of futures. The
    applied gradient is read back from the guided x0 (x0 + scale sigma^2 / alpha grad), so a one-chunk
    DDIM plan is the same for 1 and ``mc_samples`` futures."""
    from worldsim.diffusion import guidance

    model = DiffusionModel(IdentityX0(), "linear", "x0").double()
    seen = []
    real = guidance._guidance_gradient

    def spy(run, x, k, alpha, sigma, guidance, mc, generator, active):
        x0, eps, grad = real(run, x, k, alpha, sigma, guidance, mc, generator, active)
        seen.append((active, grad))
        return x0, eps, grad

    settings = sampling_settings(steps=4, schedule="pyramid", stabilization_level=0.1)
    kw = dict(horizon=6, batch_size=None if n_ctx else 3, token_shape=None if n_ctx else (2,),
              context=torch.randn(3, n_ctx, 2, dtype=torch.float64) if n_ctx else None)  # fmt: skip

    def linear(x0):
        return x0.sum(dim=(1, 2))

    try:
        guidance._guidance_gradient = spy
        plans = {n: sample(model, settings, generator=_gen(0), guidance=Guidance(linear, 0.1, n), **kw)
                 for n in (1, mc_samples)}  # fmt: skip
    finally:
        guidance._guidance_gradient = real
    # rows after the chunk's first tokens finished (they leave the row: only moving tokens remain) were checked
    assert len(seen) > 4 and any(grad.shape[1] < 6 for _, grad in seen) and all(bool(a.all()) for a, _ in seen)
    for active, grad in seen:
        moving = _expand(active, grad).expand_as(grad)
        torch.testing.assert_close(grad[moving], torch.ones_like(grad[moving]), atol=1e-12, rtol=0)
    torch.testing.assert_close(plans[mc_samples], plans[1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("finished_level", [0.0, 0.5])
def test_monte_carlo_gradient_of_the_present_is_the_average_over_sampled_futures(finished_level):
    """With a real (causal, nonlinear) model: the present tokens get the mean of the gradients taken with
    each sampled future, the future tokens their own plain gradient; nothing is scaled by 1 / N. A token
    finished inside the chunk is shown at the stabilization level, which may lie above the present's
    (``finished_level`` 0.5): it is finished, not future, and is never resampled."""
    from worldsim.diffusion.guidance import _guidance_gradient

    torch.manual_seed(0)
    model = DiffusionModel(CumMean(), "linear", "x0").double()
    x = torch.randn(2, 4, 2, dtype=torch.float64)
    cond = torch.randn(2, 4, 1, dtype=torch.float64)
    k = torch.tensor([[finished_level, 0.3, 0.6, 1.0]], dtype=torch.float64).expand(2, 4)
    active = torch.tensor([[False, True, True, True]]).expand(2, 4)  # token 0 finished, 1 the present, 2-3 the future
    alpha, sigma = model.alpha_sigma(k, x)

    def value(x0):
        return (x0[..., 0] * torch.arange(1.0, 5.0, dtype=x0.dtype)).sum(1) + x0.pow(2).sum(dim=(1, 2))

    def run(x_in):
        return model.predict(x_in, k, cond)

    n = 3
    x0, _, mc = _guidance_gradient(run, x, k, alpha, sigma, value, n, _gen(5), active)
    x_in = x.clone().requires_grad_(True)
    plain = torch.autograd.grad(value(run(x_in)[0]).sum(), x_in)[0]
    g = _gen(5)
    per_future = [plain]
    for _ in range(n - 1):
        other = alpha * x0 + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
        x_r = x.clone()
        x_r[:, 2:] = other[:, 2:]
        x_in = x.clone().requires_grad_(True)
        mixed = torch.cat([x_in[:, :2], x_r[:, 2:]], dim=1)
        per_future.append(torch.autograd.grad(value(run(mixed)[0]).sum(), x_in)[0])
    mean = torch.stack(per_future).mean(0)
    torch.testing.assert_close(mc[:, 1], mean[:, 1], atol=1e-12, rtol=0)
    torch.testing.assert_close(mc[:, 2:], plain[:, 2:], atol=1e-12, rtol=0)
    assert not torch.allclose(mc[:, 1], plain[:, 1])  # the futures matter for the present ...
    ratio = mc[:, 1] / plain[:, 1]
    assert not torch.allclose(ratio, torch.full_like(ratio, ratio.flatten()[0]))  # ... and not as one factor


def test_tokens_finished_inside_a_chunk_are_shown_at_the_stabilization_level():
    """A token finished within its chunk reaches the model like one finished in an earlier chunk: noised
    once to the stabilization level and labelled with it, never clean at k = 0."""
    n_ctx, horizon, k_s = 2, 4, 0.2
    data = torch.randn(1, n_ctx + horizon, 2, generator=_gen(3), dtype=torch.float64)
    backbone = Oracle(data, "linear", "x0")
    settings = sampling_settings(steps=3, schedule="pyramid", chunk_size=horizon, stabilization_level=k_s,
                                 use_cache=False)  # fmt: skip
    out = sample(DiffusionModel(backbone, "linear", "x0"), settings, horizon=horizon, context=data[:, :n_ctx],
                 cond=_positions(n_ctx + horizon, 1), generator=_gen(0))  # fmt: skip
    torch.testing.assert_close(out, data[:, n_ctx:])
    shown, checked = {}, 0
    for idx, x, k in backbone.calls:
        assert float(k.min()) == pytest.approx(k_s)  # no token is ever labelled clean
        for j, t in enumerate(idx):
            if float(k[0, j]) == pytest.approx(k_s):
                v = x[0, j]
                assert not torch.allclose(v, data[0, t])
                torch.testing.assert_close(v, shown.setdefault(t, v), atol=0, rtol=0)  # noised once
                checked += t >= n_ctx
    assert checked > 0  # tokens of the chunk itself were seen finished


# warm start (SDEdit)


def test_a_warm_start_begins_at_the_noised_estimate_and_walks_only_the_rows_below_it():
    from worldsim.diffusion.scheduling import scheduling_matrix, start_at

    n_ctx, horizon, steps, level = 2, 5, 10, 0.3
    data = torch.randn(2, n_ctx + horizon, 2, generator=_gen(3), dtype=torch.float64)
    backbone = Oracle(data, "cosine", "x0")
    model = DiffusionModel(backbone, "cosine", "x0")
    init = torch.randn(2, horizon, 2, generator=_gen(4), dtype=torch.float64)
    rows = []
    out = sample(model, sampling_settings(steps=steps, schedule="pyramid", uncertainty_scale=0.5), horizon=horizon,
                 context=data[:, :n_ctx], cond=_positions(n_ctx + horizon), init=init, init_level=level,
                 generator=_gen(0), callback=rows.append)  # fmt: skip
    torch.testing.assert_close(out, data[:, n_ctx:])  # the oracle still lands on the data from any estimate
    want = start_at(scheduling_matrix("pyramid", horizon, steps, 0.5), 3)
    assert len(rows) == len(want) and len(backbone.calls) == len(want) - 1  # the rows below the start only
    z = torch.randn(2, horizon, 2, generator=_gen(0), dtype=torch.float64)  # the sampler's first draw
    first = torch.full((2, horizon), 0.3, dtype=torch.float64)
    torch.testing.assert_close(rows[0]["x"], model.add_noise(init, first, z))
    torch.testing.assert_close(rows[0]["k"], first)


def test_a_warm_started_walk_numbers_its_chunks_like_a_cold_one():
    model = DiffusionModel(GaussianPrior("linear"), "linear", "x0")
    settings = sampling_settings(steps=4, chunk_size=2)
    kw = dict(horizon=5, batch_size=1, token_shape=(2,), generator=_gen(0))
    for init in (None, torch.zeros(1, 5, 2)):
        rows = []
        sample(model, settings, init=init, init_level=1.0 if init is None else 0.5, callback=rows.append, **kw)
        assert sorted({(r["chunk"], r["start"]) for r in rows}) == [(0, 0), (1, 2), (2, 4)]


def test_warm_start_errors():
    model = DiffusionModel(CumMean(), "linear", "x0")
    kw = dict(horizon=3, context=torch.zeros(1, 2, 2), cond=_positions(5, 1, torch.float32))
    settings = sampling_settings(steps=4)
    with pytest.raises(ConfigError, match="needs init"):
        sample(model, settings, init_level=0.5, **kw)
    with pytest.raises(ConfigError, match="sampling.init: expected shape"):
        sample(model, settings, init=torch.zeros(1, 2, 2), init_level=0.5, **kw)
    with pytest.raises(ConfigError, match="sampling.init_level"):
        sample(model, settings, init=torch.zeros(1, 3, 2), init_level=0.0, **kw)
