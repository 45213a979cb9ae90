"""Seed sweeps: the protocol that tells a planning lever from a draw.

One CPU training of a planner is a draw: the same recipe lands far apart at different ``run.seed`` values. A sweep
trains one recipe (a list of config overrides) at N seeds and evaluates every seed on the same episodes (one
``planning.seed``, the env's reset seeds ``seed .. seed + episodes - 1``), so recipes and planning settings compare
episode by episode. Its folder::

    sweeps/NAME/
      sweep.json                 the recipe (training overrides) and each evaluation label's planning overrides
      seed<S>/                   the run of run.seed=S (config, checkpoints, TensorBoard)
      seed<S>/eval-<LABEL>/      plan.json and plans.png of one evaluation
      summary-<LABEL>.json       per seed and over seeds
      seed<S>/eval-<LABEL>-step<N>/, summary-<LABEL>-step<N>.json
                                 the same for the checkpoints of step N (``--step``: a learning curve)

A killed sweep resumes where it stopped: a run continues from its newest checkpoint, a finished run is not
trained again, and an evaluation whose plan.json matches (step, episodes, seed) is not run again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.errors import ConfigError
from worldsim.runs import write_text_atomic

SWEEP_FILE = "sweep.json"


def sweep_folder(name: str) -> Path:
    """``sweeps/NAME``, or NAME itself when it is a path (holds a ``/``)."""
    return Path(name) if "/" in name else Path("sweeps") / name


def _read_recipe(folder: Path) -> dict[str, Any] | None:
    file = folder / SWEEP_FILE
    if not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: not a sweep file ({exc.msg}); delete it or choose another sweep name") from None


def recipe(folder: Path, overrides: Sequence[str], label: str, plan_overrides: Sequence[str]) -> dict[str, Any]:
    """The sweep's recipe, written on first use; a later call must name the same overrides (or none: the
    recorded ones), and a label the same planning overrides."""
    known = _read_recipe(folder)
    if known is None:
        if not overrides:
            raise ConfigError(f"sweep {folder}: a new sweep needs its recipe: experiment=NAME and key=value overrides")
        known = {"overrides": list(overrides), "evals": {}}
    elif overrides and list(overrides) != known["overrides"]:
        raise ConfigError(
            f"sweep {folder}: it was started with {' '.join(known['overrides'])}, not {' '.join(overrides)}; "
            f"give no overrides to resume it, or choose another sweep name"
        )
    evals = known.setdefault("evals", {})
    if label in evals and evals[label] != list(plan_overrides):
        raise ConfigError(
            f"--label {label}: it was evaluated with {evals[label] or 'no overrides'}, not {list(plan_overrides)}; "
            f"choose another label"
        )
    evals[label] = list(plan_overrides)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / SWEEP_FILE, json.dumps(known, indent=2) + "\n")
    return known


def _trained_step(run_dir: Path) -> int:
    from worldsim.checkpoint import load_checkpoint
    from worldsim.runs import RunFolder

    last = RunFolder(run_dir).last
    return int(load_checkpoint(last).get("step", 0)) if last.exists() else 0


def _evaluated(out: Path, step: int, episodes: int, seed: int) -> dict[str, Any] | None:
    file = out / "plan.json"
    if not file.exists():
        return None
    report = json.loads(file.read_text())
    s = report.get("settings", {})
    same = report.get("step") == step and s.get("episodes") == episodes and s.get("seed") == seed
    return report if same else None


def run_sweep(
    folder: Path,
    overrides: Sequence[str],
    *,
    seeds: Sequence[int],
    episodes: int,
    eval_seed: int,
    label: str,
    plan_overrides: Sequence[str],
    registry,
    step: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Train every seed of the recipe (resuming), evaluate each on the same episodes, write and return the summary.
    ``step``: evaluate each seed's checkpoint of that step instead of its last (one point of a learning curve)."""
    from worldsim.config import compose_run
    from worldsim.planning import plan_run
    from worldsim.runs import check_writable
    from worldsim.train import train

    check_writable(folder, "sweep")
    known = recipe(folder, overrides, label, plan_overrides)
    reports, suffix = {}, ""
    for seed in seeds:
        run_dir = folder / f"seed{seed}"
        cfg, settings = compose_run([*known["overrides"], f"run.seed={seed}", f"run.dir={run_dir}"], registry)
        steps = settings.trainer.steps
        if _trained_step(run_dir) < steps:
            log(f"sweep {folder.name}: training seed {seed} ({steps} steps) in {run_dir}")
            train(cfg, registry, settings)
        model, suffix = _checkpoint_at(run_dir, step, steps, int(settings.trainer.ckpt_every))
        out = run_dir / f"eval-{label}{suffix}"
        report = _evaluated(out, steps if step is None else step, episodes, eval_seed)
        if report is None:
            log(f"sweep {folder.name}: evaluating seed {seed}{suffix.replace('-', ' at ')} on {episodes} episodes "
                f"from seed {eval_seed} ({label})")  # fmt: skip
            plan = [*plan_overrides, f"planning.episodes={episodes}", f"planning.seed={eval_seed}"]
            report = plan_run(model, plan, registry, out_dir=out, progress=False)
        reports[seed] = report
    summary = summarize(reports)
    summary.update(sweep=str(folder), label=label + suffix, recipe=known["overrides"], planning=list(plan_overrides))
    write_text_atomic(folder / f"summary-{label}{suffix}.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _checkpoint_at(run_dir: Path, step: int | None, steps: int, every: int) -> tuple[Path, str]:
    """What a sweep evaluates for ``--step``: the run (its last checkpoint) and no name suffix when ``step`` is None
    or the recipe's last step, else that step's checkpoint and ``-step<N>``."""
    if step is None or step == steps:
        return run_dir, ""
    from worldsim.runs import RunFolder

    file = RunFolder(run_dir).step_checkpoint(step)
    if step > steps or not file.is_file():
        raise ConfigError(f"--step: {run_dir} has no checkpoint of step {step}; the recipe trains {steps} steps "
                          f"and keeps one every trainer.ckpt_every={every}")  # fmt: skip
    return file, f"-step{step}"


def _values(report: dict[str, Any]) -> np.ndarray:
    return np.asarray(report["scores"] if report.get("scores") is not None else report["returns"], dtype=np.float64)


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def summarize(reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per seed: mean +- standard error over episodes, success, first reach, time at goal; over seeds: the mean of
    the seeds' means, their standard deviation and range. ``per_episode``: each episode's value averaged over seeds
    (what paired differences compare)."""
    first = next(iter(reports.values()))
    rows = []
    for seed, r in sorted(reports.items()):
        v = _values(r)
        rows.append({"seed": seed, "mean": float(v.mean()), "stderr": _stderr(v), "success": r["success_rate"],
                     "first_reach_median": r.get("first_reach_median"), "at_goal_share": r.get("at_goal_share"),
                     "step": r["step"]})  # fmt: skip
    means = np.array([row["mean"] for row in rows])
    per_episode = np.mean([_values(r) for r in reports.values()], axis=0)
    return {
        "metric": "score" if first.get("scores") is not None else "return",
        "env": first["env"], "episodes": first["episodes"], "eval_seed": first["settings"]["seed"],
        "seeds": rows, "mean": float(means.mean()), "seed_std": float(means.std(ddof=1)) if len(means) > 1 else 0.0,
        "seed_min": float(means.min()), "seed_max": float(means.max()), "per_episode": per_episode.tolist(),
    }  # fmt: skip


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recipe a against recipe b on the same episodes: the difference of their seed means with the standard error
    that the spread between seeds gives (the test a lever must pass; for two evaluations of one sweep's trained
    seeds, the standard error of the per-seed differences, since each seed is its own pair), and the per-episode
    paired difference of the seed-averaged values (mean +- standard error over episodes)."""
    for key in ("env", "episodes", "eval_seed"):
        if a[key] != b[key]:
            raise ConfigError(f"--against: the sweeps differ in {key} ({a[key]!r} against {b[key]!r}); "
                              f"paired differences need the same episodes")  # fmt: skip
    na, nb = len(a["seeds"]), len(b["seeds"])
    same_models = a["sweep"] == b["sweep"] and [r["seed"] for r in a["seeds"]] == [r["seed"] for r in b["seeds"]]
    if same_models:  # two evaluations of the same trained seeds: the difference is paired seed by seed
        per_seed = np.array([ra["mean"] - rb["mean"] for ra, rb in zip(a["seeds"], b["seeds"], strict=True)])
        seed_se = _stderr(per_seed) if na > 1 else float("nan")
    else:
        seed_se = math.sqrt(a["seed_std"] ** 2 / na + b["seed_std"] ** 2 / nb) if na > 1 and nb > 1 else float("nan")
    d = np.asarray(a["per_episode"]) - np.asarray(b["per_episode"])
    return {"difference": a["mean"] - b["mean"], "seed_stderr": seed_se, "paired_by_seed": same_models,
            "episode_mean": float(d.mean()), "episode_stderr": _stderr(d)}  # fmt: skip


def format_summary(summary: dict[str, Any], against: dict[str, Any] | None = None) -> str:
    """The sweep's table: a row per seed, the mean and spread over seeds, and the paired difference to ``against``."""
    m = summary["metric"]
    lines = [f"sweep {summary['sweep']} ({summary['label']}): {summary['env']}, {summary['episodes']} episodes "
             f"from seed {summary['eval_seed']}, the same for every seed",
             f"{'seed':>6} {'step':>7} {m:>15} {'success':>8} {'first reach':>12} {'at goal':>8}"]  # fmt: skip
    lines.append("-" * len(lines[-1]))
    for r in summary["seeds"]:
        first = "-" if r["first_reach_median"] is None else f"{r['first_reach_median']:.0f}"
        at_goal = "-" if r["at_goal_share"] is None else f"{100 * r['at_goal_share']:.0f}%"
        lines.append(f"{r['seed']:>6} {r['step']:>7} {r['mean']:>8.1f} +- {r['stderr']:<4.1f} "
                     f"{100 * r['success']:>7.0f}% {first:>12} {at_goal:>8}")  # fmt: skip
    lines.append(f"over {len(summary['seeds'])} seeds: mean {summary['mean']:.1f}, std {summary['seed_std']:.1f} "
                 f"(range {summary['seed_min']:.1f} .. {summary['seed_max']:.1f})")  # fmt: skip
    if against is not None:
        p = paired(summary, against)
        lines.append(f"against {against['sweep']} ({against['label']}, mean {against['mean']:.1f}): "
                     f"{p['difference']:+.1f} +- {p['seed_stderr']:.1f} "
                     f"({'paired by seed: the same trained models' if p['paired_by_seed'] else 'seed spread'}); per episode "
                     f"{p['episode_mean']:+.1f} +- {p['episode_stderr']:.1f}")  # fmt: skip
    return "\n".join(lines)


def read_summary(name: str, label: str) -> dict[str, Any]:
    """The summary of a finished sweep evaluation (``--against``)."""
    file = sweep_folder(name) / f"summary-{label}.json"
    if not file.exists():
        raise ConfigError(f"--against: {file} not found; run that sweep (with --label {label}) first")
    return json.loads(file.read_text())
