"""Training throughput of a backbone on the toy experiment, against this machine's matmul speed.

Measures (1) fp32 matmul GFLOP/s: the median over several square matmuls, and (2) a full training
step of the real Trainer (batch sampling, Diffusion Forcing loss, backward, grad clip, AdamW, EMA) of each
recipe: tokens/s, env steps/s (what the tokens cover: frames per token x data.stride) and achieved GFLOP/s,
FLOPs counted with torch.utils.flop_counter.FlopCounterMode. Prints a table and writes
benchmarks/results/train_throughput.json. The model and data are built from the recipe's overrides (default
``experiment=toy``) plus any common ones, exactly as ``worldsim train`` builds them; ``--recipe`` several times
compares recipes in one run (e.g. the paper's maze planner against the jumpy one):

    python benchmarks/train_throughput.py [--device cuda] [--batch-size 64] [--steps 50] [data.seq_len=32 ...]
    python benchmarks/train_throughput.py --recipe "experiment=maze2d_large_cpu" --recipe "experiment=maze2d_large_jumpy_cpu"
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import device_name, matmul_gflops, resolve_device, step_flops, sync  # benchmarks/_common.py

from worldsim.config import compose_run, to_plain
from worldsim.experiment import prepare_training
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.settings import TrainerSettings
from worldsim.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"
#: the default recipe: the toy experiment
TOY = ["experiment=toy", "dataset.num_episodes=256"]


def _time_recipe(recipe: list[str], args, device: torch.device, peak: float, registry) -> dict:
    """Median training step of one recipe (config overrides) with the real Trainer; tokens/s, and env steps/s
    (tokens x frames per token x data.stride: what a token covers of an episode)."""
    cfg, settings = compose_run([*recipe, *args.overrides], registry)
    prepared = prepare_training(cfg, settings.data, registry)
    model, seq_len = prepared.model, int(cfg.data.seq_len)
    batch_size = args.batch_size or int(cfg.trainer.batch_size)
    params = sum(q.numel() for q in model.parameters())
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            model,
            prepared.windows,
            settings=TrainerSettings.from_config(
                {
                    **to_plain(cfg.trainer),
                    "steps": args.steps + 10,
                    "batch_size": batch_size,
                    "device": str(device),
                    "precision": args.precision,
                    "compile": args.compile,
                    "warmup_steps": 0,
                    "resume": False,
                }
            ),
            loss=settings.loss,
            run_dir=Path(run_dir),
        )
        for _ in range(3):
            trainer.train_step()
        flops = step_flops(trainer)
        times = []
        for _ in range(args.steps):
            sync(device)
            t0 = time.perf_counter()
            trainer.train_step()
            sync(device)
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = batch_size * seq_len
    env_steps = tokens * int(prepared.tokenizer.frames_per_token) * int(cfg.data.stride)
    achieved = flops / step_s / 1e9
    return {
        "recipe": recipe,
        "backbone": {
            **to_plain(cfg.backbone),
            "token_shape": list(prepared.tokenizer.token_shape),
            "parameters": params,
        },
        "overrides": args.overrides,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "precision": args.precision,
        "compile": args.compile,
        "timed_steps": args.steps,
        "step_ms_median": step_s * 1e3,
        "tokens_per_s": tokens / step_s,
        "env_steps_per_s": env_steps / step_s,
        "flops_per_step": flops,
        "train_gflops": achieved,
        "train_over_matmul": achieved / peak,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=None, help="default: each recipe's trainer.batch_size")
    p.add_argument("--steps", type=int, default=30, help="timed training steps (after 3 warm-up steps)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "auto", "bf16"),
        help="training precision (fp32 default: comparable with the fp32 matmul rate)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument(
        "--recipe",
        action="append",
        default=None,
        metavar="OVERRIDES",
        help="a recipe to time, as space-separated overrides (repeatable: timed one after the other in this run); "
        f"default: {' '.join(TOY)}",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*", help="config overrides of every recipe, e.g. data.seq_len=32")
    args = p.parse_args()

    device = resolve_device(args.device)
    n = 4096 if device.type == "cuda" else 1024
    peak = matmul_gflops(device, n)
    registry = build_registry(get_plugin_manager())
    recipes = [r.split() for r in args.recipe] if args.recipe else [TOY]
    runs = [_time_recipe(recipe, args, device, peak, registry) for recipe in recipes]
    result = {"device": device_name(device), "torch": torch.__version__, "matmul_n": n, "matmul_fp32_gflops": peak,
              **runs[0], "recipes": runs}  # fmt: skip
    print(f"device: {result['device']}; fp32 matmul {n}x{n}: {peak:,.1f} GFLOP/s")
    head = (f"{'recipe':<44} {'params':>9} {'batch x len':>11} {'step ms':>8} {'tokens/s':>9} {'env steps/s':>11} "
            f"{'GFLOP/s':>8} {'train / matmul':>14}")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for r in runs:
        shape = f"{r['batch_size']} x {r['seq_len']}"
        print(f"{' '.join(r['recipe'])[:44]:<44} {r['backbone']['parameters']:>9,} "
              f"{shape:>11} {r['step_ms_median']:>8.1f} {r['tokens_per_s']:>9,.0f} "
              f"{r['env_steps_per_s']:>11,.0f} {r['train_gflops']:>8.1f} {100 * r['train_over_matmul']:>13.1f}%")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
