"""Long autoregressive rollouts of a trained model and their error against the true continuation.

The model sees ``context`` true tokens, then generates chunk after chunk (``sampling.chunk_size``)
with the configured scheduling matrix, feeding finished tokens back at ``sampling.stabilization_level``
and using the backbone cache (or a sliding window of ``data.seq_len`` tokens) to go far past the
training length. Error is reported per horizon: the window of one training length that ends at
1x, 2x, 4x, 8x ... the training length.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from worldsim.config import to_plain
from worldsim.data.sources import load_dataset
from worldsim.diffusion.sampling import sample
from worldsim.errors import ConfigError
from worldsim.experiment import LoadedRun, stack_frames
from worldsim.runs import TensorBoardEntries, write_report
from worldsim.settings import RolloutSettings, SamplingSettings


def rollout(
    run: LoadedRun,
    context_obs: torch.Tensor,
    frames: int,
    actions: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Generate ``frames`` observations after ``context_obs`` (B, Lc, *obs_shape).

    ``actions`` (B, >= Lc + frames, A) condition an action-conditioned model. Returns (B, frames, *obs_shape).
    """
    tok = run.tokenizer
    f = int(tok.frames_per_token)
    if context_obs.shape[1] < f or context_obs.shape[1] % f:
        raise ConfigError(
            f"rollout context: {context_obs.shape[1]} steps is not a positive multiple of the {f} steps per token"
        )
    horizon = math.ceil(frames / f)
    device = next(run.model.parameters()).device
    with torch.no_grad():
        context = tok.encode(context_obs.to(device))
    cond = None
    if run.action_dim:
        needed = context_obs.shape[1] + horizon * f
        if actions is None or actions.shape[1] < needed:
            got = 0 if actions is None else actions.shape[1]
            raise ConfigError(f"rollout actions: the model is action-conditioned and needs {needed} actions, got {got}")
        cond = torch.stack([stack_frames(a[:needed], f) for a in actions]).to(device)
    settings = SamplingSettings.from_config(run.cfg.sampling)
    bar = tqdm(total=horizon, desc="rollout", unit="tok", disable=None if progress else True, leave=False)
    done = {"chunk": -1}

    def on_row(info: dict[str, Any]) -> None:
        if info["chunk"] != done["chunk"]:
            done["chunk"] = info["chunk"]
            bar.n = min(horizon, info["start"])  # the tokens finished before this chunk
            bar.refresh()

    with torch.no_grad():
        tokens = sample(
            run.model, settings, horizon=horizon, context=context, cond=cond, generator=generator, callback=on_row
        )
    bar.n = horizon
    bar.close()
    with torch.no_grad():
        return tok.decode(tokens)[:, :frames].cpu()


def horizon_windows(train_len: int, total: int, multiples: list[int]) -> list[tuple[int, int, int]]:
    """(multiple, start, end) token windows ((h-1) T, h T] that fit into ``total`` generated tokens."""
    return [(h, (h - 1) * train_len, h * train_len) for h in multiples if h * train_len <= total]


def horizon_unit(run: LoadedRun, settings: RolloutSettings) -> int:
    """Frames (steps) per horizon multiple: ``rollout.horizon_unit``, else the training window, a whole number of
    tokens either way."""
    f = int(run.tokenizer.frames_per_token)
    unit = settings.horizon_unit if settings.horizon_unit is not None else int(run.cfg.data.seq_len) * f
    if unit % f:
        raise ConfigError(f"rollout.horizon_unit: {unit} frames is not a multiple of the {f} frames per token")
    return unit


def rollout_extent(
    run: LoadedRun, frames: int | None, context: int | None, episodes: int | None, default_windows: int
) -> tuple[RolloutSettings, int, int, int]:
    """(settings, context tokens, frames, episodes) of a rollout: the command's values, else the run's ``rollout``
    settings (``frames``: ``default_windows`` training windows), checked."""
    settings = RolloutSettings.from_config(run.cfg.rollout)
    f = int(run.tokenizer.frames_per_token)
    context_tokens = int(context if context is not None else settings.context)
    if context_tokens < 1:
        raise ConfigError(f"--context: expected at least 1 token ({f} steps), got {context_tokens}")
    frames = int(frames if frames is not None else default_windows * int(run.cfg.data.seq_len) * f)
    if frames < 1:
        raise ConfigError(f"--frames: expected a positive number of frames, got {frames}")
    return settings, context_tokens, frames, int(episodes if episodes is not None else settings.episodes)


def horizon_errors(
    generated: torch.Tensor, truth: torch.Tensor, f: int, unit_tokens: int, multiples: list[int]
) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Error per generated token (over its ``f`` frames and the observation dims), then per horizon window of
    ``unit_tokens`` x each multiple: (a row per window, the rmse per token). ``generated`` and ``truth``: (N,
    tokens * f, ...)."""
    n, horizon = generated.shape[0], generated.shape[1] // f
    sq = ((generated - truth) ** 2).reshape(n, horizon, -1)
    signal = (truth**2).reshape(n, horizon, -1)
    power = (generated**2).reshape(n, horizon, -1)
    rows = []
    for h, start, end in horizon_windows(unit_tokens, horizon, multiples):
        rmse = float(sq[:, start:end].mean().sqrt())
        rms = float(signal[:, start:end].mean().sqrt())
        generated_rms = float(power[:, start:end].mean().sqrt())
        rows.append(
            {
                "horizon": f"{h}x",
                "tokens": [start + 1, end],
                "rmse": rmse,
                "signal_rms": rms,
                "nrmse": rmse / max(rms, 1e-12),
                "rms_ratio": generated_rms / max(rms, 1e-12),
            }
        )
    return rows, sq.mean(dim=(0, 2)).sqrt()


def evaluate_rollouts(
    run: LoadedRun,
    frames: int | None = None,
    context: int | None = None,
    episodes: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Roll out held-out episodes and report error per horizon; writes rollout.json and rollout.png."""
    cfg = run.cfg
    f = int(run.tokenizer.frames_per_token)
    train_tokens = int(cfg.data.seq_len)
    settings, context_tokens, frames, n = rollout_extent(run, frames, context, episodes, default_windows=4)
    unit_tokens = horizon_unit(run, settings) // f
    data = load_dataset(to_plain(cfg.dataset), split="eval", length=context_tokens * f + frames, count=n)
    obs = torch.from_numpy(np.stack([o[: context_tokens * f + frames] for o in data.observations]))
    actions = None if data.actions is None else torch.from_numpy(np.stack(data.actions))
    generator = torch.Generator().manual_seed(seed)
    generated = rollout(run, obs[:, : context_tokens * f], frames, actions, generator, progress)
    truth = obs[:, context_tokens * f :]

    horizon = generated.shape[1] // f
    rows, rmse_per_token = horizon_errors(generated[:, : horizon * f], truth[:, : horizon * f], f, unit_tokens,
                                          list(settings.horizons))  # fmt: skip
    report: dict[str, Any] = {
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "episodes": n,
        "context_tokens": context_tokens,
        "generated_tokens": horizon,
        "train_tokens": train_tokens,
        "horizon_unit_tokens": unit_tokens,
        "frames_per_token": f,
        "sampling": to_plain(cfg.sampling),
        "horizons": rows,
        "rmse_per_token": rmse_per_token.tolist(),
    }
    context_obs = obs[:, : context_tokens * f]
    plot = ("rollout.png", lambda path: _plot(report, context_obs, generated, truth, path))
    return write_report(
        report, "rollout", run.folder, run.step, out_dir, files={"plot": plot}, tensorboard=_tensorboard
    )


def format_table(report: dict[str, Any]) -> str:
    """rmse: against the true continuation; nrmse: rmse / true signal rms; rms ratio: generated rms /
    true rms (1 = the rollout neither fades nor blows up, whatever its phase)."""
    head = f"{'horizon':>8} {'tokens':>11} {'rmse':>9} {'signal rms':>11} {'nrmse':>7} {'rms ratio':>10}"
    lines = [head, "-" * len(head)]
    for r in report["horizons"]:
        lines.append(
            f"{r['horizon']:>8} {r['tokens'][0]:>5}-{r['tokens'][1]:<5} {r['rmse']:>9.4f} "
            f"{r['signal_rms']:>11.4f} {r['nrmse']:>7.3f} {r['rms_ratio']:>10.3f}"
        )
    return "\n".join(lines)


def _plot(
    report: dict[str, Any], context: torch.Tensor, generated: torch.Tensor, truth: torch.Tensor, path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = report["frames_per_token"]
    shown = min(3, generated.shape[0])
    dims = min(2, int(np.prod(generated.shape[2:])))
    fig, axes = plt.subplots(shown + 1, 1, figsize=(10, 2.2 * (shown + 1)), constrained_layout=True)
    lc = context.shape[1]
    t_ctx = np.arange(lc)
    t_gen = np.arange(lc, lc + generated.shape[1])
    for i in range(shown):
        ax = axes[i]
        for d in range(dims):
            color = f"C{d}"
            ax.plot(t_ctx, context[i].reshape(lc, -1)[:, d], color=color, lw=2)
            ax.plot(
                t_gen, truth[i].reshape(truth.shape[1], -1)[:, d], color=color, lw=1, alpha=0.5, label=f"true dim {d}"
            )
            ax.plot(
                t_gen,
                generated[i].reshape(generated.shape[1], -1)[:, d],
                color=color,
                lw=1,
                ls="--",
                label=f"generated dim {d}",
            )
        for r in report["horizons"]:
            ax.axvline(lc + r["tokens"][1] * f, color="grey", lw=0.5)
        ax.set_ylabel(f"episode {i}")
        if i == 0:
            ax.legend(loc="upper right", fontsize=7, ncol=2)
            ax.set_title(
                "context (thick), true continuation (solid), rollout (dashed); grey lines: 1x, 2x, 4x ... training length"
            )
    ax = axes[-1]
    steps = (np.arange(len(report["rmse_per_token"])) + 1) / report["train_tokens"]
    ax.plot(steps, report["rmse_per_token"], color="k")
    ax.set_xlabel("horizon (multiples of the training length)")
    ax.set_ylabel("rmse per token")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _tensorboard(report: dict[str, Any]) -> TensorBoardEntries:
    return TensorBoardEntries(
        scalars={f"rollout/rmse_{r['horizon']}": r["rmse"] for r in report["horizons"]},
        images={"rollout/plot": Path(report["plot"])},
    )
