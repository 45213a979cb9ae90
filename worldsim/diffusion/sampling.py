"""Diffusion Forcing samplers: walk a scheduling matrix over chunks of tokens (DF Alg. 2).

The sequence is generated ``chunk_size`` tokens at a time after the clean ``context``. Each chunk
starts as pure noise and walks the rows of ``scheduling_matrix(schedule, chunk, steps, u)``; between
two rows every token moves from index a to index b (level k = index / steps):

- a == b: unchanged;
- b == 0: it becomes the model's x0 prediction (so index 0 is exactly the prediction);
- else: one DDIM step with stochasticity ``eta`` (Song et al. 2021, eq. 12); "ddpm" is eta = 1, the
  ancestral step that samples the posterior q(x_b | x_a, x0_hat) (Ho et al. 2020, eq. 7).

Finished tokens (the context and completed chunks) are shown to the model again at the
``stabilization_level`` (DF Sec. 3.4: noised once with fresh noise, and labelled with that level).
The model sees at most ``window`` tokens: without a cache the input is the most recent finished
tokens followed by the chunk (a sliding window); with a cache the finished tokens are committed once
through ``model.append`` and each row runs only the chunk. A pyramid finishes a chunk's first tokens
first: once finished they join the finished tokens before the chunk (in the cache or the prefix) and
later rows predict only the tokens after them, so a cached row gets shorter as the chunk is finished.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.parameterization import expand_levels
from worldsim.diffusion.scheduling import scheduling_matrix, start_at
from worldsim.errors import ConfigError, check_int

SAMPLERS = ("ddim", "ddpm")

# sigma is exactly 0 at k = 0; divisions by sigma are guarded with this floor (the results are unused there).
_TINY = 1e-12


def ddim_step(
    x_a: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    alpha_a: torch.Tensor,
    sigma_a: torch.Tensor,
    alpha_b: torch.Tensor,
    sigma_b: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM step from level a to a less noisy level b, in alpha/sigma form (Song et al. 2021, eq. 12):

        x_b = alpha_b x0 + sqrt(sigma_b^2 - s^2) eps + s z,   s = eta sigma_b / sigma_a sqrt(1 - alpha_a^2 / alpha_b^2)

    (eq. 16 with alpha_bar = alpha^2). With eta = 1, s^2 is the variance of the DDPM posterior
    q(x_b | x_a, x0) and the mean is its mean when eps = (x_a - alpha_a x0) / sigma_a. ``noise`` is z
    (None = 0); ``x_a`` is not needed by the formula and is accepted for symmetry with the posterior.
    """
    del x_a
    s = eta * sigma_b / sigma_a.clamp_min(_TINY) * (1 - (alpha_a / alpha_b) ** 2).clamp_min(0).sqrt()
    x_b = alpha_b * x0 + (sigma_b**2 - s**2).clamp_min(0).sqrt() * eps
    if noise is not None:
        x_b = x_b + s * noise
    return x_b


# ---------------------------------------------------------------------------------------------
# argument handling


def _randn(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn with ``generator`` on its own device (CPU by default), moved to ``like``."""
    device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return z.to(like.device)


def _model_device_dtype(model: DiffusionModel) -> tuple[torch.device, torch.dtype]:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _empty_context(
    model: DiffusionModel,
    context: torch.Tensor | None,
    batch_size: int | None,
    token_shape: Sequence[int] | None,
) -> torch.Tensor:
    """The context as a (B, Tc, *tok) tensor (Tc may be 0), checked against batch_size / token_shape."""
    if context is None:
        if batch_size is None or token_shape is None:
            raise ConfigError("sampling: without a context, batch_size and token_shape are required")
        device, dtype = _model_device_dtype(model)
        batch_size = check_int("sampling.batch_size", batch_size, 1)
        return torch.zeros((batch_size, 0, *tuple(token_shape)), device=device, dtype=dtype)
    if context.dim() < 3:
        raise ConfigError(f"sampling.context: expected (B, T, *token_shape), got shape {tuple(context.shape)}")
    if batch_size is not None and batch_size != context.shape[0]:
        raise ConfigError(f"sampling.batch_size: {batch_size} does not match the context's batch {context.shape[0]}")
    if token_shape is not None and tuple(token_shape) != tuple(context.shape[2:]):
        raise ConfigError(
            f"sampling.token_shape: {tuple(token_shape)} does not match the context's tokens {tuple(context.shape[2:])}"
        )
    return context


def _resolve_window(model: DiffusionModel, window: int | None) -> int | None:
    limit = model.max_tokens
    if window is None:
        return limit
    window = check_int("sampling.window", window, 1)
    if limit is not None and window > limit:
        raise ConfigError(f"sampling.window: {window} exceeds the backbone's max_tokens {limit}")
    return window


def _resolve_chunk(chunk_size: int | None, horizon: int, n_context: int, window: int | None) -> int:
    """Default: the whole horizon when context + horizon fit in the window; otherwise half the window,
    so that every chunk still sees the most recent half window of finished tokens."""
    if chunk_size is None:
        if window is None or n_context + horizon <= window:
            return horizon
        return min(horizon, max(1, window // 2))
    chunk_size = check_int("sampling.chunk_size", chunk_size, 1)
    if window is not None and chunk_size > window:
        raise ConfigError(f"sampling.chunk_size: {chunk_size} exceeds the window of {window} tokens")
    return min(chunk_size, horizon)


# ---------------------------------------------------------------------------------------------
# one row


def _predict(
    model: DiffusionModel,
    x: torch.Tensor,
    k: torch.Tensor,
    views: Sequence[_View],
    guidance: Callable[[torch.Tensor], torch.Tensor] | None,
    guidance_scale: float,
    clip_x0: float | None,
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) for the chunk ``x`` at levels ``k``, combined over the ``views`` (see
    :class:`_View`: the model's prediction with and without conditions or history, weighted for
    classifier-free / history guidance). Applies classifier guidance and clipping. ``active`` (B, c):
    the tokens still being denoised (default k > 0), among which Monte Carlo guidance finds the present."""

    def run_view(view: _View, x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if view.prefix is None:
            return model.predict(x_in, k, view.chunk_cond, cache=view.cache)
        px, pk, pc = view.prefix
        n = px.shape[1]
        full_cond = None if view.chunk_cond is None else torch.cat([pc, view.chunk_cond], dim=1)
        x0, eps = model.predict(torch.cat([px, x_in], dim=1), torch.cat([pk, k], dim=1), full_cond)
        return x0[:, n:], eps[:, n:]

    def run(x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(views) == 1:
            return run_view(views[0], x_in)
        # The weights sum to 1, so the combination keeps x = alpha x0 + sigma eps.
        parts = [(view.weight, *run_view(view, x_in)) for view in views]
        # sums of tensors over >= 2 views: never the empty sum's int 0, which typeshed's sum() allows for
        x0_mix = cast(torch.Tensor, sum(w * x0 for w, x0, _ in parts))
        eps_mix = cast(torch.Tensor, sum(w * eps for w, _, eps in parts))
        return x0_mix, eps_mix

    alpha, sigma = model.alpha_sigma(k, x)
    if guidance is None or guidance_scale == 0:
        x0, eps = run(x)
    else:
        active = k > 0 if active is None else active
        x0, eps, grad = _guidance_gradient(run, x, k, alpha, sigma, guidance, mc_samples, generator, active)
        # Classifier guidance (Dhariwal & Nichol 2021, Sec. 4.2): eps <- eps - scale sigma grad_x value(x0_hat);
        # x0 is recomputed from the guided eps: x0 = (x - sigma eps) / alpha.
        eps = eps - guidance_scale * sigma * grad
        x0 = x0 + guidance_scale * sigma**2 / alpha * grad
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = torch.where(sigma > 0, (x - alpha * x0) / sigma.clamp_min(_TINY), eps)
    return x0.detach(), eps.detach()


def _guidance_gradient(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    k: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    guidance: Callable[[torch.Tensor], torch.Tensor],
    mc_samples: int,
    generator: torch.Generator | None,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's (x0, eps) at ``x`` and grad_x of the guidance value of its x0 prediction.

    Monte Carlo guidance (DF Sec. 3.4) for ``mc_samples`` > 1. Among the chunk's tokens that are still
    being denoised (``active``, (B, c)), the least noisy are the present and the noisier ones (k above the present's)
    the uncertain future; finished tokens are neither, whatever level they are shown at. Besides the actual x,
    ``mc_samples - 1`` other futures are drawn at the same levels from the model's prediction,
    q(x_k | x0_hat) = alpha_k x0_hat + sigma_k z. The present tokens get the gradient averaged over all
    ``mc_samples`` futures, (1/N) sum_n grad_present J(x0_hat(present, future_n)); every other token keeps the
    gradient it has in the actual x (the future tokens' own).
    """
    B = x.shape[0]

    def value_of(x0: torch.Tensor) -> torch.Tensor:
        value = guidance(x0)
        if value.shape != (B,):
            raise ConfigError(f"sampling.guidance: the objective must return shape ({B},), got {tuple(value.shape)}")
        return value

    def gradient(
        replace: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, eps, grad_x J) at x; with ``replace`` = (mask, values) the masked entries of x are set to
        ``values`` (held fixed)."""
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            x_r = x_in if replace is None else torch.where(replace[0], replace[1], x_in)
            x0, eps = run(x_r)
            (g,) = torch.autograd.grad(value_of(x0).sum(), x_in, allow_unused=True)
        return x0.detach(), eps.detach(), torch.zeros_like(x) if g is None else g

    x0, eps, plain = gradient()
    if mc_samples <= 1:
        return x0, eps, plain
    present_level = torch.where(active, k, torch.full_like(k, torch.inf)).min(dim=1, keepdim=True).values
    present = expand_levels(active & (k == present_level), x)
    # a finished token may be shown above the present's level (the stabilization level): never future
    future = expand_levels(active & (k > present_level), x)
    total = plain.clone()
    for _ in range(mc_samples - 1):
        other = alpha * x0 + sigma * _randn(x.shape, generator, x)
        total += gradient((future, other))[2]
    return x0, eps, torch.where(present, total / mc_samples, plain)


def _finished_leads(rows: np.ndarray) -> list[int]:
    """For each row of a scheduling matrix (rows, c): how many of its leading tokens are finished (index 0)."""
    return [int(n) for n in np.cumprod(rows == 0, axis=1).sum(axis=1)]


def _with_fixed(
    guidance: Callable[[torch.Tensor], torch.Tensor] | None, fixed: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The guidance objective of a chunk whose first ``fixed.shape[1]`` tokens are finished and not run by the
    model: it values the whole chunk, the finished tokens (constants) followed by the prediction of the rest."""
    if guidance is None or fixed.shape[1] == 0:
        return guidance
    return lambda rest: guidance(torch.cat([fixed, rest], dim=1))


def _row_update(
    model: DiffusionModel,
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    steps: int,
    eta: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """Move every token of the chunk from index a to index b (see the module docstring)."""
    alpha_a, sigma_a = model.alpha_sigma(a.to(x.dtype) / steps, x)
    alpha_b, sigma_b = model.alpha_sigma(b.to(x.dtype) / steps, x)
    stepped = ddim_step(x, x0, eps, alpha_a, sigma_a, alpha_b, sigma_b, eta, noise)
    out = torch.where(expand_levels(b == 0, x), x0, stepped)
    return torch.where(expand_levels(a == b, x), x, out)


# ---------------------------------------------------------------------------------------------
# the sampler


def sample(
    model: DiffusionModel,
    *,
    horizon: int,
    context: torch.Tensor | None = None,
    batch_size: int | None = None,
    token_shape: Sequence[int] | None = None,
    cond: torch.Tensor | None = None,
    sampler: str = "ddim",
    eta: float = 0.0,
    steps: int = 50,
    schedule: str = "pyramid",
    uncertainty_scale: float = 1.0,
    keyframe_stride: int = 4,
    chunk_size: int | None = None,
    stabilization_level: float = 0.0,
    window: int | None = None,
    use_cache: bool = True,
    guidance: Callable[[torch.Tensor], torch.Tensor] | None = None,
    guidance_scale: float = 0.0,
    mc_samples: int = 1,
    clip_x0: float | None = None,
    cfg_scale: float = 1.0,
    history_guidance: float = 1.0,
    init: torch.Tensor | None = None,
    init_level: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Generate ``horizon`` tokens after ``context``; returns (B, horizon, *token_shape).

        context: (B, Tc, *tok) clean tokens, or None (then ``batch_size`` and ``token_shape`` are needed;
        dtype/device follow the model's first floating parameter or buffer). cond: (B, Tc + horizon, cond_dim)
        aligned with [context, generated], or None. sampler "ddpm" always uses eta = 1 (``eta`` is ignored).
        chunk_size: tokens per chunk (default: the horizon if context + horizon fit in the window, else half
        the window). window: most tokens the model sees (default ``model.max_tokens``; None = unlimited).
        With ``use_cache`` and a caching backbone, the cache is built once and extended per chunk when the
        window is unlimited, and rebuilt per chunk from the visible finished tokens when it is limited (the
        same inputs as the uncached sliding window). guidance(x0_hat_chunk) -> (B,) is maximized with
        ``guidance_scale``; with ``mc_samples`` > 1 its gradient is averaged over that many sampled futures
    (Monte Carlo guidance, DF Sec. 3.4). ``cfg_scale`` w_c: classifier-free guidance on ``cond`` (Ho & Salimans
        2022) against the null (all-zero) condition of a model trained with ``diffusion.cond_dropout``;
        ``history_guidance`` w_h: guidance with the finished tokens against the same prediction with them at
        full noise (history guidance, Song et al. 2025; a Diffusion Forcing model is trained on both). The
        prediction is full + (w_c - 1)(full - no_cond) + (w_h - 1)(full - no_history); 1 = off, and each
        guidance costs one more model call per row. ``init`` (B, horizon, *tok): an estimate of the tokens to
        generate (the previous plan, say); each chunk then starts from it noised to ``init_level`` instead of
        from pure noise, and walks only the rows of its matrix below that level (SDEdit, Meng et al. 2022: a
        warm start that costs ``init_level`` of the rows). All noise comes from ``generator``. callback(dict(chunk, row, start, x, k, x0)) is
        called for every row of every chunk's matrix (row 0 is the initial noise, with x0 = None).
    """
    if sampler not in SAMPLERS:
        raise ConfigError(f"sampling.sampler: unknown sampler {sampler!r}; expected one of {list(SAMPLERS)}")
    if sampler == "ddpm":
        eta = 1.0
    if not isinstance(eta, numbers.Real) or eta < 0:
        raise ConfigError(f"sampling.eta: expected a number >= 0, got {eta!r}")
    if not isinstance(stabilization_level, numbers.Real) or not 0 <= stabilization_level < 1:
        raise ConfigError(f"sampling.stabilization_level: expected a number in [0, 1), got {stabilization_level!r}")
    if clip_x0 is not None and not clip_x0 > 0:
        raise ConfigError(f"sampling.clip_x0: expected a number > 0 or None, got {clip_x0!r}")
    horizon = check_int("sampling.horizon", horizon, 1)
    steps = check_int("sampling.steps", steps, 1)
    mc_samples = check_int("sampling.mc_samples", mc_samples, 1)
    for name, value in (("cfg_scale", cfg_scale), ("history_guidance", history_guidance)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not value >= 0:
            raise ConfigError(f"sampling.{name}: expected a number >= 0 (1 = off), got {value!r}")
    if cfg_scale != 1 and cond is None:
        raise ConfigError("sampling.cfg_scale: classifier-free guidance needs conditions (an action-conditioned model)")
    scheduling_matrix(schedule, 1, steps, uncertainty_scale, keyframe_stride)  # validates the schedule's settings
    if schedule == "keyframes" and model.causal:
        raise ConfigError(
            "sampling.schedule: keyframes needs a backbone that is not causal (e.g. backbone=dit backbone.causal=false):"
            " a causal one cannot show the tokens between two keyframes the keyframe after them"
        )
    if isinstance(init_level, bool) or not isinstance(init_level, numbers.Real) or not 0 < init_level <= 1:
        raise ConfigError(f"sampling.init_level: expected a number in (0, 1], got {init_level!r}")
    if init is None and init_level != 1:
        raise ConfigError("sampling.init_level: a warm start below 1 needs init, the estimate it starts from")

    guided = guidance is not None and guidance_scale != 0
    # Guidance needs autograd even when the caller runs under torch.inference_mode().
    mode = torch.inference_mode(False) if guided else nullcontext()
    with mode, torch.no_grad():
        context = _empty_context(model, context, batch_size, token_shape)
        if init is not None and tuple(init.shape) != (context.shape[0], horizon, *context.shape[2:]):
            raise ConfigError(
                f"sampling.init: expected shape {(context.shape[0], horizon, *context.shape[2:])} (B, horizon, "
                f"*token_shape), got {tuple(init.shape)}"
            )
        if guided:  # inference tensors from the caller cannot be saved for backward: take normal copies
            context = context.clone()
            cond = None if cond is None else cond.clone()
        return _sample(
            model, context, horizon, cond, eta=eta, steps=steps, schedule=schedule, u=uncertainty_scale,
            stride=keyframe_stride, chunk_size=chunk_size, k_s=float(stabilization_level), window=window, use_cache=use_cache,
            guidance=guidance if guided else None, guidance_scale=guidance_scale, mc_samples=mc_samples,
            clip_x0=clip_x0, w_cond=float(cfg_scale), w_hist=float(history_guidance), generator=generator,
            callback=callback, init=None if init is None else init.to(context), init_index=round(init_level * steps),
        )  # fmt: skip


@dataclass
class _View:
    """One way the model is shown the finished tokens: ``seen`` (B, total, *tok) at ``level`` (B, total)
    with conditions ``cond``; ``weight`` in the guided combination. Per chunk: ``cache`` or ``prefix``
    (the visible finished tokens for the uncached path) and ``chunk_cond``."""

    weight: float
    seen: torch.Tensor
    level: torch.Tensor
    cond: torch.Tensor | None
    cache: Any = None
    prefix: tuple | None = None
    chunk_cond: torch.Tensor | None = None

    def cond_at(self, lo: int, hi: int) -> torch.Tensor | None:
        return None if self.cond is None else self.cond[:, lo:hi]

    def commit(self, model: DiffusionModel, x: torch.Tensor, k: torch.Tensor, lo: int, hi: int, end: int) -> None:
        """Tokens lo..hi of the sequence, the first of the chunk that ends at ``end``, are finished: shown as
        ``x`` at ``k`` from now on, in the cache or the prefix; the chunk's conditions start at ``hi``."""
        cond = self.cond_at(lo, hi)
        if self.prefix is None:
            self.cache = model.append(self.cache, x, k, cond)
        else:
            px, pk, pc = self.prefix
            pc = None if pc is None or cond is None else torch.cat([pc, cond], 1)  # both or neither: self.cond
            self.prefix = (torch.cat([px, x], 1), torch.cat([pk, k], 1), pc)
        self.chunk_cond = self.cond_at(hi, end)


def _sample(
    model: DiffusionModel,
    context: torch.Tensor,
    horizon: int,
    cond: torch.Tensor | None,
    *,
    eta: float,
    steps: int,
    schedule: str,
    u: float,
    stride: int,
    chunk_size: int | None,
    k_s: float,
    window: int | None,
    use_cache: bool,
    guidance: Callable[[torch.Tensor], torch.Tensor] | None,
    guidance_scale: float,
    mc_samples: int,
    clip_x0: float | None,
    w_cond: float,
    w_hist: float,
    generator: torch.Generator | None,
    callback: Callable[[dict], None] | None,
    init: torch.Tensor | None = None,
    init_index: int = 0,
) -> torch.Tensor:
    B, n_ctx, tok = context.shape[0], context.shape[1], tuple(context.shape[2:])
    total = n_ctx + horizon
    if cond is not None:
        if cond.dim() < 3 or cond.shape[0] != B or cond.shape[1] != total:
            raise ConfigError(
                f"sampling.cond: expected shape ({B}, context + horizon = {total}, cond_dim), got {tuple(cond.shape)}"
            )
        cond = cond.to(context.device)
    window = _resolve_window(model, window)
    chunk = _resolve_chunk(chunk_size, horizon, n_ctx, window)
    cached = use_cache and model.supports_cache

    # out: clean tokens; seen: what the model is shown for finished tokens (noised once to k_s).
    out = context.new_empty((B, total, *tok))
    seen = context.new_empty((B, total, *tok))
    level_s = torch.full((B, total), k_s, dtype=context.dtype, device=context.device)
    views = [_View(1.0 + (w_cond - 1) + (w_hist - 1), seen, level_s, cond)]
    if w_cond != 1:
        assert cond is not None, "sample() rejects cfg_scale != 1 without cond"
        views.append(_View(-(w_cond - 1), seen, level_s, torch.zeros_like(cond)))
    if w_hist != 1:
        views.append(_View(-(w_hist - 1), torch.empty_like(seen), torch.ones_like(level_s), cond))

    def finish(start: int, x: torch.Tensor) -> None:
        out[:, start : start + x.shape[1]] = x
        if k_s > 0:
            x = model.add_noise(x, level_s[:, : x.shape[1]], _randn(x.shape, generator, x))
        seen[:, start : start + x.shape[1]] = x
        if w_hist != 1:  # the history-free view sees the finished tokens at full noise
            hidden = views[-1]
            hidden.seen[:, start : start + x.shape[1]] = model.add_noise(
                x, hidden.level[:, : x.shape[1]], _randn(x.shape, generator, x)
            )

    def build_cache(view: _View, lo: int, hi: int) -> Any:
        cache = model.init_cache(B)
        if hi > lo:
            cache = model.append(cache, view.seen[:, lo:hi], view.level[:, lo:hi], view.cond_at(lo, hi))
        return cache

    finish(0, context)
    if cached and window is None:
        for view in views:
            view.cache = build_cache(view, 0, n_ctx)

    start, index = n_ctx, 0
    while start < total:
        c = min(chunk, total - start)
        lo = 0 if window is None else max(0, start - (window - c))  # first visible finished token
        for view in views:
            if cached and window is not None:
                view.cache = build_cache(view, lo, start)
            view.prefix = None if cached else (view.seen[:, lo:start], view.level[:, lo:start], view.cond_at(lo, start))
            view.chunk_cond = view.cond_at(start, start + c)

        rows = scheduling_matrix(schedule, c, steps, u, stride)
        x = _randn((B, c, *tok), generator, context)
        if init is not None:  # warm start: q(x_k | init) at the start index, and only the rows below it
            index = max(1, min(steps, init_index))
            rows = start_at(rows, index)
            first = torch.full((B, c), index / steps, dtype=x.dtype, device=x.device)
            x = model.add_noise(init[:, start - n_ctx : start - n_ctx + c], first, x)
        matrix = torch.as_tensor(rows, device=context.device)
        levels = matrix.to(x.dtype) / steps
        report = dict(chunk=index, start=start - n_ctx)
        if callback is not None:
            callback(dict(report, row=0, x=x, k=levels[0].expand(B, c), x0=None))
        # Tokens finished inside the chunk are shown to the model as the finished tokens before it are: noised
        # once (this fresh noise) to the stabilization level and labelled with it, not clean at k = 0.
        stable = _randn(x.shape, generator, x) if k_s > 0 else None
        # The chunk's finished leading tokens join the finished tokens before it (committed to the cache, or
        # appended to the prefix) and later rows predict only the tokens after them: the model sees the same
        # input, a cached row runs fewer tokens, and the objective reads the finished tokens as they are.
        # ``bases`` keep the caches of the chunk's start, to which the whole chunk is committed at its end.
        bases, lead, leads = [view.cache for view in views], 0, _finished_leads(rows)
        for m in range(1, matrix.shape[0]):
            a, b = matrix[m - 1], matrix[m]
            x_in, k_a = x, levels[m - 1].expand(B, c)
            if stable is not None and bool((a == 0).any()):
                done = (a == 0).expand(B, c)
                x_in = torch.where(expand_levels(done, x), model.add_noise(x, level_s[:, :c], stable), x)
                k_a = torch.where(done, level_s[:, :c], k_a)
            if (new := leads[m - 1]) > lead:
                for view in views:
                    view.commit(model, x_in[:, lead:new], k_a[:, lead:new], start + lead, start + new, start + c)
                lead = new
            x0, eps = _predict(
                model, x_in[:, lead:], k_a[:, lead:], views, _with_fixed(guidance, x[:, :lead]), guidance_scale,
                clip_x0, mc_samples, generator, (a[lead:] > 0).expand(B, c - lead),
            )  # fmt: skip
            x0, eps = torch.cat([x[:, :lead], x0], dim=1), torch.cat([torch.zeros_like(x[:, :lead]), eps], dim=1)
            noise = _randn(x.shape, generator, x) if eta > 0 else None
            x = _row_update(model, x, x0, eps, a.expand(B, c), b.expand(B, c), steps, eta, noise)
            if callback is not None:
                callback(dict(report, row=m, x=x, k=levels[m].expand(B, c), x0=x0))

        finish(start, x)
        if cached and window is None:
            for view, base in zip(views, bases, strict=True):
                view.cache = model.append(
                    base,
                    view.seen[:, start : start + c],
                    view.level[:, start : start + c],
                    view.cond_at(start, start + c),
                )
        start, index = start + c, index + 1
    return out[:, n_ctx:]
