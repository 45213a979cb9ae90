"""The planning agent: receding-horizon Diffusion Forcing with guidance, in a task's environment (DF Sec. 4.2).

Every ``open_loop`` env steps the agent encodes its recent history as clean context tokens, samples a
plan for the rest of the episode (at most ``planning.horizon`` steps, and within the backbone's window
if it has one) with the configured scheduling matrix
(pyramid by default) while the guidance objective pulls the predicted positions to the goal, and then
executes the plan's first ``open_loop`` steps: the diffused actions themselves (``controller:
actions``, as DF does) or a PD controller tracking the planned positions (``controller: pd``, as
Diffuser does). All episodes of a batch run in a gymnasium vector env and are planned in one batched
sample.

What it knows of the environment comes from the run's task (``task=NAME``, the ``worldsim_add_tasks`` hook): the
env, the layout of a step, the goal, success, what the objectives read and the normalized score. A step of the
model's data is (a_t, o_{t+1}) (DF App. D: token = action and the next observation), ``frame_stack`` steps per
token. Before the first step the history is ``frame_stack`` copies of (0, o_0): at rest, with no action, the
agent stays where it is, so this token is a true trajectory.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from worldsim.config import dataset_node, to_plain
from worldsim.data.goals import goal_condition
from worldsim.diffusion.sampling import Guidance, sample
from worldsim.errors import ConfigError
from worldsim.experiment import LoadedRun
from worldsim.nn import frozen
from worldsim.runs import TensorBoardEntries, write_report
from worldsim.settings import PlanSettings, RunSettings, SamplingSettings

#: the sections `worldsim plan` may change in a trained run
PLANNING_GROUPS = ("planning", "sampling", "guidance", "task")


def planning_config(
    cfg, overrides: Sequence[str], registry, allowed: Sequence[str] = PLANNING_GROUPS
) -> tuple[DictConfig, RunSettings]:
    """``cfg`` with the ``guidance=NAME`` / ``task=NAME`` choices (a new component with its factory defaults) and then
    the dotted overrides of the ``allowed`` sections applied, validated, and its typed settings: the one place
    `worldsim plan`, `worldsim export` and `worldsim sweep` read a trained run's planning settings from."""
    from omegaconf import OmegaConf

    from worldsim.config import apply_overrides, validate

    rest = []
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if key in ("guidance", "task") and sep:
            registry.get(key, value)  # unknown names fail with suggestions
            cfg = OmegaConf.create(OmegaConf.to_container(cfg))
            cfg[key] = {"name": value, **registry.factory_defaults(key, value)}
        else:
            rest.append(ov)
    cfg = apply_overrides(cfg, rest, allowed=allowed)
    return cfg, validate(cfg, registry)


def plan_run(
    path: str | Path,
    overrides: Sequence[str],
    registry,
    env: str | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``worldsim plan``: the run at ``path`` (a run folder, a checkpoint or a shipped model's name) with the
    planning ``overrides`` (:func:`planning_config`), its agent over ``planning.episodes`` episodes in its task's
    env (``env``: another gymnasium id); the report (:func:`evaluate_planner`)."""
    from worldsim.experiment import load_run
    from worldsim.runtime import set_threads

    run = load_run(path, registry)
    run.folder.check_report_folders("plan", out_dir)  # before the work, not after it
    run.cfg, settings = planning_config(run.cfg, overrides, registry)
    task = build_task(run, registry)
    set_threads(settings.planning.threads, "planning.threads")
    objective = build_objective(run, registry)
    return evaluate_planner(run, objective, settings.planning, task, env=env, out_dir=out_dir, progress=progress)


def build_task(run: LoadedRun, registry):
    """The run's task (``run.cfg.task``: a registered name and its arguments), built on the run's data set."""
    from worldsim.config import component_kwargs

    node = run.cfg.get("task")
    if not node:
        raise ConfigError(
            f"task: {run.checkpoint} names no task to plan in; choose one with worldsim plan RUN task=NAME "
            f"(registered: {', '.join(registry.names('task')) or 'none'})"
        )
    dataset = dataset_node(to_plain(run.cfg.dataset))
    task = registry.build("task", node.name, {"dataset": dataset}, component_kwargs(node))
    width = task.step_layout["observation"].stop
    if tuple(run.obs_shape) != (width,):
        raise ConfigError(
            f"task {node.name}: its steps have {width} numbers, {run.checkpoint} models {tuple(run.obs_shape)}"
        )
    return task


def _width(s: slice) -> int:
    return s.stop - s.start


class Planner:
    """Plans for a batch of agents from their histories of (a_t, o_{t+1}) steps."""

    def __init__(self, run: LoadedRun, objective, settings: PlanSettings, task):
        self.run, self.objective, self.settings, self.task = run, objective, settings, task
        layout = task.step_layout
        self.action, self.position, self.velocity = layout["action"], layout["position"], layout.get("velocity")
        self.frames = int(run.tokenizer.frames_per_token)
        # a jumpy model (data.stride > 1) sees every stride-th env step: its plan is upsampled to env steps
        self.stride = int(run.cfg.data.stride)
        self.goal_dims = run.cfg.data.goal_dims  # a goal-conditioned model (worldsim.data.goals)
        # A backbone with a window (max_tokens) plans within it; one without (the GRU) may plan past its
        # training length, like DF's long rollouts: the plan then covers the rest of the episode.
        self.window = run.model.max_tokens
        if self.window is not None and settings.context >= self.window:
            raise ConfigError(
                f"planning.context: {settings.context} tokens leave no room to plan in a window of {self.window}"
            )
        self.sampling = SamplingSettings.from_config({**run.cfg.sampling, "chunk_size": None})  # a plan is one chunk
        # a warm-started replan walks planning.warm_schedule's scheduling matrix (default: the same)
        self.warm_sampling = dataclasses.replace(
            self.sampling, schedule=settings.warm_schedule or self.sampling.schedule
        )
        self.device = next(run.model.parameters()).device
        if settings.controller in ("pd", "waypoint") and self.velocity is None:
            raise ConfigError(
                f"planning.controller: {settings.controller} damps the velocity; task {task.name} has none in its "
                f"step layout"
            )
        self.context = task.guidance_context()  # what the task gives the objectives (the hook's docstring)

    def horizon_tokens(self, remaining_steps: int) -> int:
        steps = remaining_steps if self.settings.horizon is None else min(remaining_steps, self.settings.horizon)
        tokens = math.ceil(steps / (self.frames * self.stride))
        return max(1, tokens if self.window is None else min(tokens, self.window - self.settings.context))

    def plan(
        self,
        history: np.ndarray,
        goals: np.ndarray,
        remaining_steps: int,
        generator: torch.Generator,
        previous: np.ndarray | None = None,
    ) -> np.ndarray:
        """history (B, L, step_dim) with L >= frames; goals (B, G) -> plan (B, H * frames, step_dim) of
        decoded steps (a_t, o_{t+1}) starting at the current step. ``previous`` (B, L', step_dim): the steps of
        the last plan not yet executed, which ``planning.warm_start`` starts this plan from."""
        tok, f, n, j = self.run.tokenizer, self.frames, self.settings.candidates, self.stride
        horizon = self.horizon_tokens(remaining_steps)
        warm = {}
        if previous is not None and previous.shape[1] > 0 and self.settings.warm_start is not None:
            # the rest of the last plan, cut or padded (its last step held) to this plan's steps, as tokens
            steps = previous[:, j - 1 :: j][:, : horizon * f]
            steps = np.concatenate([steps, np.repeat(steps[:, -1:], horizon * f - steps.shape[1], axis=1)], axis=1)
            with torch.no_grad():
                init = tok.encode(torch.as_tensor(steps, dtype=torch.float32, device=self.device))
            warm = {"init": init.repeat_interleave(n, dim=0), "init_level": self.settings.warm_start}
        # the last `context` tokens' steps, stride env steps apart and ending now; before the first step the agent
        # was at rest where it started (the history's first row)
        usable = min(self.settings.context, history.shape[1] // f) * f
        rows = np.maximum(history.shape[1] - 1 - j * np.arange(usable)[::-1], 0)
        recent = torch.as_tensor(history[:, rows], dtype=torch.float32, device=self.device)
        goal = torch.as_tensor(goals, dtype=torch.float32, device=self.device)
        # candidates of one agent are neighbours in the batch: rows b * n .. b * n + n - 1
        ctx = {**self.context, "goal": goal.repeat_interleave(n, dim=0), "position": self.position}
        with torch.no_grad():
            context = tok.encode(recent).repeat_interleave(n, dim=0)
        cond = None
        if self.goal_dims is not None:  # the goal as the condition of every token (worldsim.data.goals)
            token = goal_condition(tok, goal, self.goal_dims, history.shape[2]).repeat_interleave(n, dim=0)
            cond = token[:, None, :].expand(-1, context.shape[1] + horizon, -1)

        def guidance(x0_tokens: torch.Tensor) -> torch.Tensor:
            return self.objective(tok.decode(x0_tokens), ctx)

        # the guidance gradient is with respect to the plan only: frozen weights spare the backward pass their
        # gradients (about 4% of a batch-1 replan of the shipped 2-D planner)
        with frozen(self.run.model):
            tokens = sample(
                self.run.model, self.warm_sampling if warm else self.sampling, horizon=horizon, context=context,
                generator=generator, cond=cond,
                guidance=Guidance(guidance, self.settings.guidance_scale, self.settings.mc_samples,
                                  self.settings.guidance_gradient), **warm,
            )  # fmt: skip
        with torch.no_grad():
            steps = tok.decode(tokens)
            if n > 1:  # keep each agent's candidate that the objective values most
                best = self.objective(steps, ctx).reshape(-1, n).argmax(dim=1)
                steps = steps.reshape(-1, n, *steps.shape[1:])[torch.arange(steps.shape[0] // n), best]
            return upsample(history[:, -1], steps.cpu().numpy(), j)

    def act(self, plan: np.ndarray, i: int, step: np.ndarray) -> np.ndarray:
        """The action for step i of the plan given the current step vectors (B, step_dim) (their observation part)."""
        if self.settings.controller == "actions":
            return np.clip(plan[:, i, self.action], -1.0, 1.0)
        assert self.velocity is not None, "checked in __init__"
        kp, kd = self.settings.pd_gains
        p, v = self.position, self.velocity
        if self.settings.controller == "waypoint":  # steer to the planned position `lookahead` steps ahead, damped
            ahead = self.settings.lookahead or self.frames * self.stride
            w = plan[:, min(i + ahead - 1, plan.shape[1] - 1), p]
            return np.clip(kp * (w - step[:, p]) - kd * step[:, v], -1.0, 1.0)
        # pd: track the planned next position and velocity
        return np.clip(kp * (plan[:, i, p] - step[:, p]) + kd * (plan[:, i, v] - step[:, v]), -1.0, 1.0)


def upsample(now: np.ndarray, steps: np.ndarray, stride: int) -> np.ndarray:
    """A jumpy plan at env resolution: ``steps`` (B, M, D) are the steps ``stride``, 2 ``stride``, ... env steps after
    ``now`` (B, D); the result (B, M * stride, D) holds the step i + 1 env steps ahead at row i, linearly interpolated
    between them. ``stride`` 1 returns ``steps``."""
    if stride == 1:
        return steps
    anchors = np.concatenate([now[:, None], steps], axis=1)  # (B, M + 1, D): anchor m is m * stride steps ahead
    at = np.arange(1, steps.shape[1] * stride + 1) / stride
    lo = np.minimum(np.floor(at).astype(int), steps.shape[1] - 1)
    frac = (at - lo)[None, :, None]
    return (1 - frac) * anchors[:, lo] + frac * anchors[:, lo + 1]


def build_objective(run: LoadedRun, registry):
    """The run's guidance objective (``run.cfg.guidance``: a registered name and its arguments)."""
    from worldsim.config import component_kwargs

    if not run.cfg.get("guidance"):
        raise ConfigError(
            "guidance: the run has no guidance objective; choose one, e.g. worldsim plan RUN guidance=goal"
        )
    return registry.build("guidance", run.cfg.guidance.name, {}, component_kwargs(run.cfg.guidance))


def _make_envs(task, env_id: str | None, n: int):
    import gymnasium as gym

    return gym.vector.SyncVectorEnv([lambda: task.make_env(env_id) for _ in range(n)])


def run_episodes(
    planner: Planner, env_id: str | None, n: int, seed: int, progress: bool = True, max_steps: int | None = None
) -> dict[str, Any]:
    """Run ``n`` episodes of the planner's task in one vector env (``env_id``; None: the task's), planning for all
    of them at once (only their first ``max_steps`` steps when given: plans still cover the rest of the episode)."""
    s, task = planner.settings, planner.task
    envs = _make_envs(task, env_id, n)
    try:
        obs, info = envs.reset(seed=[seed + i for i in range(n)])
        limit = int(envs.envs[0].spec.max_episode_steps)
        goals = task.goal(info)
        f = planner.frames
        step = np.concatenate([np.zeros((n, _width(planner.action))), task.observe(obs)], axis=1)
        history = np.empty((n, f + limit, step.shape[1]))  # steps (a_t, o_{t+1}); the first f are valid now
        history[:, :f] = step[:, None]  # at rest: (0, o_0) x frame_stack
        paths, plans, latencies = [step[:, planner.position].copy()], [], []
        returns, reached = np.zeros(n), np.zeros(n, dtype=bool)
        first_reach, at_goal = np.full(n, -1), np.zeros(n, dtype=int)  # step of the first success (-1: never)
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
                plans.append((t, plan[:, :, planner.position].copy()))
            action = planner.act(plan, i, step)
            obs, reward, _, _, info = envs.step(action)
            i += 1
            returns += reward
            success = task.success(info)
            first_reach[success & ~reached] = t + 1
            at_goal += success
            reached |= success
            step = np.concatenate([action, task.observe(obs)], axis=1)
            history[:, f + t] = step
            paths.append(step[:, planner.position].copy())
    finally:
        envs.close()
    return {"returns": returns, "reached": reached, "final_success": task.success(info), "first_reach": first_reach,
            "at_goal": at_goal,
            "latencies": latencies, "paths": np.stack(paths, axis=1), "plans": plans, "goals": goals, "limit": limit}  # fmt: skip


def normalized_scores(returns: np.ndarray, references: tuple[float, float] | None) -> np.ndarray | None:
    """D4RL's normalized score ``100 * (R - random) / (expert - random)`` of each return, or None without references."""
    if references is None:
        return None
    lo, hi = references
    return 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)


def _mean_stderr(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate_planner(run: LoadedRun, objective, settings: PlanSettings, task, env: str | None = None,
                     out_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Plan ``settings.episodes`` episodes of ``task`` (in ``env``, default the task's) in batches of
    ``settings.batch``; score table, plots, JSON, TensorBoard."""
    env_id = task.env_id if env is None else env
    batches, first = [], None
    for b0 in range(0, settings.episodes, settings.batch):
        n = min(settings.batch, settings.episodes - b0)
        result = run_episodes(Planner(run, objective, settings, task), env_id, n, settings.seed + b0, progress)
        first = first or result
        batches.append(result)
    returns = np.concatenate([b["returns"] for b in batches])
    references = task.reference_returns(env_id)
    scores = normalized_scores(returns, references)
    latencies = [x for b in batches for x in b["latencies"]]
    score_mean, score_stderr = (None, None) if scores is None else _mean_stderr(scores)
    return_mean, return_stderr = _mean_stderr(returns)
    report = {
        "checkpoint": str(run.checkpoint), "step": run.step, "env": env_id, "task": task.name,
        "episodes": int(len(returns)), "batch": min(settings.batch, settings.episodes),
        "score_mean": score_mean, "score_stderr": score_stderr,
        "reference_returns": None if references is None else {"random": references[0], "expert": references[1]},
        "return_mean": return_mean, "return_stderr": return_stderr,
        "success_rate": float(np.concatenate([b["reached"] for b in batches]).mean()),
        "final_success_rate": float(np.concatenate([b["final_success"] for b in batches]).mean()),
        **_goal_times(batches),
        "replan_latency_s": float(np.mean(latencies)), "replans": len(latencies),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "sampling": to_plain(run.cfg.sampling), "guidance": to_plain(run.cfg.guidance) if run.cfg.get("guidance") else None,
        "scores": None if scores is None else scores.tolist(), "returns": returns.tolist(),
        "goals": np.concatenate([b["goals"] for b in batches]).tolist(),
    }  # fmt: skip
    assert first is not None, "planning.episodes >= 1 runs at least one batch"
    drawn = first
    plot = ("plans.png", lambda path: _plot_plans(drawn, task, settings.plots, path, report))
    return write_report(report, "plan", run.folder, run.step, out_dir, files={"plot": plot}, tensorboard=_tensorboard)


def _goal_times(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """When the agents arrive and how long they stay: the first step at the goal (-1: never; its median over the
    episodes that arrive) and the share of the episode's steps spent at the goal."""
    first = np.concatenate([b["first_reach"] for b in batches])
    share = np.concatenate([b["at_goal"] / b["limit"] for b in batches])
    arrived = first[first >= 0]
    return {"first_reach_median": float(np.median(arrived)) if len(arrived) else None,
            "at_goal_share": float(share.mean()), "first_reach": first.tolist(), "at_goal": share.tolist()}  # fmt: skip


def format_plan_table(report: dict[str, Any]) -> str:
    """One row per env: normalized score mean +- standard error over episodes (D4RL's 100 * (R - min) / (max - min));
    the return instead when the task has no reference returns."""
    scored = report["score_mean"] is not None
    mean, err = (
        (report["score_mean"], report["score_stderr"]) if scored else (report["return_mean"], report["return_stderr"])
    )
    head = (f"{'env':<36} {'episodes':>8} {'score' if scored else 'return':>15} {'success':>8} {'at goal at end':>15} "
            f"{'first reach':>12} {'at goal':>8} {'replan latency':>15}")  # fmt: skip
    first = report.get("first_reach_median")
    row = (f"{report['env']:<36} {report['episodes']:>8} {mean:>8.1f} +- {err:<4.1f} "
           f"{100 * report['success_rate']:>7.0f}% {100 * report['final_success_rate']:>14.0f}% "
           f"{'-' if first is None else f'{first:.0f}':>12} {100 * report.get('at_goal_share', 0.0):>7.0f}% "
           f"{1000 * report['replan_latency_s']:>10.0f} ms / {report['batch']}")  # fmt: skip
    return "\n".join([head, "-" * len(head), row])


def _plot_plans(result: dict[str, Any], task, count: int, path: Path, report: dict[str, Any]) -> None:
    """The first ``count`` episodes over the task's picture: executed path, every plan (faint) and the first plan."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, min(count, result["paths"].shape[0]))
    cols = min(4, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False, constrained_layout=True)
    for e in range(rows * cols):
        ax = axes[e // cols][e % cols]
        if e >= count:
            ax.axis("off")
            continue
        task.draw(ax, report["env"])
        for j, (_, p) in enumerate(result["plans"]):
            xy = task.plot_xy(p[e])
            ax.plot(xy[:, 0], xy[:, 1], color="C0", lw=1.5 if j == 0 else 0.6, alpha=0.9 if j == 0 else 0.25)
        path_e = task.plot_xy(result["paths"][e])
        ax.plot(path_e[:, 0], path_e[:, 1], color="C3", lw=1.2)
        ax.plot(path_e[0, 0], path_e[0, 1], "o", color="C3", ms=5)
        goal = task.plot_xy(result["goals"][e])
        ax.plot(goal[0], goal[1], "*", color="gold", mec="k", ms=12)
        value = report["scores"][e] if report["scores"] is not None else report["returns"][e]
        ax.set_title(f"episode {e}: {'score' if report['scores'] is not None else 'return'} {value:.0f}", fontsize=9)
    fig.suptitle(f"{report['env']}: plans (blue, first one bold), executed path (red), goal (star)", fontsize=9)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _tensorboard(report: dict[str, Any]) -> TensorBoardEntries:
    scalars = {"plan/return": report["return_mean"], "plan/success_rate": report["success_rate"],
               "plan/replan_latency_s": report["replan_latency_s"]}  # fmt: skip
    if report["score_mean"] is not None:
        scalars["plan/normalized_score"] = report["score_mean"]
    return TensorBoardEntries(
        scalars=scalars,
        images={"plan/plans": Path(report["plot"])},
    )
