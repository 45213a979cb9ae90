"""Guidance in the sampler: the model's prediction combined over views of the history, and a guidance gradient.

- Classifier-free guidance on the conditions (Ho & Salimans 2022) and history guidance (Song et al. 2025) run
  the model on several :class:`View` s of the finished tokens and mix the predictions with weights that sum to 1:
  full + (w_c - 1)(full - no_cond) + (w_h - 1)(full - no_history).
- A :class:`Guidance` objective's gradient is added to eps (classifier guidance, Dhariwal & Nichol 2021,
  Sec. 4.2); with ``mc_samples`` > 1 the present's gradient is averaged over sampled futures (Monte Carlo
  guidance, DF Sec. 3.4).

The gradient with respect to the noisy tokens x is, by the chain rule, grad_x J(x0_hat(x)) = (dx0_hat/dx)^T
grad_x0 J. ``gradient="model"`` computes it exactly, by a backward pass through the model (DF Sec. 3.4).
``gradient="x0"`` takes the model's Jacobian as alpha I, the exact Jacobian of the posterior mean
E[x0 | x] = alpha x when x0 is standard normal (as the tokenizer normalizes it) and x = alpha x0 + sigma eps
with alpha^2 + sigma^2 = 1: grad_x = alpha grad_x0 J, and no backward pass through the model. The objective's
gradient at a token then comes from the predictions it values, not from how later tokens' predictions would
change with it, so with a causal model a row needs only the tokens it moves (:mod:`worldsim.diffusion.walk`).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.parameterization import expand_levels
from worldsim.errors import ConfigError, check_int

# sigma is exactly 0 at k = 0; divisions by sigma are guarded with this floor (the results are unused there).
TINY = 1e-12

GRADIENTS = ("model", "x0")  # how the guidance gradient reaches the noisy tokens (the module docstring)


def randn(shape: Sequence[int], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn with ``generator`` on its own device (CPU by default), moved to ``like``."""
    device = generator.device if generator is not None else torch.device("cpu")
    z = torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return z.to(like.device)


def check_gradient(gradient: str, mc_samples: int, section: str) -> str:
    """``gradient`` is one of :data:`GRADIENTS`, and Monte Carlo guidance (``mc_samples`` > 1) has one through the
    model to average; errors name the fields of ``section`` (sampling, or planning for the planner's settings)."""
    if gradient not in GRADIENTS:
        raise ConfigError(f"{section}.guidance_gradient: expected one of {', '.join(GRADIENTS)}, got {gradient!r}")
    if gradient == "x0" and mc_samples > 1:
        raise ConfigError(
            f"{section}.mc_samples: Monte Carlo guidance averages the gradient through the model over futures; with "
            f"{section}.guidance_gradient=x0 there is none to average (got mc_samples={mc_samples})"
        )
    return gradient


@dataclass(frozen=True)
class Guidance:
    """A guidance objective ``objective(x0_hat_chunk) -> (B,)``, maximized by adding ``scale`` times its gradient
    (0 = off); ``mc_samples`` > 1 averages the gradient over that many sampled futures (DF Sec. 3.4);
    ``gradient`` is one of :data:`GRADIENTS` (the module docstring). The planner fills it from
    ``planning.guidance_scale``, ``planning.mc_samples`` and ``planning.guidance_gradient``."""

    objective: Callable[[torch.Tensor], torch.Tensor]
    scale: float
    mc_samples: int
    gradient: str = "model"

    def __post_init__(self) -> None:
        if not callable(self.objective):
            raise ConfigError(f"sampling.guidance: expected a callable objective, got {self.objective!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, numbers.Real):
            raise ConfigError(f"sampling.guidance_scale: expected a number, got {self.scale!r}")
        check_int("sampling.mc_samples", self.mc_samples, 1)
        check_gradient(self.gradient, self.mc_samples, "sampling")

    @property
    def through_model(self) -> bool:
        """Whether the gradient is taken through the model (then it depends on every token the objective values)."""
        return self.scale != 0 and self.gradient == "model"

    def with_fixed(self, fixed: torch.Tensor) -> Guidance:
        """The objective of a chunk whose first ``fixed.shape[1]`` tokens are finished and not run by the model:
        it values the whole chunk, the finished tokens (constants) followed by the prediction of the rest."""
        if fixed.shape[1] == 0:
            return self
        objective = self.objective
        return dataclasses.replace(self, objective=lambda rest: objective(torch.cat([fixed, rest], dim=1)))


@dataclass
class View:
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

    def predict(self, model: DiffusionModel, x: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) of the first ``x.shape[1]`` tokens of the chunk, ``x`` at ``k``, shown after this view's
        finished tokens."""
        cond = None if self.chunk_cond is None else self.chunk_cond[:, : x.shape[1]]
        if self.prefix is None:
            return model.predict(x, k, cond, cache=self.cache)
        px, pk, pc = self.prefix
        n = px.shape[1]
        full_cond = None if cond is None else torch.cat([pc, cond], dim=1)
        x0, eps = model.predict(torch.cat([px, x], dim=1), torch.cat([pk, k], dim=1), full_cond)
        return x0[:, n:], eps[:, n:]


def make_views(
    seen: torch.Tensor, level: torch.Tensor, cond: torch.Tensor | None, cfg_scale: float, history_guidance: float
) -> list[View]:
    """The views of the guided combination: the full one, then no conditions (``cfg_scale`` w_c != 1), then no
    history (``history_guidance`` w_h != 1: its finished tokens are shown at full noise; it gets its own ``seen``)."""
    w_cond, w_hist = cfg_scale, history_guidance
    views = [View(1.0 + (w_cond - 1) + (w_hist - 1), seen, level, cond)]
    if w_cond != 1:
        assert cond is not None, "sample() rejects cfg_scale != 1 without cond"
        views.append(View(-(w_cond - 1), seen, level, torch.zeros_like(cond)))
    if w_hist != 1:
        views.append(View(-(w_hist - 1), torch.empty_like(seen), torch.ones_like(level), cond))
    return views


def predict(
    model: DiffusionModel,
    x: torch.Tensor,
    k: torch.Tensor,
    views: Sequence[View],
    guidance: Guidance | None,
    clip_x0: float | None,
    generator: torch.Generator | None,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) for the chunk ``x`` at levels ``k``, combined over the ``views``, with the guidance
    gradient and clipping applied. ``active`` (B, c): the tokens still being denoised, among which Monte Carlo
    guidance finds the present."""

    def run(x_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(views) == 1:
            return views[0].predict(model, x_in, k)
        # The weights sum to 1, so the combination keeps x = alpha x0 + sigma eps.
        parts = [(view.weight, *view.predict(model, x_in, k)) for view in views]
        # sums of tensors over >= 2 views: never the empty sum's int 0, which typeshed's sum() allows for
        x0_mix = cast(torch.Tensor, sum(w * x0 for w, x0, _ in parts))
        eps_mix = cast(torch.Tensor, sum(w * eps for w, _, eps in parts))
        return x0_mix, eps_mix

    alpha, sigma = model.alpha_sigma(k, x)
    if guidance is None or guidance.scale == 0:
        x0, eps = run(x)
    else:
        if guidance.through_model:
            x0, eps, grad = _guidance_gradient(
                run, x, k, alpha, sigma, guidance.objective, guidance.mc_samples, generator, active
            )
        else:
            x0, eps = run(x)
            grad = alpha * _objective_gradient(guidance.objective, x0)  # dx0_hat/dx taken as alpha I
        # Classifier guidance (Dhariwal & Nichol 2021, Sec. 4.2): eps <- eps - scale sigma grad_x value(x0_hat);
        # x0 is recomputed from the guided eps: x0 = (x - sigma eps) / alpha.
        eps = eps - guidance.scale * sigma * grad
        x0 = x0 + guidance.scale * sigma**2 / alpha * grad
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = torch.where(sigma > 0, (x - alpha * x0) / sigma.clamp_min(TINY), eps)
    return x0.detach(), eps.detach()


def _objective_value(objective: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor) -> torch.Tensor:
    value = objective(x0)
    if value.shape != (x0.shape[0],):
        raise ConfigError(
            f"sampling.guidance: the objective must return shape ({x0.shape[0]},), got {tuple(value.shape)}"
        )
    return value


def _objective_gradient(objective: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor) -> torch.Tensor:
    """grad_x0 J(x0): the objective's gradient at the prediction itself (no pass through the model)."""
    with torch.enable_grad():
        x0 = x0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(_objective_value(objective, x0).sum(), x0, allow_unused=True)
    return torch.zeros_like(x0) if g is None else g


def _guidance_gradient(
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    k: torch.Tensor,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    mc_samples: int,
    generator: torch.Generator | None,
    active: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's (x0, eps) at ``x`` and grad_x of the objective's value of its x0 prediction.

    Monte Carlo guidance (DF Sec. 3.4) for ``mc_samples`` > 1. Among the chunk's tokens that are still
    being denoised (``active``, (B, c)), the least noisy are the present and the noisier ones (k above the present's)
    the uncertain future; finished tokens are neither, whatever level they are shown at. Besides the actual x,
    ``mc_samples - 1`` other futures are drawn at the same levels from the model's prediction,
    q(x_k | x0_hat) = alpha_k x0_hat + sigma_k z. The present tokens get the gradient averaged over all
    ``mc_samples`` futures, (1/N) sum_n grad_present J(x0_hat(present, future_n)); every other token keeps the
    gradient it has in the actual x (the future tokens' own).
    """

    def gradient(
        replace: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, eps, grad_x J) at x; with ``replace`` = (mask, values) the masked entries of x are set to
        ``values`` (held fixed)."""
        with torch.enable_grad():
            x_in = x.detach().clone().requires_grad_(True)
            x_r = x_in if replace is None else torch.where(replace[0], replace[1], x_in)
            x0, eps = run(x_r)
            (g,) = torch.autograd.grad(_objective_value(objective, x0).sum(), x_in, allow_unused=True)
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
        other = alpha * x0 + sigma * randn(x.shape, generator, x)
        total += gradient((future, other))[2]
    return x0, eps, torch.where(present, total / mc_samples, plain)
