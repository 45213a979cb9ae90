"""Training noise levels, SNR loss weights and the masked diffusion loss."""

import pytest
import torch
from helpers import base_config_section
from torch import nn

from worldsim.diffusion.loss import (
    TRAINING_MODES,
    WEIGHTINGS,
    DiffusionLoss,
    LossOutput,
    LossSettings,
    diffusion_loss,
    loss_weights,
    sample_noise_levels,
)
from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.parameterization import PREDICTIONS, expand_levels
from worldsim.diffusion.schedules import SCHEDULES, alpha_sigma, snr
from worldsim.errors import ConfigError


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


#: noise levels without a clean first token or a clean context
PLAIN = dict(clean_first_prob=0.0, clean_context_prob=0.0)


def loss_settings(**over):
    """configs/config.yaml's diffusion section with ``over``, as the loss's settings."""
    return LossSettings.from_config({**base_config_section("diffusion"), **over})


# -- noise levels ----------------------------------------------------------------------------------


def test_diffusion_forcing_levels_are_independent_per_token():
    B, T, K = 4000, 8, 1000
    k, loss_mask = sample_noise_levels("diffusion_forcing", B, T, K, generator=gen(), **PLAIN)
    assert k.shape == (B, T) and k.dtype == torch.float32 and loss_mask.all()
    # on the grid i / K, i in 1..K, uniform
    i = k.double() * K
    assert torch.allclose(i, i.round()) and i.min() >= 1 and i.max() <= K
    assert abs(k.double().mean().item() - 0.5) < 0.02
    # within a sequence: (almost) all distinct and uncorrelated between every pair of positions
    distinct = torch.tensor([row.unique().numel() for row in k]).double().mean()
    assert distinct > 7.9
    corr = torch.corrcoef(k.double().T)
    off_diag = corr[~torch.eye(T, dtype=torch.bool)]
    assert off_diag.abs().max() < 0.08  # standard error ~ 1 / sqrt(B) = 0.016


def test_full_sequence_levels_shared_within_a_sequence():
    B, T, K = 2000, 6, 100
    k, loss_mask = sample_noise_levels("full_sequence", B, T, K, generator=gen(), **PLAIN)
    assert loss_mask.all()
    assert (k == k[:, :1]).all()
    assert k[:, 0].unique().numel() > 90  # but different across sequences
    assert abs(k.double().mean().item() - (K + 1) / (2 * K)) < 0.02


def test_teacher_forcing_structure():
    B, T, K = 3000, 5, 1000
    k, loss_mask = sample_noise_levels("teacher_forcing", B, T, K, generator=gen(), **PLAIN)
    assert (loss_mask.sum(1) == 1).all(), "exactly one noisy token with a loss per sequence"
    split = loss_mask.long().argmax(1)
    t = torch.arange(T)[None]
    assert (k[t < split[:, None]] == 0).all(), "context before the split is clean"
    assert (k[t > split[:, None]] == 1).all(), "tokens after the split are pure noise"
    noisy = k[loss_mask]
    assert (noisy > 0).all() and (noisy <= 1).all() and noisy.unique().numel() > 500
    counts = torch.bincount(split, minlength=T).double() / B
    assert (counts - 1 / T).abs().max() < 0.04, "split uniform over 0..T-1"


@pytest.mark.parametrize("mode", TRAINING_MODES)
def test_clean_first_token(mode):
    B, T = 4000, 4
    k, loss_mask = sample_noise_levels(mode, B, T, 1000, generator=gen(), clean_first_prob=1.0, clean_context_prob=0.0)
    assert (k[:, 0] == 0).all() and not loss_mask[:, 0].any()
    assert loss_mask.any(1).all(), "every sequence keeps a token with a loss"
    k, loss_mask = sample_noise_levels(mode, B, T, 1000, generator=gen(), clean_first_prob=0.3, clean_context_prob=0.0)
    frac = (
        (~loss_mask[:, 0]).double().mean().item()
        if mode != "teacher_forcing"
        else (k[:, 0] == 0).double().mean().item()
    )
    expected = 0.3 if mode != "teacher_forcing" else 0.3 + 0.7 * (T - 1) / T
    assert abs(frac - expected) < 0.03
    k, loss_mask = sample_noise_levels(mode, B, T, 1000, generator=gen(), **PLAIN)
    assert (k[:, 0] > 0).any()


def test_clean_context_prefix():
    """A clean prefix of uniform length 1..T-1 on a share q of sequences; the rest keeps DF levels."""
    B, T, q = 6000, 6, 0.4
    k, loss_mask = sample_noise_levels(
        "diffusion_forcing", B, T, 1000, generator=gen(), clean_first_prob=0.0, clean_context_prob=q
    )
    clean = k == 0
    assert torch.equal(clean, ~loss_mask), "clean context tokens get no loss, noisy ones do"
    length = clean.sum(1)
    # the clean tokens form a prefix, and a sequence never becomes entirely clean
    assert torch.equal(clean, torch.arange(T)[None, :] < length[:, None])
    assert (length < T).all()
    assert abs((length > 0).double().mean().item() - q) < 0.03
    counts = torch.bincount(length[length > 0], minlength=T)[1:].double()
    assert (counts / counts.sum() - 1 / (T - 1)).abs().max() < 0.03, "prefix length uniform over 1..T-1"
    # after the prefix the levels are still independent per token
    rest = k[length == 0]
    assert torch.corrcoef(rest[:, :2].T)[0, 1].abs() < 0.05
    # teacher forcing already has a clean context: unchanged
    a = sample_noise_levels(
        "teacher_forcing", 50, T, 1000, generator=gen(3), clean_first_prob=0.0, clean_context_prob=1.0
    )
    b = sample_noise_levels("teacher_forcing", 50, T, 1000, generator=gen(3), **PLAIN)
    assert torch.equal(a[0], b[0])


def test_noise_levels_deterministic_with_generator():
    a = sample_noise_levels(
        "diffusion_forcing", 3, 5, 1000, generator=gen(7), clean_first_prob=0.5, clean_context_prob=0.0
    )
    b = sample_noise_levels(
        "diffusion_forcing", 3, 5, 1000, generator=gen(7), clean_first_prob=0.5, clean_context_prob=0.0
    )
    c = sample_noise_levels(
        "diffusion_forcing", 3, 5, 1000, generator=gen(8), clean_first_prob=0.5, clean_context_prob=0.0
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(mode="diffusion-forcing"), "diffusion.mode"),
        (dict(timesteps=0), "diffusion.timesteps"),
        (dict(timesteps=10.0), "diffusion.timesteps"),
        (dict(clean_first_prob=1.5), "diffusion.clean_first_prob"),
        (dict(clean_context_prob=-0.1), "diffusion.clean_context_prob"),
        (dict(seq_len=0), "seq_len"),
    ],
)
def test_noise_level_config_errors(kwargs, field):
    args = dict(mode="diffusion_forcing", batch_size=2, seq_len=3, timesteps=10, **PLAIN) | kwargs
    with pytest.raises(ConfigError, match=field):
        sample_noise_levels(**args, generator=gen())


# -- loss weights ----------------------------------------------------------------------------------


def _reference_weights(weighting, k, schedule, prediction, gamma, decay):
    """Float64 scalar loops: min-SNR (Hang et al. 2023) and DF App. B.1's fused SNR (the authors'
    compute_loss_weights: moving sum over earlier tokens, shifted by one)."""
    out = []
    for row in k.tolist():
        ratios = [snr(schedule, torch.tensor(v, dtype=torch.float64)).item() for v in row]
        if weighting == "none":
            out.append([1.0] * len(row))
            continue
        clipped = [min(r, gamma) for r in ratios]
        if weighting == "fused_snr":
            s = [c / gamma for c in clipped]
            cum, prev, fc, fr = 0.0, 0.0, [], []
            for t, r in enumerate(ratios):
                prev = cum  # c_{t-1}, 0 for t = 0
                cum = s[0] if t == 0 else decay * cum + (1 - decay) * s[t]
                fc.append(gamma * (1 - (1 - decay * prev) * (1 - s[t])))
                fr.append(gamma * (1 - (1 - decay * prev) * (1 - r / gamma)))
            clipped, ratios = fc, fr
        if prediction == "eps":
            out.append([c / r for c, r in zip(clipped, ratios, strict=True)])
        elif prediction == "x0":
            out.append(clipped)
        else:
            out.append([c / (r + 1) for c, r in zip(clipped, ratios, strict=True)])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_loss_weights_match_float64_reference(weighting, prediction, schedule):
    g = gen(3)
    k = torch.randint(1, 101, (3, 9), generator=g).double() / 100
    k[0, :3] = 0.01  # very clean past: fused weights differ most from min-SNR
    got = loss_weights(weighting, k, schedule, prediction, snr_clip=4.0, fused_snr_decay=0.8)
    ref = _reference_weights(weighting, k, schedule, prediction, 4.0, 0.8)
    assert got.shape == k.shape and got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    got32 = loss_weights(weighting, k.float(), schedule, prediction, snr_clip=4.0, fused_snr_decay=0.8)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-6)


def test_min_snr_plain_values():
    k = torch.tensor([[0.05, 0.5, 0.95]], dtype=torch.float64)
    r = snr("linear", k)
    gamma = 5.0
    assert r[0, 0] > gamma > r[0, 2]  # both sides of the clip are exercised
    m = r.clamp(max=gamma)
    torch.testing.assert_close(loss_weights("min_snr", k, "linear", "eps", gamma, 0.9), m / r)
    torch.testing.assert_close(loss_weights("min_snr", k, "linear", "x0", gamma, 0.9), m)
    torch.testing.assert_close(loss_weights("min_snr", k, "linear", "v", gamma, 0.9), m / (r + 1))


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_fused_snr_without_decay_is_min_snr(prediction):
    k = torch.rand(4, 7, generator=gen(1), dtype=torch.float64) * 0.99 + 0.01
    torch.testing.assert_close(
        loss_weights("fused_snr", k, "sigmoid", prediction, 5.0, 0.0),
        loss_weights("min_snr", k, "sigmoid", prediction, 5.0, 0.9),
    )


def test_fused_snr_is_causal_and_rewards_a_clean_past():
    k = torch.full((2, 6), 0.8, dtype=torch.float64)
    k[1, 3] = 0.05  # cleaner token 3 in sequence 1
    w = loss_weights("fused_snr", k, "cosine", "x0", 5.0, 0.9)
    assert torch.equal(w[0, :3], w[1, :3]), "a token's weight never depends on later tokens"
    assert (w[1, 4:] > w[0, 4:]).all(), "tokens after a clean one count as easier"
    # the first token has no past: its fused weight is its min-SNR weight
    torch.testing.assert_close(w[:, 0], loss_weights("min_snr", k, "cosine", "x0", 5.0, 0.9)[:, 0])


def test_loss_weights_at_clean_tokens_are_finite():
    k = torch.tensor([[0.0, 0.3, 0.0, 1.0]])
    for weighting in WEIGHTINGS:
        for prediction in PREDICTIONS:
            w = loss_weights(weighting, k, "cosine", prediction, 5.0, 0.9)
            assert torch.isfinite(w).all(), (weighting, prediction)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(weighting="min-snr"), "diffusion.weighting"),
        (dict(schedule="linea"), "diffusion.schedule"),
        (dict(prediction="noise"), "diffusion.prediction"),
        (dict(snr_clip=0.0), "diffusion.snr_clip"),
        (dict(fused_snr_decay=1.0), "diffusion.fused_snr_decay"),
    ],
)
def test_loss_weight_config_errors(kwargs, field):
    args = dict(weighting="fused_snr", k=torch.rand(2, 3), schedule="linear", prediction="x0", snr_clip=5.0,
                fused_snr_decay=0.9) | kwargs  # fmt: skip
    with pytest.raises(ConfigError, match=field):
        loss_weights(**args)


# -- the loss ----------------------------------------------------------------------------------------


class Oracle(nn.Module):
    """Returns the exact target for known clean tokens ``x0`` (eps / v derived from the noisy input)."""

    def __init__(self, x0, schedule, prediction):
        super().__init__()
        self.x0, self.schedule, self.prediction = x0, schedule, prediction
        self.dummy = nn.Parameter(torch.zeros((), dtype=x0.dtype))

    def forward(self, x, k, cond=None, cache=None):
        alpha, sigma = alpha_sigma(self.schedule, k.to(x.dtype))
        alpha, sigma = expand_levels(alpha, x), expand_levels(sigma, x)
        eps = (x - alpha * self.x0) / sigma
        out = {"x0": self.x0, "eps": eps, "v": alpha * eps - sigma * self.x0}[self.prediction]
        return out + self.dummy


class TimeMixer(nn.Module):
    """Non-causal: every output token sees every input token (so padding could leak if not handled)."""

    causal = False

    def __init__(self, T, D, cond_dim=0):
        super().__init__()
        g = gen(11)
        self.mix = nn.Parameter(torch.randn(T, T, generator=g) / T)
        self.proj = nn.Parameter(torch.randn(D, D, generator=g) / D)
        self.cproj = nn.Parameter(torch.randn(cond_dim, D, generator=g)) if cond_dim else None

    def forward(self, x, k, cond=None, cache=None):
        h = torch.einsum("ts,bsd->btd", self.mix, x @ self.proj) + k[..., None]
        if cond is not None:
            h = h + torch.einsum("ts,bsc,cd->btd", self.mix, cond, self.cproj)
        return h


class Zero(nn.Module):
    def forward(self, x, k, cond=None, cache=None):
        return torch.zeros_like(x)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("mode", TRAINING_MODES)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_perfect_model_has_zero_loss(prediction, mode, weighting):
    x0 = torch.randn(4, 6, 3, generator=gen(5), dtype=torch.float64)
    model = DiffusionModel(Oracle(x0, "sigmoid", prediction), "sigmoid", prediction)
    out = diffusion_loss(
        model, x0, loss_settings(mode=mode, weighting=weighting, clean_first_prob=0.5), generator=gen(6)
    )
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0 and out.loss.item() < 1e-12
    assert out.token_loss[out.loss_mask].max().item() < 1e-10
    # the same model with a wrong output has a positive loss (the test can fail)
    model.backbone.dummy.data.fill_(0.1)
    assert diffusion_loss(model, x0, loss_settings(mode=mode, weighting=weighting), generator=gen(6)).loss.item() > 1e-4


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_loss_is_weighted_masked_mean_of_token_mse(weighting):
    # x0-prediction of zeros: the per-token MSE is mean(x0^2), whatever the noise drawn.
    x0 = torch.randn(3, 5, 2, 2, generator=gen(2))
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    model = DiffusionModel(Zero(), "linear", "x0")
    settings = loss_settings(weighting=weighting, clean_first_prob=0.5)
    out = diffusion_loss(model, x0, settings, mask=mask, generator=gen(4))
    expected_token = torch.where(mask[..., None, None], x0, 0.0).square().mean((-1, -2))
    torch.testing.assert_close(out.token_loss, expected_token)
    w = loss_weights(weighting, out.k, "linear", "x0", settings.snr_clip, settings.fused_snr_decay)
    expected = (w * expected_token)[out.loss_mask].sum() / out.loss_mask.sum()
    torch.testing.assert_close(out.loss, expected)
    assert not out.token_loss.requires_grad


def test_padding_gets_full_noise_no_loss_and_cannot_leak():
    B, T, D, C = 4, 6, 3, 2
    x0 = torch.randn(B, T, D, generator=gen(1))
    cond = torch.randn(B, T, C, generator=gen(2))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    model = DiffusionModel(TimeMixer(T, D, C), "cosine", "v")
    kw = dict(cond=cond, mask=mask)
    settings = loss_settings(weighting="fused_snr", clean_first_prob=0.3)
    out = diffusion_loss(model, x0, settings, generator=gen(3), **kw)
    assert (out.k[~mask] == 1).all() and not out.loss_mask[~mask].any()
    assert out.loss_mask[mask].any()

    x0_b, cond_b = x0.clone(), cond.clone()
    x0_b[~mask] = 100.0
    cond_b[~mask] = -50.0
    out_b = diffusion_loss(model, x0_b, settings, generator=gen(3), **{**kw, "cond": cond_b})
    assert torch.equal(out.loss, out_b.loss)
    # without the mask the padded values do change the loss (the mixer sees all tokens)
    out_c = diffusion_loss(model, x0_b, settings, generator=gen(3), **{**kw, "cond": cond_b, "mask": None})
    assert not torch.allclose(out.loss, out_c.loss)


def test_loss_deterministic_and_differentiable():
    x0 = torch.randn(2, 4, 3, generator=gen(0))
    model = DiffusionModel(TimeMixer(4, 3), "linear", "eps")
    settings = loss_settings(weighting="min_snr")
    a = diffusion_loss(model, x0, settings, generator=gen(9))
    b = diffusion_loss(model, x0, settings, generator=gen(9))
    c = diffusion_loss(model, x0, settings, generator=gen(10))
    assert torch.equal(a.loss, b.loss) and torch.equal(a.k, b.k) and not torch.equal(a.loss, c.loss)
    a.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_loss_finite_with_clean_tokens(prediction, weighting):
    x0 = torch.randn(8, 5, 3, generator=gen(0))
    model = DiffusionModel(TimeMixer(5, 3), "cosine", prediction)
    settings = loss_settings(mode="teacher_forcing", weighting=weighting, clean_first_prob=0.5)
    out = diffusion_loss(model, x0, settings, generator=gen(1))
    assert torch.isfinite(out.loss) and (out.k == 0).any()


def test_bad_mask_shape_is_config_error():
    model = DiffusionModel(Zero(), "linear", "x0")
    with pytest.raises(ConfigError, match="mask"):
        diffusion_loss(
            model, torch.zeros(2, 3, 4), loss_settings(), mask=torch.ones(2, 4, dtype=torch.bool), generator=gen()
        )


@pytest.mark.parametrize(
    "field, value",
    [("mode", "diffusion-forcing"), ("timesteps", 0), ("weighting", "snr"), ("snr_clip", 0.0),
     ("fused_snr_decay", 1.0), ("clean_first_prob", 1.5), ("clean_context_prob", -0.1), ("cond_dropout", 2.0)],
)  # fmt: skip
def test_bad_loss_settings_are_refused_when_built_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"diffusion\.{field}"):
        loss_settings(**{field: value})


def test_the_loss_takes_every_key_from_the_diffusion_section_and_names_a_missing_one():
    node = base_config_section("diffusion")
    assert DiffusionLoss.from_config(node).settings == loss_settings()
    with pytest.raises(ConfigError, match=r"diffusion\.clean_context_prob: missing"):
        DiffusionLoss.from_config({k: v for k, v in node.items() if k != "clean_context_prob"})
    with pytest.raises(ConfigError, match=r"diffusion: unknown key 'modes'"):
        DiffusionLoss.from_config({**node, "modes": "x"})
