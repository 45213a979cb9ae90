"""The official Diffusion Forcing maze2d planner, one replan, reimplemented for timing only.

What this is: a benchmark-side reimplementation, in plain torch, of ONE replan of the maze2d planner
of the official Diffusion Forcing code (github.com/buoyancy99/diffusion-forcing, branch ``paper``,
read at commit dd65516). ``benchmarks/planning.py`` uses it to time the official planner next to
worldsim's own replan, with random weights (the speed does not depend on the weights). It is not part of
the worldsim package, nothing in worldsim imports it, and it is not a usable planner (no trained
weights, no normalization, no environment). The code is written anew; it keeps the official algorithmic
structure, the official formulas and the official order of operations, listed below.

Which official code each part follows (paths on the ``paper`` branch):

* ``_ResBlock1d``: ``algorithms/diffusion_forcing/models/resnet.py::ResBlock1d`` (GELU, as
  TransitionMlp builds it).
* ``_sinusoidal_embedding``: ``models/sin_emb.py::SinusoidalPosEmb`` (theta 10000).
* ``_TransitionMlp``: ``models/unet.py::TransitionMlp`` -- the vector-token network: input
  ``[z, x, time embedding]``; a time MLP (Fourier dim = embedding dim = ``network_size``); ``mlp_before_gru``
  (``num_mlp_layers - 1`` ResBlock1d of width ``32 * network_size`` then a Linear to ``z_dim``); a stack of
  ``num_gru_layers`` GRUCells whose hidden states are the chunks of the carried latent z; ``mlp_after_gru``
  (same shape); the 0- and 1-MLP-layer variants as official. It returns the next latent.
* ``OfficialTransitionModel``: ``models/diffusion_transition.py::DiffusionTransitionModel`` restricted to
  what the sampler needs: ``model`` (the TransitionMlp above) and ``x_from_z`` (a Linear z -> x) under the
  official attribute names; the beta schedules (``models/utils.py::linear_beta_schedule`` /
  ``cosine_beta_schedule``, computed in float64 then stored float32, 1000 timesteps); ``model_predictions``
  with the ``pred_x0`` objective (x0 = x_from_z(z_next), noise from ``predict_noise_from_start``);
  ``q_sample`` (noise clamped to +-clip_noise); ``ddim_sample_step`` (the time pairs rebuilt from a linspace at
  every call as official; index 0 clamps x to +-clip_noise; ``sigma = eta * sqrt(...)``,
  ``c = sqrt(1 - alpha_next - sigma^2)``, guidance constant ``(1 - alpha) - c * sqrt(1 - alpha)``, a fresh
  clamped noise draw at every step even at eta = 0, ``x = x0 * sqrt(alpha_next) + c * eps + sigma * noise``,
  x = x0 and guidance constant 0 at the last step). Defaults are the maze2d ones of
  ``configurations/algorithm/df_planning.yaml`` over ``df_base.yaml``: linear schedule, ``ddim_sampling_eta``
  0, ``clip_noise`` 20, ``num_gru_layers`` 1, ``num_mlp_layers`` 4, z 128; ``network_size`` 16 (medium,
  umaze) or 32 (large); frame_stack 10 with [obs 4, action 2] channels, so a token is 60 numbers.
* ``official_replan``: the planning part of one pass of the ``while`` loop of
  ``algorithms/diffusion_forcing/df_planning.py::DiffusionForcingPlanning.interact``: one randn tensor per
  token; the pyramid ``pyramid[m, t] = m - int(t * uncertainty_scale)`` of height
  ``sampling_timesteps + int(horizon * uncertainty_scale)``; per row m, under ``torch.enable_grad``, the z
  carried from ``z.detach()``, a Python loop over the tokens t that marks ``plan[t]`` as requiring grad, keeps
  it as ``last_plan[t]``, calls ``ddim_sample_step(plan[t], z_chunk, index=clip(pyramid[m, t], 0, S - 1))``,
  carries the returned latent to the next token, draws ``ddim_repeats - 1`` extra x0 samples (each followed by
  a ``q_sample`` back to the step's noise level) when guidance is on, and sets ``plan[t]`` to the stepped token
  when ``pyramid[m, t] < S`` or to ``plan[t].detach()`` otherwise; then (guidance on) the x0 samples are
  stacked to ``(t r b (fs c)) -> ((t fs) b r c)``, frame weights of 1 with the last one 0 (the official value
  when the plan reaches the end of the episode, true of every maze2d replan since chunk_size is the episode
  length), the objective ``-(n_frames * ||pos - goal|| * weight).sum(batch).mean()`` with ``n_frames =
  horizon * frame_stack`` and pos = channels 0:2 of every 6-channel frame, ONE ``torch.autograd.grad`` of it
  w.r.t. all ``last_plan`` tensors, and ``plan[t] = plan[t] + guidance_const[t] * grad[t] * guidance_scale``.
  As official, the graph is never cut between rows except through ``z.detach()`` and the ``detach`` above.

Where it deviates from the official code -- all of it, as far as I know:

1. No data normalization: no ``data_mean`` / ``data_std`` buffers, no ``_normalize_x`` / ``_unnormalize_x``.
   The goal distance is taken on the plan's own channels (the official unnormalizes the x0 samples first: one
   elementwise affine map per row, omitted), and ``goal`` is in the plan's space.
2. No ``init_encoder`` (the official 4 -> 128 -> 128 -> z ELU MLP that encodes the current observation; 33,664
   parameters at z 128): the replan takes the current latent ``z0`` directly. Its one call per replan happens
   before the sampling and is not timed here; ``parameter_count`` does not include it.
3. No reward channel (``use_reward`` is False in df_planning.yaml, so the official bundle is [obs, action]),
   and the official's dense-reward return, computed but unused when ``use_reward`` is False, is not computed.
4. Random weights: PyTorch default initialization under ``torch.manual_seed(seed)``; no checkpoint.
5. No environment loop: no gym / d4rl / DummyVecEnv, no env step, no context re-encoding of the trajectory
   between replans, no visualization. One call is the first replan of an episode (steps = 0) with a plan of
   ``horizon`` tokens.
6. The official appends every row's plan to ``plan_history`` (stack, rearrange, unnormalize, ``.cpu()``): one
   device-to-host copy, hence one GPU synchronization, per pyramid row. That bookkeeping, used only for
   animations, is omitted; omitting it can only make this version faster than the official one on a GPU.
7. ``sampling_timesteps`` is an argument of ``official_replan`` / ``ddim_sample_step`` instead of a fixed
   attribute of the model; the returned plan is the final stacked plan ``(horizon, B, x_dim)`` in the plan's
   space, not the unstacked, unnormalized ``((t fs), B, c)`` CPU copy the official hands to the env.
8. Only what sampling needs from DiffusionTransitionModel: no training ``forward``, losses, SNR / p2 buffers,
   posterior, ``p_sample``, ``ddim_sample``, ``rollout``; no ``pred_noise`` / ``pred_v`` objectives (maze2d uses
   ``pred_x0``), no sigmoid schedule, no self-conditioning, no external condition (both off for maze2d), no
   TransitionUnet (the image path).
9. Random numbers come from ``generator`` when given (the official uses the global RNG); the draws are the
   same in number, shape and order. einops is replaced by ``view`` / ``permute`` / ``reshape`` (same layout).
10. Defaults that differ from the official configs only in value, not in cost: ``guidance_scale`` 1.0 (the
    config default is 0, the README's validation command uses 8.0; only 0, which skips the backward pass,
    changes the work); ``ddim_repeats`` 1 (the config default 0 gives the same work: ``range(-1)`` is empty);
    ``goal`` defaults to a random point. float32 throughout (the README validates with precision 32); the
    device is the one ``z0`` is on.
11. ``OfficialTransitionModel.forward(x, t, z)`` runs TransitionMlp then ``x_from_z`` and returns
    ``(x_start, z_next)``, so that one module hook sees each network call; the official calls ``self.model``
    and ``self.x_from_z`` one after the other inside ``model_predictions``. Same operations.

Smoke run (a tiny model, one replan of 3 tokens with 5 DDIM steps): ``python benchmarks/_official_df.py``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn as nn

UNSTACKED_DIM = 6  # one maze2d frame: [x, y, vx, vy] observation then [ax, ay] action (no reward channel)
POS_DIM = 2  # the goal objective reads the first two channels of every frame


def _linear_beta_schedule(timesteps: int) -> torch.Tensor:
    scale = 1000 / timesteps
    return torch.linspace(scale * 0.0001, scale * 0.02, timesteps, dtype=torch.float64)


def _cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    t = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    alphas_cumprod = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return torch.clip(betas, 0, 0.999)


def _extract(a: torch.Tensor, t: torch.Tensor, x_shape: torch.Size) -> torch.Tensor:
    """``a[t]`` shaped to broadcast over a batch of shape ``x_shape`` (official models/utils.py::extract)."""
    return a.gather(-1, t).reshape(t.shape[0], *((1,) * (len(x_shape) - 1)))


def _sinusoidal_embedding(t: torch.Tensor, dim: int, theta: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(theta) / (half - 1)))
    arg = t[:, None] * freq[None, :]
    return torch.cat((arg.sin(), arg.cos()), dim=-1)


def _randn(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


class _SinusoidalPosEmb(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return _sinusoidal_embedding(t, self.dim)


class _ResBlock1d(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.activation = nn.GELU()
        self.mlp = nn.Sequential(nn.Linear(in_dim, out_dim), self.activation, nn.Linear(out_dim, out_dim))
        self.shortcut = nn.Identity() if in_dim == out_dim else nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.shortcut(x) + self.mlp(x))


def _mlp_stack(in_dim: int, width: int, out_dim: int, layers: int) -> nn.Sequential:
    blocks: list[nn.Module] = [_ResBlock1d(in_dim, width)]
    blocks += [_ResBlock1d(width, width) for _ in range(1, layers - 1)]
    blocks.append(nn.Linear(width, out_dim))
    return nn.Sequential(*blocks)


class _TransitionMlp(nn.Module):
    """models/unet.py::TransitionMlp without external condition and self-conditioning (both off for maze2d)."""

    def __init__(self, z_dim: int, x_dim: int, network_size: int, num_gru_layers: int, num_mlp_layers: int):
        super().__init__()
        self.z_dim, self.x_dim = z_dim, x_dim
        self.num_gru_layers, self.num_mlp_layers = num_gru_layers, num_mlp_layers
        width = network_size * 32
        emb_dim = network_size  # fourier dim = time embedding dim = network_size, as official
        input_dim = x_dim + z_dim + emb_dim
        self.time_mlp = nn.Sequential(
            _SinusoidalPosEmb(emb_dim), nn.Linear(emb_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim)
        )
        self.mlp_before_gru: nn.Module | None
        self.mlp_after_gru: nn.Module | None
        if num_mlp_layers <= 0:
            self.mlp_before_gru = self.mlp_after_gru = None
        elif num_mlp_layers == 1:
            self.mlp_before_gru = _ResBlock1d(input_dim, z_dim)
            self.mlp_after_gru = nn.Linear(z_dim, z_dim)
        else:
            self.mlp_before_gru = _mlp_stack(input_dim, width, z_dim, num_mlp_layers)
            self.mlp_after_gru = _mlp_stack(z_dim, width, z_dim, num_mlp_layers)
        self.gru_stack: nn.ModuleList | None = None
        if num_gru_layers:
            if z_dim % num_gru_layers:
                raise ValueError("z_dim must be divisible by num_gru_layers")
            hidden = z_dim // num_gru_layers
            first_in = z_dim if num_mlp_layers else input_dim
            self.gru_stack = nn.ModuleList(
                [nn.GRUCell(first_in, hidden)] + [nn.GRUCell(hidden, hidden) for _ in range(1, num_gru_layers)]
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor, z_cond: torch.Tensor) -> torch.Tensor:
        if not self.num_mlp_layers and not self.num_gru_layers:
            return z_cond
        h = torch.cat([torch.cat((z_cond, x), dim=-1), self.time_mlp(t)], -1)
        if self.mlp_before_gru is not None:
            h = self.mlp_before_gru(h)
        if self.gru_stack is not None:
            outputs = []
            for cell, z_part in zip(self.gru_stack, z_cond.chunk(self.num_gru_layers, dim=-1), strict=True):
                h = cell(h, z_part)
                outputs.append(h)
            h = torch.cat(outputs, dim=-1)
        if self.mlp_after_gru is not None:
            h = self.mlp_after_gru(h)
        return h


class OfficialTransitionModel(nn.Module):
    """DiffusionTransitionModel (vector tokens, pred_x0) as far as its DDIM sampler needs it; see the module doc."""

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        network_size: int = 16,
        num_gru_layers: int = 1,
        num_mlp_layers: int = 4,
        timesteps: int = 1000,
        beta_schedule: str = "linear",
        ddim_sampling_eta: float = 0.0,
        clip_noise: float = 20.0,
    ):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.eta, self.clip_noise = ddim_sampling_eta, clip_noise
        self.model = _TransitionMlp(z_dim, x_dim, network_size, num_gru_layers, num_mlp_layers)
        self.x_from_z = nn.Linear(z_dim, x_dim)

        if beta_schedule == "linear":
            betas = _linear_beta_schedule(timesteps)
        elif beta_schedule == "cosine":
            betas = _cosine_beta_schedule(timesteps)
        else:
            raise ValueError(f"beta_schedule must be 'linear' or 'cosine', not {beta_schedule!r}")
        self.num_timesteps = int(betas.shape[0])
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        for name, value in {
            "alphas_cumprod": alphas_cumprod,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
        }.items():
            self.register_buffer(name, value.to(torch.float32))

    def forward(self, x: torch.Tensor, t: torch.Tensor, z_cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The network: TransitionMlp then x_from_z. Returns (predicted x0, next latent)."""
        z_next = self.model(x, t, z_cond)
        return self.x_from_z(z_next), z_next

    def model_predictions(
        self, x: torch.Tensor, t: torch.Tensor, z_cond: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """pred_x0 objective: returns (pred_noise, x_start, z_next)."""
        x_start, z_next = self(x, t, z_cond)
        pred_noise = (_extract(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - x_start) / _extract(
            self.sqrt_recipm1_alphas_cumprod, t, x.shape
        )
        return pred_noise, x_start, z_next

    def time_pairs(self, sampling_timesteps: int) -> list[tuple[int, int]]:
        """[(T-1, .), ..., (., -1)]: the DDIM (time, time_next) pairs, built as the official builds them."""
        times = torch.linspace(-1, self.num_timesteps - 1, steps=sampling_timesteps + 1)
        times_list = list(reversed(times.int().tolist()))
        return list(zip(times_list[:-1], times_list[1:], strict=True))

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        noise = torch.clamp(_randn(tuple(x_start.shape), x_start, generator), -self.clip_noise, self.clip_noise)
        return (
            _extract(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def ddim_sample_step(
        self,
        x: torch.Tensor,
        z_cond: torch.Tensor,
        index: int,
        sampling_timesteps: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """One DDIM step of the official ``ddim_sample_step``; returns (x_next, z_next, x_start, guidance_const)."""
        if index == 0:
            x = torch.clamp(x, -self.clip_noise, self.clip_noise)
        batch, device = x.shape[0], self.alphas_cumprod.device
        time, time_next = self.time_pairs(sampling_timesteps)[index]
        time_cond = torch.full((batch,), time, device=device, dtype=torch.long)
        pred_noise, x_start, z_next = self.model_predictions(x, time_cond, z_cond)

        guidance_const: torch.Tensor | float = 0
        if time_next < 0:
            x = x_start
        else:
            alpha = self.alphas_cumprod[time]
            alpha_next = self.alphas_cumprod[time_next]
            sigma = self.eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
            c = (1 - alpha_next - sigma**2).sqrt()
            guidance_const = (1 - alpha) - c * (1 - alpha).sqrt()
            noise = torch.clamp(_randn(tuple(x.shape), x, generator), -self.clip_noise, self.clip_noise)
            x = x_start * alpha_next.sqrt() + c * pred_noise + sigma * noise
        return x, z_next, x_start, guidance_const


def official_replan(
    model: OfficialTransitionModel,
    z0: torch.Tensor,
    horizon: int,
    sampling_timesteps: int = 50,
    uncertainty_scale: float = 1.0,
    guidance_scale: float = 1.0,
    ddim_repeats: int = 1,
    goal: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One replan of ``DiffusionForcingPlanning.interact``: the pyramid-scheduled, goal-guided plan of ``horizon``
    tokens for a batch whose current latent is ``z0`` (B, z_dim). ``goal`` (B, 2), in the plan's space, defaults
    to a random point. Returns the final plan, (horizon, B, x_dim), detached."""
    if model.x_dim % UNSTACKED_DIM:
        raise ValueError(f"x_dim must be frame_stack x {UNSTACKED_DIM} ([obs 4, action 2] per frame)")
    frame_stack = model.x_dim // UNSTACKED_DIM
    batch = z0.shape[0]
    n_frames = horizon * frame_stack  # the episode's remaining frames: the plan reaches the episode's end
    if goal is None:
        goal = _randn((batch, POS_DIM), z0, generator)
    goal = goal.to(z0)

    plan: list[torch.Tensor] = [_randn((batch, model.x_dim), z0, generator) for _ in range(horizon)]
    last_plan: list[torch.Tensor] = list(plan)

    pyramid_height = sampling_timesteps + int(horizon * uncertainty_scale)
    pyramid = np.zeros((pyramid_height, horizon), dtype=int)
    for m in range(pyramid_height):
        for t in range(horizon):
            pyramid[m, t] = m - int(t * uncertainty_scale)

    for m in range(pyramid_height):
        guidance_consts: list[torch.Tensor | float] = []
        clean_samples: list[list[torch.Tensor]] = [[] for _ in range(horizon)]
        z_chunk = z0.detach()
        with torch.enable_grad():
            for t in range(horizon):
                plan[t].requires_grad_(True)
                last_plan[t] = plan[t]
                i = int(max(min(pyramid[m, t], sampling_timesteps - 1), 0))
                bundle_new, z_next, bundle_clean, guidance_const = model.ddim_sample_step(
                    plan[t], z_chunk, i, sampling_timesteps, generator
                )
                clean_samples[t].append(bundle_clean)
                guidance_consts.append(guidance_const)

                bundle_temp = plan[t]  # extra x0 samples for a Monte Carlo estimate of the guidance gradient
                if guidance_scale:
                    for _ in range(ddim_repeats - 1):
                        _, _, bundle_clean, _ = model.ddim_sample_step(
                            bundle_temp, z_chunk, i, sampling_timesteps, generator
                        )
                        clean_samples[t].append(bundle_clean)
                        level = model.time_pairs(sampling_timesteps)[i][0]
                        bundle_temp = model.q_sample(
                            bundle_clean, torch.full((batch,), level, device=z0.device), generator
                        )

                z_chunk = z_next
                plan[t] = bundle_new if pyramid[m, t] < sampling_timesteps else plan[t].detach()

            if guidance_scale:
                samples = torch.stack([torch.stack(s) for s in clean_samples])  # t r b (fs c)
                repeats = samples.shape[1]
                samples = samples.view(horizon, repeats, batch, frame_stack, UNSTACKED_DIM)
                samples = samples.permute(0, 3, 2, 1, 4).reshape(n_frames, batch, repeats, UNSTACKED_DIM)
                weight = torch.ones(n_frames, device=z0.device)
                weight[-1] = 0.0  # official: the plan reaches the end of the episode
                dist = torch.linalg.norm(samples[..., :POS_DIM] - goal[None, :, None], dim=-1)
                episode_return = -(n_frames * dist * weight[:, None, None]).sum(1).mean()
                grads = torch.autograd.grad([episode_return], last_plan, allow_unused=True)
                for t in range(horizon):
                    plan[t] = plan[t] + guidance_consts[t] * grads[t] * guidance_scale

    return torch.stack(plan).detach()


def build_official(
    x_dim: int, z_dim: int, network_size: int, num_gru_layers: int = 1, num_mlp_layers: int = 4, seed: int = 0
) -> OfficialTransitionModel:
    """An untrained OfficialTransitionModel with the maze2d sampler settings, weights drawn under ``seed``."""
    torch.manual_seed(seed)
    return OfficialTransitionModel(x_dim, z_dim, network_size, num_gru_layers, num_mlp_layers).eval()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    model = build_official(x_dim=60, z_dim=16, network_size=4)
    gen = torch.Generator().manual_seed(0)
    z0 = torch.zeros(2, 16)
    t0 = time.perf_counter()
    plan = official_replan(model, z0, horizon=3, sampling_timesteps=5, generator=gen)
    seconds = time.perf_counter() - t0
    print(f"plan {tuple(plan.shape)} in {seconds:.3f}s ({parameter_count(model):,} parameters)")
