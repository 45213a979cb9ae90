"""The planning agent: receding-horizon Diffusion Forcing with guidance, in maze2d (DF Sec. 4.2).

Every ``open_loop`` env steps the agent encodes its recent history as clean context tokens, samples a
plan for the rest of the episode (at most ``planning.horizon`` steps, and within the backbone's window
if it has one) with the configured scheduling matrix
(pyramid by default) while the guidance objective pulls the predicted positions to the goal, and then
executes the plan's first ``open_loop`` steps: the diffused actions themselves (``controller:
actions``, as DF does) or a PD controller tracking the planned positions (``controller: pd``, as
Diffuser does). All episodes of a batch run in a gymnasium vector env and are planned in one batched
sample.

A step of the model's data is (a_t, o_{t+1}) (DF App. D: token = action and the next observation),
``frame_stack`` steps per token. Before the first step the history is ``frame_stack`` copies of
(0, o_0): at rest, with no action, the point mass stays where it is, so this token is a true
trajectory.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from worldsim.config import to_plain
from worldsim.data.maze2d import MAZE2D_STEP_LAYOUT
from worldsim.diffusion.sampling import sample
from worldsim.environments import envs
from worldsim.errors import ConfigError
from worldsim.experiment import LoadedRun
from worldsim.nn import frozen
from worldsim.runs import TensorBoardEntries, write_report
from worldsim.settings import PlanSettings, SamplingSettings

ACTION, POSITION, VELOCITY = (MAZE2D_STEP_LAYOUT[k] for k in ("action", "position", "velocity"))


def maze_of(run: LoadedRun, env: str | None = None) -> tuple[str, str]:
    """(maze name, env id) the run plans in; the env must be the maze the run was trained on."""
    worldsim_envs = envs()

    if run.cfg.dataset.get("name") != "maze2d":
        raise ConfigError(
            f"{run.checkpoint}: trained on the {run.cfg.dataset.get('name')!r} data set, not maze2d; planning needs a maze2d run"
        )
    maze = str(run.cfg.dataset.maze)
    multi = bool(run.cfg.planning.multi_goal)
    expected = worldsim_envs.env_id(maze, multi_goal=multi)
    if env is None:
        return maze, expected
    known = {worldsim_envs.env_id(m, multi_goal=g): m for m in worldsim_envs.MAZES for g in (False, True)}
    if env not in known:
        raise ConfigError(f"--env: unknown env {env!r}; expected one of {', '.join(sorted(known))}")
    if known[env] != maze:
        raise ConfigError(f"--env {env}: {run.checkpoint} was trained on the {maze} maze, not {known[env]}")
    return maze, env


class Planner:
    """Plans for a batch of agents from their histories of (a_t, o_{t+1}) steps."""

    def __init__(self, run: LoadedRun, objective, settings: PlanSettings):
        self.run, self.objective, self.settings = run, objective, settings
        self.frames = int(run.tokenizer.frames_per_token)
        # A backbone with a window (max_tokens) plans within it; one without (the GRU) may plan past its
        # training length, like DF's long rollouts: the plan then covers the rest of the episode.
        self.window = run.model.max_tokens
        if self.window is not None and settings.context >= self.window:
            raise ConfigError(
                f"planning.context: {settings.context} tokens leave no room to plan in a window of {self.window}"
            )
        kwargs = SamplingSettings.from_config(run.cfg.sampling).kwargs()
        kwargs.pop("chunk_size")  # a plan is one chunk
        self.sampling = kwargs
        self.device = next(run.model.parameters()).device
        self.walls = envs().maze_map(str(run.cfg.dataset.maze))  # for objectives that read the maze (maze_goal)

    def horizon_tokens(self, remaining_steps: int) -> int:
        steps = remaining_steps if self.settings.horizon is None else min(remaining_steps, self.settings.horizon)
        tokens = math.ceil(steps / self.frames)
        return max(1, tokens if self.window is None else min(tokens, self.window - self.settings.context))

    def plan(
        self,
        history: np.ndarray,
        goals: np.ndarray,
        remaining_steps: int,
        generator: torch.Generator,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """history (B, L, step_dim) with L >= frames; goals (B, 2) -> plan (B, H * frames, step_dim) of
        decoded steps (a_t, o_{t+1}) starting at the current step. ``previous`` (B, L', step_dim): the steps of
        the last plan not yet executed, which ``planning.warm_start`` starts this plan from."""
        tok, f, n = self.run.tokenizer, self.frames, self.settings.candidates
        horizon = self.horizon_tokens(remaining_steps)
        warm = {}
        if previous is not None and previous.shape[1] > 0 and self.settings.warm_start is not None:
            # the rest of the last plan, cut or padded (its last step held) to this plan's steps, as tokens
            steps = previous[:, : horizon * f]
            steps = np.concatenate([steps, np.repeat(steps[:, -1:], horizon * f - steps.shape[1], axis=1)], axis=1)
            with torch.no_grad():
                init = tok.encode(torch.as_tensor(steps, dtype=torch.float32, device=self.device))
            warm = {"init": init.repeat_interleave(n, dim=0), "init_level": self.settings.warm_start}
        usable = min(self.settings.context, history.shape[1] // f) * f
        recent = torch.as_tensor(history[:, history.shape[1] - usable :], dtype=torch.float32, device=self.device)
        goal = torch.as_tensor(goals, dtype=torch.float32, device=self.device)
        # candidates of one agent are neighbours in the batch: rows b * n .. b * n + n - 1
        ctx = {"goal": goal.repeat_interleave(n, dim=0), "position": POSITION, "walls": self.walls}
        with torch.no_grad():
            context = tok.encode(recent).repeat_interleave(n, dim=0)

        def guidance(x0_tokens: torch.Tensor) -> torch.Tensor:
            return self.objective(tok.decode(x0_tokens), ctx)

        # the guidance gradient is with respect to the plan only: frozen weights spare the backward pass their
        # gradients (about 4% of a batch-1 umaze replan)
        with frozen(self.run.model):
            tokens = sample(
                self.run.model, horizon=horizon, context=context, generator=generator, guidance=guidance,
                guidance_scale=self.settings.guidance_scale, mc_samples=self.settings.mc_samples, **self.sampling,
                **warm,
            )  # fmt: skip
        with torch.no_grad():
            steps = tok.decode(tokens)
            if n > 1:  # keep each agent's candidate that the objective values most
                best = self.objective(steps, ctx).reshape(-1, n).argmax(dim=1)
                steps = steps.reshape(-1, n, *steps.shape[1:])[torch.arange(steps.shape[0] // n), best]
            return steps.cpu().numpy()

    def act(self, plan: np.ndarray, i: int, obs: np.ndarray) -> np.ndarray:
        """The action for step i of the plan given the current observations (B, 4)."""
        if self.settings.controller == "actions":
            return np.clip(plan[:, i, ACTION], -1.0, 1.0)
        kp, kd = self.settings.pd_gains  # track the planned next position and velocity
        target_p, target_v = plan[:, i, POSITION], plan[:, i, VELOCITY]
        return np.clip(kp * (target_p - obs[:, :2]) + kd * (target_v - obs[:, 2:]), -1.0, 1.0)


def build_objective(run: LoadedRun, registry):
    """The run's guidance objective (``run.cfg.guidance``: a registered name and its arguments)."""
    from worldsim.config import component_kwargs

    if not run.cfg.get("guidance"):
        raise ConfigError(
            "guidance: the run has no guidance objective; choose one, e.g. worldsim plan RUN guidance=goal"
        )
    return registry.build("guidance", run.cfg.guidance.name, {}, component_kwargs(run.cfg.guidance))


def _make_envs(env_id: str, n: int):
    import gymnasium as gym

    envs()  # registers the ids

    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n)])


def run_episodes(
    planner: Planner, env_id: str, n: int, seed: int, progress: bool = True, max_steps: int | None = None
) -> dict[str, Any]:
    """Run ``n`` episodes in one vector env, planning for all of them at once (only their first ``max_steps``
    steps when given: plans still cover the rest of the full episode)."""
    s = planner.settings
    envs = _make_envs(env_id, n)
    try:
        obs, info = envs.reset(seed=[seed + i for i in range(n)])
        limit = int(envs.envs[0].spec.max_episode_steps)
        goals = np.asarray(info["goal"], dtype=np.float64)
        f = planner.frames
        start = np.concatenate([np.zeros((n, ACTION.stop - ACTION.start)), obs], axis=1)
        history = np.empty((n, f + limit, start.shape[1]))  # steps (a_t, o_{t+1}); the first f are valid now
        history[:, :f] = start[:, None]  # at rest: (0, o_0) x frame_stack
        paths, plans, latencies = [obs[:, :2].copy()], [], []
        returns, reached = np.zeros(n), np.zeros(n, dtype=bool)
        generator = torch.Generator().manual_seed(seed)
        plan, i = None, 0
        desc = f"episodes {seed}..{seed + n - 1}"
        bar = progress and sys.stderr.isatty()  # a live bar on a terminal; otherwise a line every tenth of the episode
        lines = progress and not bar
        started = time.perf_counter()
        for t in tqdm(range(limit if max_steps is None else min(max_steps, limit)), desc=desc, unit="step",
                      leave=False, disable=not bar):  # fmt: skip
            if lines and t and t % max(1, limit // 10) == 0:
                print(f"plan: {desc}: step {t}/{limit}, {int(reached.sum())}/{n} reached the goal, "
                      f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
            if plan is None or i >= min(s.open_loop, plan.shape[1]):
                tic = time.perf_counter()
                rest: np.ndarray | None = None if plan is None else plan[:, i:]
                plan, i = planner.plan(history[:, : f + t], goals, limit - t, generator, rest), 0
                latencies.append(time.perf_counter() - tic)
                plans.append((t, plan[:, :, POSITION].copy()))
            action = planner.act(plan, i, obs)
            obs, reward, _, _, info = envs.step(action)
            i += 1
            returns += reward
            reached |= np.asarray(info["success"], dtype=bool)
            history[:, f + t] = np.concatenate([action, obs], axis=1)
            paths.append(obs[:, :2].copy())
    finally:
        envs.close()
    return {"returns": returns, "reached": reached, "final_success": np.asarray(info["success"], dtype=bool),
            "latencies": latencies, "paths": np.stack(paths, axis=1), "plans": plans, "goals": goals, "limit": limit}  # fmt: skip


def evaluate_planner(run: LoadedRun, objective, settings: PlanSettings, env: str | None = None,
                     out_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Plan ``settings.episodes`` episodes in batches of ``settings.batch``; score table, plots, JSON, TensorBoard."""
    worldsim_envs = envs()

    maze, env_id = maze_of(run, env)
    batches, first = [], None
    for b0 in range(0, settings.episodes, settings.batch):
        n = min(settings.batch, settings.episodes - b0)
        result = run_episodes(Planner(run, objective, settings), env_id, n, settings.seed + b0, progress)
        first = first or result
        batches.append(result)
    returns = np.concatenate([b["returns"] for b in batches])
    scores = np.asarray(worldsim_envs.normalized_score(env_id, returns), dtype=np.float64)
    latencies = [x for b in batches for x in b["latencies"]]
    report = {
        "checkpoint": str(run.checkpoint), "step": run.step, "env": env_id, "maze": maze,
        "episodes": int(len(returns)), "batch": min(settings.batch, settings.episodes),
        "score_mean": float(scores.mean()), "score_stderr": float(scores.std(ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0,
        "return_mean": float(returns.mean()),
        "success_rate": float(np.concatenate([b["reached"] for b in batches]).mean()),
        "final_success_rate": float(np.concatenate([b["final_success"] for b in batches]).mean()),
        "replan_latency_s": float(np.mean(latencies)), "replans": len(latencies),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "sampling": to_plain(run.cfg.sampling), "guidance": to_plain(run.cfg.guidance) if run.cfg.get("guidance") else None,
        "scores": scores.tolist(), "returns": returns.tolist(),
        "goals": np.concatenate([b["goals"] for b in batches]).tolist(),
    }  # fmt: skip
    assert first is not None, "planning.episodes >= 1 runs at least one batch"
    drawn = first
    plot = ("plans.png", lambda path: _plot_plans(drawn, maze, settings.plots, path, report))
    return write_report(report, "plan", run.folder, run.step, out_dir, files={"plot": plot}, tensorboard=_tensorboard)


def format_plan_table(report: dict[str, Any]) -> str:
    """One row per env: normalized score mean +- standard error over episodes (D4RL's 100 * (R - min) / (max - min))."""
    head = f"{'env':<28} {'episodes':>8} {'score':>15} {'success':>8} {'at goal at end':>15} {'replan latency':>15}"
    row = (f"{report['env']:<28} {report['episodes']:>8} {report['score_mean']:>8.1f} +- {report['score_stderr']:<4.1f} "
           f"{100 * report['success_rate']:>7.0f}% {100 * report['final_success_rate']:>14.0f}% "
           f"{1000 * report['replan_latency_s']:>10.0f} ms / {report['batch']}")  # fmt: skip
    return "\n".join([head, "-" * len(head), row])


def _plot_plans(result: dict[str, Any], maze: str, count: int, path: Path, report: dict[str, Any]) -> None:
    """The first ``count`` episodes over the maze: executed path, every plan (faint) and the first plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worldsim_envs = envs()

    count = max(1, min(count, result["paths"].shape[0]))
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False, constrained_layout=True)
    for e in range(rows * cols):
        ax = axes[e // cols][e % cols]
        if e >= count:
            ax.axis("off")
            continue
        worldsim_envs.draw_maze(ax, maze)
        for j, (_, p) in enumerate(result["plans"]):
            ax.plot(p[e, :, 1], p[e, :, 0], color="C0", lw=1.5 if j == 0 else 0.6, alpha=0.9 if j == 0 else 0.25)
        path_e = result["paths"][e]
        ax.plot(path_e[:, 1], path_e[:, 0], color="C3", lw=1.2)
        ax.plot(path_e[0, 1], path_e[0, 0], "o", color="C3", ms=5)
        ax.plot(result["goals"][e, 1], result["goals"][e, 0], "*", color="gold", mec="k", ms=12)
        score = report["scores"][e]
        ax.set_title(f"episode {e}: score {score:.0f}", fontsize=9)
    fig.suptitle(f"{report['env']}: plans (blue, first one bold), executed path (red), goal (star)", fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _tensorboard(report: dict[str, Any]) -> TensorBoardEntries:
    return TensorBoardEntries(
        scalars={
            "plan/normalized_score": report["score_mean"],
            "plan/success_rate": report["success_rate"],
            "plan/replan_latency_s": report["replan_latency_s"],
        },
        images={"plan/plans": Path(report["plot"])},
    )
