"""Planning speed: replan latency at batch 1 and plans per second at larger batches, split by stage, for each
planner, next to the official Diffusion Forcing code's replan.

One replan is one ``Planner.plan`` call: encode the history, sample the plan with the run's scheduling
matrix and goal guidance (per matrix row a forward pass of the backbone, and a backward pass for a guidance
gradient taken through the model, ``planning.guidance_gradient=model``; for every candidate plan), decode, and
keep the best candidate. The split: time inside the backbone's forward passes, inside its backward passes, and
the rest (sampler arithmetic, guidance objective, committing finished tokens to the cache, encode / decode).
``--runs`` names trained maze2d runs or shipped planners (default: every shipped planner; without any, an
untrained model built as ``worldsim train experiment=maze2d_umaze`` builds it: speed does not depend on the
weights). Positions and goals are drawn in random free cells of the maze; the
plan is the one made at the start of an episode (the whole episode, or the backbone's window).

The ``official`` row (``--official``, on by default) times one replan of the official code's planner
(benchmarks/_official_df.py: a reimplementation of the ``paper`` branch's per-token sampling loop, random
weights) at batch 1, on the same plan (tokens, steps, uncertainty scale), with the official network widened
or narrowed (``network_size``) to the parameter count nearest the planner's. It is slow (a Python loop over
every token of every row), so it runs ``--official-repeats`` times (default 1). Prints one table per planner
and writes benchmarks/results/planning.json.

    python benchmarks/planning.py [--runs maze2d-umaze,maze2d-large] [--batches 1,32,100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from _common import device_name  # benchmarks/_common.py

from worldsim.config import compose_config
from worldsim.diffusion.model import DiffusionModel
from worldsim.experiment import LoadedRun, build_model, build_tokenizer, load_run
from worldsim.planning import Planner, build_objective, build_task
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.settings import PlanSettings

RESULTS = Path(__file__).resolve().parent / "results" / "planning.json"


class StageClock:
    """Accumulates the wall time of the backbone's forward and backward passes through module hooks."""

    def __init__(self, module: torch.nn.Module):
        self.forward = self.backward = 0.0
        self._t0 = self._b0 = 0.0
        module.register_forward_pre_hook(lambda *a: self._start("_t0"))
        module.register_forward_hook(lambda *a: self._stop("_t0", "forward"))
        module.register_full_backward_pre_hook(lambda *a: self._start("_b0"))
        module.register_full_backward_hook(lambda *a: self._stop("_b0", "backward"))

    def _start(self, slot: str) -> None:
        setattr(self, slot, time.perf_counter())

    def _stop(self, slot: str, total: str) -> None:
        setattr(self, total, getattr(self, total) + time.perf_counter() - getattr(self, slot))

    def reset(self) -> None:
        self.forward = self.backward = 0.0


def _untrained_run(overrides: list[str], registry) -> LoadedRun:
    cfg = compose_config(["experiment=maze2d_umaze", *overrides], registry)
    tokenizer = build_tokenizer(cfg, registry, (6,))
    tokenizer.fit(torch.randn(1000, 6))
    model: DiffusionModel = build_model(cfg, registry, tokenizer, 0).eval()
    return LoadedRun(cfg, model, tokenizer, (6,), 0, Path("untrained"), 0)


def _trained(name: str, overrides: list[str], registry) -> LoadedRun:
    from worldsim.config import apply_overrides

    run = load_run(name, registry)
    run.cfg = apply_overrides(run.cfg, overrides, allowed=("planning", "sampling", "guidance", "task"))
    return run


def _in_open_cells(maze: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n positions (row, col) in random free cells of the maze, within 0.3 of the cell's centre."""
    import worldsim_envs

    cells = np.asarray(worldsim_envs.empty_cells(maze))
    return cells[rng.integers(len(cells), size=n)] + rng.uniform(-0.3, 0.3, (n, 2))


def _time_planner(planner: Planner, clock: StageClock, batches: list[int], repeats: int, episode: int) -> list[dict]:
    f, maze = planner.frames, str(planner.run.cfg.dataset.maze)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        where = np.repeat(_in_open_cells(maze, batch, rng)[:, None], f, axis=1)
        history = np.concatenate([rng.uniform(-1, 1, (batch, f, 2)), where, rng.uniform(-1, 1, (batch, f, 2))], axis=2)
        goals = _in_open_cells(maze, batch, rng)
        gen = torch.Generator().manual_seed(0)
        first = planner.plan(history, goals, episode, gen)  # warm-up
        # with planning.warm_start, a replan starts from the rest of the plan before it, as in an episode
        step = planner.settings.open_loop
        previous = first[:, step:] if planner.settings.warm_start is not None else None
        remaining = episode - step if previous is not None else episode
        times, fwd, bwd = [], [], []
        for _ in range(repeats):
            clock.reset()
            t0 = time.perf_counter()
            planner.plan(history, goals, remaining, gen, previous)
            times.append(time.perf_counter() - t0)
            fwd.append(clock.forward)
            bwd.append(clock.backward)
        total = statistics.median(times)
        rows.append({
            "batch": batch, "latency_s": total, "plans_per_s": batch / total,
            "forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd),
            "rest_s": total - statistics.median(fwd) - statistics.median(bwd),
        })  # fmt: skip
    return rows


def _time_official(run: LoadedRun, horizon: int, repeats: int) -> dict:
    """One official-code replan at batch 1 on the same plan, with the parameter count nearest the planner's."""
    from _official_df import build_official, official_replan, parameter_count  # benchmarks/_official_df.py

    ours = parameter_count(run.model.backbone)
    x_dim = int(run.tokenizer.token_shape[0])
    size = min(range(4, 65, 2), key=lambda n: abs(parameter_count(build_official(x_dim, 128, n)) - ours))
    model = build_official(x_dim, 128, size)
    s = run.cfg.sampling
    kw = dict(horizon=horizon, sampling_timesteps=int(s.steps), uncertainty_scale=float(s.uncertainty_scale),
              guidance_scale=1.0, generator=torch.Generator().manual_seed(0))  # fmt: skip
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        official_replan(model, torch.zeros(1, 128), **kw)
        times.append(time.perf_counter() - t0)
    return {"network_size": size, "parameters": parameter_count(model), "planner_parameters": ours,
            "latency_s": statistics.median(times), "repeats": repeats}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--runs", default=None, help="comma-separated runs, shipped planners or 'untrained' (default: the shipped ones)"
    )
    p.add_argument("--batches", default="1,32,100", help="agents planned together, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="timed replans per batch size (after one warm-up)")
    p.add_argument("--official", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the official code's replan at batch 1")  # fmt: skip
    p.add_argument("--official-repeats", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("overrides", nargs="*", help="overrides: any key for the untrained model; planning.* and sampling.* "
                   "for trained runs, e.g. sampling.steps=20 planning.warm_start=0.3")  # fmt: skip
    args = p.parse_args()

    from worldsim.pretrained import shipped

    registry = build_registry(get_plugin_manager())
    names = args.runs.split(",") if args.runs else [n for n in shipped() if n.startswith("maze2d-")]  # the planners
    names = names or ["untrained"]
    runs = [(n, _untrained_run(args.overrides, registry) if n == "untrained" else _trained(n, args.overrides, registry))
            for n in names]  # fmt: skip
    batches = [int(b) for b in args.batches.split(",")]
    results = []
    for name, run in runs:
        settings = PlanSettings.from_config(run.cfg.planning)
        task = build_task(run, registry)
        planner = Planner(run, build_objective(run, registry), settings, task)
        episode = gym.spec(task.env_id).max_episode_steps  # a plan at the start of an episode
        horizon = planner.horizon_tokens(episode)
        rows = _time_planner(planner, StageClock(run.model.backbone), batches, args.repeats, episode)
        official = _time_official(run, horizon, args.official_repeats) if args.official else None
        s = run.cfg.sampling
        print(f"\n{name}: backbone {run.cfg.backbone.name}; plan of {horizon} tokens x {planner.frames} steps after "
              f"{settings.context} context token(s), {settings.candidates} candidate(s) per agent; {s.steps} DDIM "
              f"steps, {s.schedule} schedule (uncertainty {s.uncertainty_scale}), warm start {settings.warm_start}, "
              f"guidance {run.cfg.guidance.name} at {settings.guidance_scale} ({settings.guidance_gradient} gradient); median of "
              f"{args.repeats} replans")  # fmt: skip
        head = f"{'':<10} {'batch':>6} {'latency':>10} {'plans/s':>9} {'backbone fwd':>13} {'backbone bwd':>13} {'rest':>8}"
        print(head)
        print("-" * len(head))
        for r in rows:
            print(f"{'worldsim':<10} {r['batch']:>6} {1000 * r['latency_s']:>8.0f}ms {r['plans_per_s']:>9.2f} "
                  f"{100 * r['forward_s'] / r['latency_s']:>12.0f}% {100 * r['backward_s'] / r['latency_s']:>12.0f}% "
                  f"{100 * r['rest_s'] / r['latency_s']:>7.0f}%")  # fmt: skip
        if official:
            ratio = official["latency_s"] / rows[0]["latency_s"] if rows and rows[0]["batch"] == 1 else float("nan")
            official["ratio_to_worldsim_batch1"] = ratio
            print(f"{'official':<10} {1:>6} {1000 * official['latency_s']:>8.0f}ms {1 / official['latency_s']:>9.2f}   "
                  f"(network_size {official['network_size']}: {official['parameters']:,} parameters against "
                  f"{official['planner_parameters']:,}; {ratio:.0f}x worldsim's batch-1 latency)")  # fmt: skip
        results.append({"name": name, "run": str(run.checkpoint), "backbone": run.cfg.backbone.name,
                        "horizon_tokens": horizon, "frames_per_token": planner.frames, "sampling_steps": int(s.steps),
                        "uncertainty_scale": float(s.uncertainty_scale), "schedule": s.schedule,
                        "candidates": settings.candidates, "warm_start": settings.warm_start,
                        "guidance": run.cfg.guidance.name, "guidance_scale": settings.guidance_scale,
                        "guidance_gradient": settings.guidance_gradient, "rows": rows, "official": official})  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
                               "planners": results}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
