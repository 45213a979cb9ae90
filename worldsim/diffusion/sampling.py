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
later rows predict only the tokens after them, so a cached row gets shorter as the chunk is finished. With a
causal model, and no guidance gradient taken through it, a row also stops at the last token it moves: the tokens
a pyramid still holds at full noise are not run until their turn (the same samples, fewer tokens per row).

:func:`sample` takes the ``sampling`` settings as one :class:`~worldsim.settings.SamplingSettings` (their
defaults live in configs/config.yaml) and the tensors of one call; the walk over chunks and rows is in
:mod:`worldsim.diffusion.walk`, guidance in :mod:`worldsim.diffusion.guidance`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch

from worldsim.diffusion.guidance import Guidance
from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.walk import Walk, ddim_step, row_update, walk_chunks
from worldsim.errors import ConfigError, check_int
from worldsim.settings import SAMPLERS, SamplingSettings

__all__ = ["SAMPLERS", "Guidance", "SamplingSettings", "ddim_step", "row_update", "sample"]


# ---------------------------------------------------------------------------------------------
# the arguments of one call


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


def _check_call(
    model: DiffusionModel,
    settings: SamplingSettings,
    horizon: int,
    cond: torch.Tensor | None,
    guidance: Guidance | None,
    init: torch.Tensor | None,
    init_level: float,
) -> int:
    """What the settings object cannot check alone; returns the horizon."""
    if not isinstance(settings, SamplingSettings):
        raise ConfigError(f"sampling: expected a worldsim.settings.SamplingSettings, got {type(settings).__name__}")
    if guidance is not None and not isinstance(guidance, Guidance):
        raise ConfigError(f"sampling.guidance: expected a Guidance (objective, scale, mc_samples), got {guidance!r}")
    horizon = check_int("sampling.horizon", horizon, 1)
    if settings.cfg_scale != 1 and cond is None:
        raise ConfigError("sampling.cfg_scale: classifier-free guidance needs conditions (an action-conditioned model)")
    if settings.schedule == "keyframes" and model.causal:
        raise ConfigError(
            "sampling.schedule: keyframes needs a backbone that is not causal (e.g. backbone=dit backbone.causal=false):"
            " a causal one cannot show the tokens between two keyframes the keyframe after them"
        )
    if isinstance(init_level, bool) or not isinstance(init_level, numbers.Real) or not 0 < init_level <= 1:
        raise ConfigError(f"sampling.init_level: expected a number in (0, 1], got {init_level!r}")
    if init is None and init_level != 1:
        raise ConfigError("sampling.init_level: a warm start below 1 needs init, the estimate it starts from")
    return horizon


# ---------------------------------------------------------------------------------------------
# the sampler


def sample(
    model: DiffusionModel,
    settings: SamplingSettings,
    *,
    horizon: int,
    context: torch.Tensor | None = None,
    batch_size: int | None = None,
    token_shape: Sequence[int] | None = None,
    cond: torch.Tensor | None = None,
    window: int | None = None,
    guidance: Guidance | None = None,
    init: torch.Tensor | None = None,
    init_level: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable[[dict], None] | None = None,
) -> torch.Tensor:
    """Generate ``horizon`` tokens after ``context`` as ``settings`` (the ``sampling`` section) say; returns
    (B, horizon, *token_shape).

    context: (B, Tc, *tok) clean tokens, or None (then ``batch_size`` and ``token_shape`` are needed;
    dtype/device follow the model's first floating parameter or buffer). cond: (B, Tc + horizon, cond_dim)
    aligned with [context, generated], or None. window: most tokens the model sees (default
    ``model.max_tokens``; None = unlimited). With ``settings.use_cache`` and a caching backbone, the cache is
    built once and extended per chunk when the window is unlimited, and rebuilt per chunk from the visible
    finished tokens when it is limited (the same inputs as the uncached sliding window). ``guidance``: an
    objective of the chunk's x0 prediction maximized with its scale, its gradient averaged over
    ``mc_samples`` futures (:class:`~worldsim.diffusion.guidance.Guidance`). ``settings.cfg_scale`` w_c and
    ``settings.history_guidance`` w_h: see :mod:`worldsim.diffusion.guidance`; each != 1 costs one more
    model call per row. ``init`` (B, horizon, *tok): an estimate of the tokens to generate (the previous
    plan, say); each chunk then starts from it noised to ``init_level`` instead of from pure noise, and walks
    only the rows of its matrix below that level (SDEdit, Meng et al. 2022: a warm start that costs
    ``init_level`` of the rows). All noise comes from ``generator``. callback(dict(chunk, row, start, x, k,
    x0)) is called for every row of every chunk's matrix (row 0 is the initial noise, with x0 = None).
    """
    horizon = _check_call(model, settings, horizon, cond, guidance, init, init_level)
    guided = guidance is not None and guidance.scale != 0
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
        walk = Walk(
            model, settings, guidance if guided else None, generator, callback,
            None if init is None else init.to(context), round(init_level * settings.steps),
        )  # fmt: skip
        return walk_chunks(walk, context, horizon, cond, window)
