"""The walk of :func:`worldsim.diffusion.sampling.sample` over chunks and over the rows of their scheduling
matrices (DF Alg. 2): per row the guided prediction of the chunk and :func:`row_update`, a pure function of the
chunk, the prediction and the one settings object; per chunk the finished tokens shown to the model (the views'
cache or prefix, see :mod:`worldsim.diffusion.guidance`). The module docstring of
:mod:`worldsim.diffusion.sampling` describes the algorithm.

A row predicts the tokens after the chunk's finished ones, up to the last token it moves (a != b) when nothing
depends on the predictions of the tokens after it: the model is causal (its prediction of a token depends only on
the tokens up to it) and no guidance gradient is taken through the model. The tokens after the last one moved keep
their x (row_update leaves a == b unchanged), so the walk is the same, and a pyramid's early rows, which move only
its first tokens, cost a few tokens each instead of the whole chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worldsim.diffusion.guidance import TINY, Guidance, View, make_views, predict, randn
from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.parameterization import expand_levels
from worldsim.diffusion.scheduling import scheduling_matrix, start_at
from worldsim.errors import ConfigError, check_int
from worldsim.settings import SamplingSettings


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
    s = eta * sigma_b / sigma_a.clamp_min(TINY) * (1 - (alpha_a / alpha_b) ** 2).clamp_min(0).sqrt()
    x_b = alpha_b * x0 + (sigma_b**2 - s**2).clamp_min(0).sqrt() * eps
    if noise is not None:
        x_b = x_b + s * noise
    return x_b


def step_eta(settings: SamplingSettings) -> float:
    """The DDIM stochasticity of a step: ``eta``, or 1 for the ddpm sampler (its ancestral step)."""
    return 1.0 if settings.sampler == "ddpm" else settings.eta


def row_update(
    model: DiffusionModel,
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    settings: SamplingSettings,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """One row of the scheduling matrix: every token of the chunk ``x`` (B, c, *tok) moves from noise index
    ``a`` to ``b`` (B, c), given the model's (guided) prediction ``x0``, ``eps``: unchanged where a == b, the
    prediction where b == 0, else a DDIM step (eq. 12) with ``noise`` z (None when eta = 0). Pure."""
    steps, eta = settings.steps, step_eta(settings)
    alpha_a, sigma_a = model.alpha_sigma_at(a, steps, x)
    alpha_b, sigma_b = model.alpha_sigma_at(b, steps, x)
    stepped = ddim_step(x, x0, eps, alpha_a, sigma_a, alpha_b, sigma_b, eta, noise)
    out = torch.where(expand_levels(b == 0, x), x0, stepped)
    return torch.where(expand_levels(a == b, x), x, out)


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


def _checked_cond(cond: torch.Tensor | None, batch: int, total: int, device: torch.device) -> torch.Tensor | None:
    if cond is None:
        return None
    if cond.dim() < 3 or cond.shape[0] != batch or cond.shape[1] != total:
        raise ConfigError(
            f"sampling.cond: expected shape ({batch}, context + horizon = {total}, cond_dim), got {tuple(cond.shape)}"
        )
    return cond.to(device)


@dataclass(frozen=True)
class Walk:
    """What one call of :func:`worldsim.diffusion.sampling.sample` fixes for every chunk and row."""

    model: DiffusionModel
    settings: SamplingSettings
    guidance: Guidance | None  # None: unguided (also for a scale of 0)
    generator: torch.Generator | None
    callback: Callable[[dict], None] | None
    init: torch.Tensor | None  # warm start: (B, horizon, *tok), the estimate each chunk starts from
    init_index: int  # ... noised to this noise index, round(init_level * steps)

    @property
    def moved_only(self) -> bool:
        """Whether a row needs the predictions of the tokens it moves only (the module docstring)."""
        return self.model.causal and (self.guidance is None or not self.guidance.through_model)

    def noise(self, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
        return randn(shape, self.generator, like)


@dataclass
class _Chunk:
    """The chunk of ``c`` tokens from sequence index ``start`` being denoised: its matrix of noise indices
    (rows, c), their ``levels``, the finished leading tokens of each row (``leads``), the end of the tokens each
    row predicts (``ends``), the stabilization level
    ``shown`` (B, c) and the ``stable`` noise its finished tokens are shown with, and ``lead``, how many of its
    first tokens are committed to the views so far."""

    views: list[View]
    start: int
    c: int
    matrix: torch.Tensor
    levels: torch.Tensor
    leads: list[int]
    ends: list[int]
    shown: torch.Tensor
    stable: torch.Tensor | None
    lead: int = 0

    def commit_leads(self, model: DiffusionModel, x_in: torch.Tensor, k_a: torch.Tensor, m: int) -> int:
        """Before row m: the chunk's newly finished leading tokens join the finished tokens before it (committed to
        the cache, or appended to the prefix), so later rows predict only the tokens after them: the model sees the
        same input, a cached row runs fewer tokens, and the objective reads the finished tokens as they are."""
        new = self.leads[m - 1]
        if new > self.lead:
            lo, hi, end = self.start + self.lead, self.start + new, self.start + self.c
            for view in self.views:
                view.commit(model, x_in[:, self.lead : new], k_a[:, self.lead : new], lo, hi, end)
            self.lead = new
        return self.lead


def _finished_leads(rows: np.ndarray) -> list[int]:
    """For each row of a scheduling matrix (rows, c): how many of its leading tokens are finished (index 0)."""
    return [int(n) for n in np.cumprod(rows == 0, axis=1).sum(axis=1)]


def _moved_ends(rows: np.ndarray) -> list[int]:
    """For each step between two rows of a scheduling matrix (rows, c): one past the last token it moves (0: none)."""
    c = rows.shape[1]
    return [int(c - np.argmax(m[::-1])) if m.any() else 0 for m in rows[1:] != rows[:-1]]


def _shown(
    model: DiffusionModel, x: torch.Tensor, a: torch.Tensor, k_a: torch.Tensor, level: torch.Tensor, stable: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk as the model sees it at noise indices ``a``: tokens finished inside the chunk (a == 0) are shown
    as the finished tokens before it are, noised once (``stable``, fresh noise) to the stabilization ``level`` and
    labelled with it, not clean at k = 0 (DF Sec. 3.4)."""
    if stable is None or not bool((a == 0).any()):
        return x, k_a
    done = (a == 0).expand(x.shape[0], x.shape[1])
    x_in = torch.where(expand_levels(done, x), model.add_noise(x, level, stable), x)
    return x_in, torch.where(done, level, k_a)


def _denoise_row(walk: Walk, chunk: _Chunk, x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row m of the chunk's matrix (DF Alg. 2): the guided prediction of the tokens not yet finished, then
    :func:`row_update`; returns (x, x0)."""
    model, s = walk.model, walk.settings
    a, b = chunk.matrix[m - 1], chunk.matrix[m]
    B, c = x.shape[0], x.shape[1]
    x_in, k_a = _shown(model, x, a, chunk.levels[m - 1].expand(B, c), chunk.shown, chunk.stable)
    lead = chunk.commit_leads(model, x_in, k_a, m)
    end = max(lead, chunk.ends[m - 1]) if walk.moved_only else c
    guidance = None if walk.guidance is None else walk.guidance.with_fixed(x[:, :lead])
    active = (a[lead:end] > 0).expand(B, end - lead)
    x0, eps = x[:, lead:end], torch.zeros_like(x[:, lead:end])
    if end > lead:
        x0, eps = predict(
            model, x_in[:, lead:end], k_a[:, lead:end], chunk.views, guidance, s.clip_x0, walk.generator, active
        )
    # the finished tokens and those after the last one moved keep x (row_update leaves them as they are)
    x0 = torch.cat([x[:, :lead], x0, x[:, end:]], dim=1)
    eps = torch.cat([torch.zeros_like(x[:, :lead]), eps, torch.zeros_like(x[:, end:])], dim=1)
    noise = walk.noise(x.shape, x) if step_eta(s) > 0 else None
    return row_update(model, x, x0, eps, a.expand(B, c), b.expand(B, c), s, noise), x0


def _first_row(walk: Walk, shape: tuple[int, ...], offset: int, like: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """The chunk's scheduling matrix and its first x (``shape`` (B, c, *tok)): pure noise, or with a warm start
    the estimate noised to its start index, q(x_k | init), and only the matrix's rows below it (SDEdit)."""
    s, (B, c) = walk.settings, shape[:2]
    rows = scheduling_matrix(s.schedule, c, s.steps, s.uncertainty_scale, s.keyframe_stride)
    x = walk.noise(shape, like)
    if walk.init is None:
        return rows, x
    index = max(1, min(s.steps, walk.init_index))
    first = torch.full((B, c), index / s.steps, dtype=x.dtype, device=x.device)
    return start_at(rows, index), walk.model.add_noise(walk.init[:, offset : offset + c], first, x)


def _denoise_chunk(walk: Walk, views: list[View], index: int, start: int, offset: int, c: int) -> torch.Tensor:
    """Tokens start..start + c (``offset`` among the generated ones), the ``index``-th chunk: walk its matrix."""
    seen = views[0].seen
    B = seen.shape[0]
    rows, x = _first_row(walk, (B, c, *seen.shape[2:]), offset, seen)
    matrix = torch.as_tensor(rows, device=seen.device)
    levels = matrix.to(x.dtype) / walk.settings.steps
    report = dict(chunk=index, start=offset)
    if walk.callback is not None:
        walk.callback(dict(report, row=0, x=x, k=levels[0].expand(B, c), x0=None))
    stable = walk.noise(x.shape, x) if walk.settings.stabilization_level > 0 else None
    leads, ends = _finished_leads(rows), _moved_ends(rows)
    chunk = _Chunk(views, start, c, matrix, levels, leads, ends, views[0].level[:, :c], stable)
    for m in range(1, matrix.shape[0]):
        x, x0 = _denoise_row(walk, chunk, x, m)
        if walk.callback is not None:
            walk.callback(dict(report, row=m, x=x, k=levels[m].expand(B, c), x0=x0))
    return x


def _finish(walk: Walk, views: list[View], out: torch.Tensor, start: int, x: torch.Tensor) -> None:
    """Tokens start.. are finished as ``x``: kept clean in ``out`` and shown to the model, in each view's
    ``seen``, noised once with fresh noise to the stabilization level (DF Sec. 3.4); the history-free view of
    history guidance sees them at full noise."""
    model, end = walk.model, start + x.shape[1]
    out[:, start:end] = x
    if walk.settings.stabilization_level > 0:
        x = model.add_noise(x, views[0].level[:, : x.shape[1]], walk.noise(x.shape, x))
    views[0].seen[:, start:end] = x
    if walk.settings.history_guidance != 1:
        hidden = views[-1]
        hidden.seen[:, start:end] = model.add_noise(x, hidden.level[:, : x.shape[1]], walk.noise(x.shape, x))


def _cache_of(model: DiffusionModel, view: View, lo: int, hi: int) -> Any:
    """A cache holding the view's finished tokens lo..hi."""
    cache = model.init_cache(view.seen.shape[0])
    if hi > lo:
        cache = model.append(cache, view.seen[:, lo:hi], view.level[:, lo:hi], view.cond_at(lo, hi))
    return cache


def _show_finished(
    views: list[View], model: DiffusionModel, lo: int, start: int, c: int, cached: bool, rebuild: bool
) -> None:
    """Before the chunk start..start + c: each view shows the finished tokens lo..start, in a cache (``rebuild``:
    built anew from them, for a limited window) or as a prefix of every row's input (uncached)."""
    for view in views:
        if rebuild:
            view.cache = _cache_of(model, view, lo, start)
        view.prefix = None if cached else (view.seen[:, lo:start], view.level[:, lo:start], view.cond_at(lo, start))
        view.chunk_cond = view.cond_at(start, start + c)


class ChunkLoop:
    """The loop of DF Alg. 2 over chunks, one chunk per :meth:`next`: :func:`walk_chunks` runs it to a known
    horizon, :class:`worldsim.diffusion.stream.Stream` one chunk at a time as the chunks' conditions arrive.

    ``out`` (B, capacity, *tok) holds the clean tokens from sequence index ``base`` on (the context first), each
    view's ``seen`` what the model is shown for them; ``start`` is the next chunk's index in the buffer.
    :meth:`make_room` keeps only the finished tokens the model can still be shown when the buffer is full."""

    def __init__(
        self, walk: Walk, context: torch.Tensor, capacity: int, cond: torch.Tensor | None, window: int | None
    ) -> None:
        model, s = walk.model, walk.settings
        B, n_ctx = context.shape[0], context.shape[1]
        self.walk, self.window = walk, _resolve_window(model, window)
        self.cached = s.use_cache and model.supports_cache
        self.grow = self.cached and self.window is None  # one cache, extended per chunk (else rebuilt, or none)
        self.out = context.new_empty((B, capacity, *context.shape[2:]))
        level = torch.full((B, capacity), s.stabilization_level, dtype=context.dtype, device=context.device)
        self.views = make_views(context.new_empty(self.out.shape), level, cond, s.cfg_scale, s.history_guidance)
        _finish(walk, self.views, self.out, 0, context)
        if self.grow:
            for view in self.views:
                view.cache = _cache_of(model, view, 0, n_ctx)
        self.start, self.index, self.generated = n_ctx, 0, 0

    def next(self, c: int) -> torch.Tensor:
        """Denoise the next ``c`` tokens (their conditions already in the views' ``cond``) and finish them."""
        walk, views, start = self.walk, self.views, self.start
        lo = 0 if self.window is None else max(0, start - (self.window - c))  # first visible finished token
        _show_finished(views, walk.model, lo, start, c, self.cached, rebuild=self.cached and not self.grow)
        bases = [view.cache for view in views]  # the caches of the chunk's start: the whole chunk joins them at its end
        x = _denoise_chunk(walk, views, self.index, start, self.generated, c)
        _finish(walk, views, self.out, start, x)
        if self.grow:
            for view, base in zip(views, bases, strict=True):
                view.cache = walk.model.append(base, view.seen[:, start : start + c], view.level[:, start : start + c],
                                               view.cond_at(start, start + c))  # fmt: skip
        self.start, self.index, self.generated = start + c, self.index + 1, self.generated + c
        return x

    def make_room(self, c: int) -> None:
        """Before a chunk of ``c`` tokens that does not fit: move the finished tokens the model can still be shown
        (none with a growing cache, the last window otherwise) to the front of the buffer, or enlarge it."""
        capacity = self.out.shape[1]
        if self.start + c <= capacity:
            return
        keep = 0 if self.grow else (self.start if self.window is None else min(self.start, self.window - 1))
        if keep + c > capacity:  # an unlimited uncached window shows every finished token: the buffer grows
            self._resize(max(2 * capacity, keep + c))
            return
        lo = self.start - keep
        tensors = {id(t): t for t in [self.out, *(v.seen for v in self.views), *(v.cond for v in self.views)]
                   if t is not None}  # fmt: skip
        for t in tensors.values():
            t[:, :keep] = t[:, lo : self.start].clone()
        self.start = keep

    def _resize(self, capacity: int) -> None:
        def grown(t: torch.Tensor) -> torch.Tensor:
            new = t.new_zeros((t.shape[0], capacity, *t.shape[2:]))
            new[:, : t.shape[1]] = t
            return new

        copies: dict[int, torch.Tensor] = {}  # tensors the views share stay shared
        self.out = grown(self.out)
        for view in self.views:
            view.seen = copies.setdefault(id(view.seen), grown(view.seen))
            view.level = copies.setdefault(id(view.level), grown(view.level).fill_(view.level[0, 0].item()))
            view.cond = None if view.cond is None else copies.setdefault(id(view.cond), grown(view.cond))


def walk_chunks(
    walk: Walk, context: torch.Tensor, horizon: int, cond: torch.Tensor | None, window: int | None
) -> torch.Tensor:
    """The ``horizon`` tokens after ``context``, chunk after chunk (the loop of DF Alg. 2 over chunks)."""
    B, n_ctx = context.shape[0], context.shape[1]
    total = n_ctx + horizon
    cond = _checked_cond(cond, B, total, context.device)
    loop = ChunkLoop(walk, context, total, cond, window)
    chunk = _resolve_chunk(walk.settings.chunk_size, horizon, n_ctx, loop.window)
    while loop.start < total:
        loop.next(min(chunk, total - loop.start))
    return loop.out[:, n_ctx:]
