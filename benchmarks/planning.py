"""Planning speed: replan latency at batch 1 and plans per second at larger batches, split by stage.

One replan is one ``Planner.plan`` call: encode the history, sample the whole plan with the pyramid
schedule and goal guidance (a forward and a backward pass of the backbone per matrix row), decode. The
split: time inside the backbone's forward passes, inside its backward passes (the guidance gradient),
and the rest (sampler arithmetic, guidance objective, encode / decode). The model is the one of
``--run`` (a trained maze2d run) or, by default, an untrained model built exactly as
``worldsim train experiment=maze2d_umaze`` builds it (speed does not depend on the weights). Histories
and goals are drawn at random inside the maze; the plan is the one made at the start of an episode
(the whole episode, or the backbone's window). Prints a table and writes benchmarks/results/planning.json.

    python benchmarks/planning.py [--run runs/maze2d_umaze] [--batches 1,32,128] [--repeats 5] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from _common import device_name  # benchmarks/_common.py

from worldsim.config import compose_config
from worldsim.diffusion.model import DiffusionModel
from worldsim.experiment import LoadedRun, build_model, build_tokenizer, load_run
from worldsim.planning import Planner, build_objective
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a trained maze2d run (default: an untrained maze2d_umaze model)")
    p.add_argument("--batches", default="1,32,128", help="plans sampled together, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="timed replans per batch size (after one warm-up)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("overrides", nargs="*", help="config overrides for the untrained model, e.g. sampling.steps=20")
    args = p.parse_args()

    registry = build_registry(get_plugin_manager())
    run = load_run(args.run, registry) if args.run else _untrained_run(args.overrides, registry)
    objective = build_objective(run, registry)
    settings = PlanSettings.from_config(run.cfg.planning)
    planner = Planner(run, objective, settings)
    clock = StageClock(run.model.backbone)
    f = planner.frames
    import worldsim_envs

    episode = worldsim_envs.max_episode_steps(str(run.cfg.dataset.maze))  # a plan at the start of an episode
    horizon = planner.horizon_tokens(episode)
    rng = np.random.default_rng(0)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        history = np.concatenate([rng.uniform(-1, 1, (batch, f, 2)), rng.uniform(1, 3, (batch, f, 2)),
                                  rng.uniform(-1, 1, (batch, f, 2))], axis=2)  # fmt: skip
        goals = rng.uniform(1, 3, (batch, 2))
        gen = torch.Generator().manual_seed(0)
        planner.plan(history, goals, episode, gen)  # warm-up
        times, fwd, bwd = [], [], []
        for _ in range(args.repeats):
            clock.reset()
            t0 = time.perf_counter()
            planner.plan(history, goals, episode, gen)
            times.append(time.perf_counter() - t0)
            fwd.append(clock.forward)
            bwd.append(clock.backward)
        total = statistics.median(times)
        rows.append({
            "batch": batch, "latency_s": total, "plans_per_s": batch / total,
            "forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd),
            "rest_s": total - statistics.median(fwd) - statistics.median(bwd),
        })  # fmt: skip

    s = run.cfg.sampling
    print(f"device: {device_name(torch.device('cpu'))}; backbone {run.cfg.backbone.name}; plan of {horizon} tokens x {f} steps "
          f"after {settings.context} context token(s); {s.steps} DDIM steps, {s.schedule} schedule, guidance on; "
          f"median of {args.repeats} replans")  # fmt: skip
    head = f"{'batch':>6} {'latency':>10} {'plans/s':>9} {'backbone fwd':>13} {'backbone bwd':>13} {'rest':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['batch']:>6} {1000 * r['latency_s']:>8.0f}ms {r['plans_per_s']:>9.2f} "
              f"{100 * r['forward_s'] / r['latency_s']:>12.0f}% {100 * r['backward_s'] / r['latency_s']:>12.0f}% "
              f"{100 * r['rest_s'] / r['latency_s']:>7.0f}%")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device_name(torch.device("cpu")), "run": args.run, "backbone": run.cfg.backbone.name,
                               "horizon_tokens": horizon, "frames_per_token": f, "sampling_steps": int(s.steps),
                               "schedule": s.schedule, "threads": torch.get_num_threads(), "rows": rows}, indent=2))  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
