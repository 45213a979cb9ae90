"""The Diffusion Forcing training loss: per-token noise levels, masks and SNR loss weights.

DF (Chen et al. 2024, Alg. 1) trains a sequence denoiser with an independent noise level per token;
``full_sequence`` (one level per sequence) and ``teacher_forcing`` (clean past, one noisy next token)
are the two classical special cases and are options of the same loss.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.parameterization import check_prediction, expand_levels
from worldsim.diffusion.schedules import check_schedule, snr
from worldsim.errors import ConfigError, check_int

TRAINING_MODES = ("diffusion_forcing", "full_sequence", "teacher_forcing")
WEIGHTINGS = ("none", "min_snr", "fused_snr")


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"diffusion.{field}: unknown value {value!r}; expected one of {list(choices)}")


def _check_real(field: str, value: object, lo: float, hi: float, hi_open: bool = False) -> float:
    if not (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and not value < lo  # = lo <= value (finite): numbers.Real's stub declares only __lt__ and __le__
        and (value < hi if hi_open else value <= hi)
    ):
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ConfigError(f"diffusion.{field}: expected a number in {bound}, got {value!r}")
    return float(value)


# -- noise levels -----------------------------------------------------------------------------


class _Draw(TypedDict):
    """The keyword arguments shared by every random draw of ``sample_noise_levels``."""

    generator: torch.Generator
    device: torch.device


def sample_noise_levels(
    mode: str,
    batch_size: int,
    seq_len: int,
    timesteps: int,
    *,
    generator: torch.Generator,
    clean_first_prob: float,
    clean_context_prob: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training noise levels k (B, T) float32 in {0, 1/K, ..., 1} and the (B, T) bool mask of tokens
    that get a loss. Noisy levels are k = i / K with i uniform in 1..K (K = ``timesteps``).

    - ``diffusion_forcing``: i.i.d. per token (DF Alg. 1).
    - ``full_sequence``: one level shared by all tokens of a sequence.
    - ``teacher_forcing``: per sequence a split s uniform in 0..T-1: tokens before s are clean context
      (k = 0, no loss), token s is noisy (loss), tokens after s are pure noise (k = 1, no loss).
    - ``clean_first_prob``: with this probability a sequence's first token is clean (k = 0) and gets
      no loss (it serves as context, e.g. an initial observation); in teacher forcing such a sequence
      splits at s >= 1 so that it keeps its one noisy token.
    - ``clean_context_prob``: with this probability a sequence starts with a clean context of c tokens,
      c uniform in 1..T-1 (k = 0, no loss); the tokens after it keep the levels drawn above. Samplers
      always condition on a clean (or stabilized) history, a configuration that i.i.d. levels reach
      only rarely; this puts training weight on it while the rest stays Diffusion Forcing. Ignored in
      teacher forcing, whose context is always clean.

    All draws use ``generator``; results live on its device.
    """
    _check_choice("mode", mode, TRAINING_MODES)
    B = check_int("batch_size", batch_size, 1)
    T = check_int("seq_len", seq_len, 1)
    K = check_int("diffusion.timesteps", timesteps, 1)
    p = _check_real("clean_first_prob", clean_first_prob, 0.0, 1.0)
    q = _check_real("clean_context_prob", clean_context_prob, 0.0, 1.0)
    draw = _Draw(generator=generator, device=generator.device)

    if mode == "teacher_forcing":
        idx, loss_mask, clean_first = _teacher_forcing(B, T, K, p, draw)
    else:  # diffusion_forcing: i.i.d. per token (DF Alg. 1); full_sequence: one level per sequence
        idx = torch.randint(1, K + 1, (B, T) if mode == "diffusion_forcing" else (B, 1), **draw).expand(B, T)
        loss_mask = torch.ones(B, T, dtype=torch.bool, device=generator.device)
    k = idx.to(torch.float32) / K

    if p > 0:
        first_clean = clean_first if mode == "teacher_forcing" else torch.rand(B, **draw) < p
        k[:, 0] = torch.where(first_clean, 0.0, k[:, 0])
        loss_mask = loss_mask.clone()
        loss_mask[:, 0] &= ~first_clean
    if q > 0 and T > 1 and mode != "teacher_forcing":
        clean = _clean_context(B, T, q, draw)
        k = torch.where(clean, 0.0, k)
        loss_mask = loss_mask & ~clean
    return k.contiguous(), loss_mask


def _teacher_forcing(B: int, T: int, K: int, p: float, draw: _Draw) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher forcing's level indices (B, T), loss mask and the sequences whose first token is clean (with
    probability ``p``): a split s uniform in 0..T-1 per sequence (s >= 1 where the first token is clean), clean
    tokens before it, the one noisy token at it, pure noise after it."""
    dev = draw["device"]
    level = torch.randint(1, K + 1, (B, 1), **draw)
    clean_first = torch.rand(B, **draw) < p if p > 0 else torch.zeros(B, dtype=torch.bool, device=dev)
    lo = (clean_first & (T > 1)).long()
    split = lo + (torch.rand(B, **draw, dtype=torch.float64) * (T - lo)).long().clamp(max=T - 1 - lo)
    t = torch.arange(T, device=dev)[None, :]
    split = split[:, None]
    return torch.where(t < split, 0, torch.where(t == split, level, K)), t == split, clean_first


def _clean_context(B: int, T: int, q: float, draw: _Draw) -> torch.Tensor:
    """(B, T) bool: with probability ``q`` per sequence its first c tokens, c uniform in 1..T-1 (a clean context)."""
    with_context = torch.rand(B, **draw) < q
    length = 1 + (torch.rand(B, **draw, dtype=torch.float64) * (T - 1)).long().clamp(max=T - 2)
    return (torch.arange(T, device=draw["device"])[None, :] < length[:, None]) & with_context[:, None]


# -- loss weights -----------------------------------------------------------------------------


def _cumulative_snr(s: torch.Tensor, decay: float) -> torch.Tensor:
    """DF's exponential moving sum over earlier tokens, shifted by one:
    c_0 = s_0, c_t = decay c_{t-1} + (1 - decay) s_t; returns c_{t-1} at t (0 at t = 0).
    Closed form c_t = sum_{j<=t} decay^(t-j) w_j s_j with w_0 = 1, w_j = 1 - decay, as one matmul."""
    T = s.shape[-1]
    t = torch.arange(T, device=s.device)
    lag = t[:, None] - t[None, :]
    w = torch.full((T,), 1.0 - decay, dtype=s.dtype, device=s.device)
    w[0] = 1.0
    kernel = torch.where(lag >= 0, torch.tensor(decay, dtype=s.dtype, device=s.device) ** lag.clamp_min(0), 0.0) * w
    c = torch.einsum("bj,tj->bt", s, kernel)
    return F.pad(c[:, :-1], (1, 0), value=0.0)


def loss_weights(
    weighting: str,
    k: torch.Tensor,
    schedule: str,
    prediction: str,
    snr_clip: float,
    fused_snr_decay: float,
) -> torch.Tensor:
    """Per-token loss weights (B, T) for noise levels k (B, T), dtype of k.

    - ``none``: 1.
    - ``min_snr`` (Hang et al. 2023, eq. 8 and its eps / v forms): with gamma = ``snr_clip``,
      eps: min(snr, gamma) / snr, x0: min(snr, gamma), v: min(snr, gamma) / (snr + 1).
    - ``fused_snr`` (DF App. B.1; checked against the authors' ``compute_loss_weights``): a token's
      SNR is fused with an exponentially decayed sum of the SNRs of the tokens before it, so a token
      whose past is already almost clean counts as easier. With s_t = min(snr_t, gamma) / gamma,
      n_t = snr_t / gamma and c_t the moving sum of s (see :func:`_cumulative_snr`),
      clipped_fused_t = 1 - (1 - decay c_{t-1}) (1 - s_t), fused_t = 1 - (1 - decay c_{t-1}) (1 - n_t),
      then the min-SNR conversion with min(snr, gamma) -> gamma clipped_fused and snr -> gamma fused.
      With decay = 0 it equals ``min_snr``.

    Clean tokens (k = 0, snr = inf) get weight 0 for eps / v and gamma for x0; they normally carry
    no loss anyway.
    """
    _check_choice("weighting", weighting, WEIGHTINGS)
    check_schedule(schedule)
    check_prediction(prediction)
    gamma = _check_real("snr_clip", snr_clip, 0.0, math.inf, hi_open=True)
    if gamma <= 0:
        raise ConfigError(f"diffusion.snr_clip: expected a number > 0, got {snr_clip!r}")
    decay = _check_real("fused_snr_decay", fused_snr_decay, 0.0, 1.0, hi_open=True)
    if k.dim() != 2:
        raise ConfigError(f"noise levels: expected shape (batch, tokens), got {tuple(k.shape)}")
    if weighting == "none":
        return torch.ones_like(k)

    # Float64 where available: snr ~ 1e4 near k = 0 loses digits in float32.
    work = torch.float32 if k.device.type == "mps" else torch.float64
    ratio = snr(schedule, k.to(work))
    clipped = ratio.clamp(max=gamma)
    if weighting == "fused_snr":
        s, n = clipped / gamma, ratio / gamma
        past = 1 - decay * _cumulative_snr(s, decay)
        clipped = gamma * (1 - past * (1 - s))
        ratio = gamma * (1 - past * (1 - n))
    if prediction == "eps":
        w = clipped / ratio
    elif prediction == "x0":
        w = clipped
    else:  # v
        w = clipped / (ratio + 1)
    return w.to(k.dtype)


# -- the loss ---------------------------------------------------------------------------------


@dataclass
class LossOutput:
    """``loss``: scalar weighted mean over tokens with a loss; ``token_loss`` (B, T): detached unweighted
    per-token MSE; ``k`` (B, T) noise levels used; ``loss_mask`` (B, T) bool tokens that got a loss;
    ``logs``: what the trainer logs (:class:`DiffusionLoss` fills it)."""

    loss: torch.Tensor
    token_loss: torch.Tensor
    k: torch.Tensor
    loss_mask: torch.Tensor
    logs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LossSettings:
    """The loss's keys of the ``diffusion`` section (configs/config.yaml, the one home of their defaults, documents
    each; its ``schedule`` and ``prediction`` are the model's). Checked when built, each error naming its field."""

    mode: str
    timesteps: int
    weighting: str
    snr_clip: float
    fused_snr_decay: float
    clean_first_prob: float
    clean_context_prob: float
    cond_dropout: float

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, TRAINING_MODES)
        check_int("diffusion.timesteps", self.timesteps, 1)
        _check_choice("weighting", self.weighting, WEIGHTINGS)
        if _check_real("snr_clip", self.snr_clip, 0.0, math.inf, hi_open=True) <= 0:
            raise ConfigError(f"diffusion.snr_clip: expected a number > 0, got {self.snr_clip!r}")
        _check_real("fused_snr_decay", self.fused_snr_decay, 0.0, 1.0, hi_open=True)
        for name in ("clean_first_prob", "clean_context_prob", "cond_dropout"):
            _check_real(name, getattr(self, name), 0.0, 1.0)

    @classmethod
    def from_config(cls, diffusion: Mapping[str, Any]) -> LossSettings:
        """From a ``diffusion`` section: every loss key is required (a missing one is named), the model's two are
        skipped, any other is refused."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in diffusion]
        if missing:
            raise ConfigError(f"diffusion.{missing[0]}: missing; configs/config.yaml sets every diffusion key")
        unknown = sorted(set(diffusion) - set(names) - {"schedule", "prediction"})
        if unknown:
            raise ConfigError(
                f"diffusion: unknown key {unknown[0]!r}; expected schedule, prediction, {', '.join(names)}"
            )
        return cls(**{n: diffusion[n] for n in names})


def _pad_with_noise(
    x0: torch.Tensor, k: torch.Tensor, loss_mask: torch.Tensor, cond: torch.Tensor | None, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tokens outside ``mask`` (B, T) become pure noise without a loss: x0 = 0, k = 1, conditions zeroed."""
    if tuple(mask.shape) != tuple(k.shape):
        raise ConfigError(f"mask: expected shape {tuple(k.shape)} matching the tokens, got {tuple(mask.shape)}")
    mask = mask.to(device=x0.device, dtype=torch.bool)
    x0 = torch.where(expand_levels(mask, x0), x0, 0.0)
    cond = None if cond is None else torch.where(expand_levels(mask, cond), cond, 0.0)
    return x0, torch.where(mask, k, 1.0), loss_mask & mask, cond


def _drop_conditions(cond: torch.Tensor | None, p_drop: float, generator: torch.Generator) -> torch.Tensor | None:
    """With probability ``p_drop`` a sequence's conditions all become zeros, the null condition that
    classifier-free guidance contrasts with (Ho & Salimans 2022; zeros, as DF's own code)."""
    if cond is None or p_drop <= 0:
        return cond
    keep = torch.rand(cond.shape[0], generator=generator, device=generator.device) >= p_drop
    return torch.where(keep.to(cond.device)[:, None, None], cond, 0.0)


def diffusion_loss(
    model: DiffusionModel,
    x0: torch.Tensor,
    settings: LossSettings,
    *,
    cond: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator,
) -> LossOutput:
    """Noise clean tokens x0 (B, T, *token_shape) per token and regress the model's output on its
    target (eps, v or x0) with the chosen weighting (DF Alg. 1), as ``settings`` say.

    ``mask`` (B, T) bool marks real tokens; padding is replaced by pure noise (x0 = 0, k = 1, its
    conditions zeroed) and gets no loss, so padded values cannot leak into the loss. ``settings.cond_dropout``:
    the probability that a sequence's conditions are all replaced by the null condition. All randomness
    comes from ``generator`` (CPU) and is moved to x0's device.
    """
    if x0.dim() < 2:
        raise ConfigError(f"tokens: expected shape (batch, tokens, *token_shape), got {tuple(x0.shape)}")
    B, T = x0.shape[:2]
    k, loss_mask = sample_noise_levels(
        settings.mode, B, T, settings.timesteps, generator=generator,
        clean_first_prob=settings.clean_first_prob, clean_context_prob=settings.clean_context_prob,
    )  # fmt: skip
    k, loss_mask = k.to(x0.device), loss_mask.to(x0.device)
    if mask is not None:
        x0, k, loss_mask, cond = _pad_with_noise(x0, k, loss_mask, cond, mask)
    cond = _drop_conditions(cond, settings.cond_dropout, generator)

    noise_dtype = torch.float64 if x0.dtype == torch.float64 else torch.float32
    eps = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=noise_dtype)
    eps = eps.to(device=x0.device, dtype=x0.dtype)

    x_t = model.add_noise(x0, k, eps)
    out = model(x_t, k, cond)
    target = model.target(x0, eps, k)
    acc = torch.float64 if x0.dtype == torch.float64 else torch.float32  # MSE in fp32 even under autocast
    token_loss = (out.to(acc) - target.to(acc)).square().reshape(B, T, -1).mean(-1)

    s = settings
    w = loss_weights(s.weighting, k, model.schedule, model.prediction, s.snr_clip, s.fused_snr_decay).to(acc)
    # where(), not a product with the mask, so tokens without a loss cannot contribute even a NaN.
    weighted = torch.where(loss_mask, w * token_loss, 0.0)
    loss = weighted.sum() / loss_mask.sum().clamp_min(1)
    return LossOutput(loss=loss, token_loss=token_loss.detach(), k=k, loss_mask=loss_mask)


#: noise-level buckets of the logged loss: [0, .2), [.2, .4), ... [.8, 1]
LEVEL_BUCKETS = 5


class DiffusionLoss:
    """The Diffusion Forcing loss as the trainer's ``loss_fn(model, batch, generator) -> LossOutput``.

    ``settings``: the loss's keys of the ``diffusion`` section (:class:`LossSettings`). ``logs`` holds the loss per
    noise-level bucket as pooled (sum, count) pairs, so a log window averages over tokens, not over steps.
    """

    def __init__(self, settings: LossSettings):
        self.settings = settings

    @classmethod
    def from_config(cls, diffusion: Mapping[str, Any]) -> DiffusionLoss:
        """The loss of a ``diffusion`` config section (its ``schedule`` and ``prediction`` are the model's)."""
        return cls(LossSettings.from_config(diffusion))

    def __call__(self, model: DiffusionModel, batch: Any, generator: torch.Generator) -> LossOutput:
        out = diffusion_loss(model, batch.x, self.settings, cond=batch.cond, mask=batch.mask, generator=generator)
        bucket = (out.k.detach().float() * LEVEL_BUCKETS).long().clamp(0, LEVEL_BUCKETS - 1)[out.loss_mask]
        values = out.token_loss.float()[out.loss_mask]
        sums = torch.zeros(LEVEL_BUCKETS, device=values.device).index_add_(0, bucket, values)
        counts = torch.zeros(LEVEL_BUCKETS, device=values.device).index_add_(0, bucket, torch.ones_like(values))
        for b in range(LEVEL_BUCKETS):
            out.logs[f"loss_by_level/{b / LEVEL_BUCKETS:.1f}-{(b + 1) / LEVEL_BUCKETS:.1f}"] = (sums[b], counts[b])
        return out

    @staticmethod
    def training_view(model: DiffusionModel, wrap: Callable[[nn.Module], nn.Module]) -> DiffusionModel:
        """The model the trainer runs the loss through: the backbone compiled and/or wrapped in DDP.

        The wrapper goes around the backbone, not the DiffusionModel, so the one network call the loss
        makes (``model(x_t, k, cond)``) passes through DDP's forward and gradients are all-reduced.
        """
        net = wrap(model.backbone)
        if net is not model.backbone:
            net.causal, net.max_tokens = model.causal, model.max_tokens  # type: ignore[assignment]  # plain attributes
        return DiffusionModel(net, model.schedule, model.prediction)
