"""Training throughput of a backbone on the toy experiment, against this machine's matmul speed.

Measures (1) fp32 matmul GFLOP/s: the median over several square matmuls, and (2) a full training
step of the real Trainer (batch sampling, Diffusion Forcing loss, backward, grad clip, AdamW, EMA):
tokens/s and achieved GFLOP/s, FLOPs counted with torch.utils.flop_counter.FlopCounterMode. Prints
a table and writes benchmarks/results/train_throughput.json. The model and data are built from
``experiment=toy`` plus any config overrides given, exactly as ``worldsim train`` builds them.

    python benchmarks/train_throughput.py [--device cuda] [--batch-size 64] [--steps 50] [data.seq_len=32 backbone.hidden=512 ...]
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

from worldsim.config import compose_config, to_plain
from worldsim.experiment import prepare_training
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="timed training steps (after 3 warm-up steps)")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "auto", "bf16"),
        help="training precision (fp32 default: comparable with the fp32 matmul rate)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*", help="config overrides on top of experiment=toy, e.g. data.seq_len=32")
    args = p.parse_args()

    device = resolve_device(args.device)
    n = 4096 if device.type == "cuda" else 1024
    peak = matmul_gflops(device, n)

    registry = build_registry(get_plugin_manager())
    cfg = compose_config(["experiment=toy", "dataset.num_episodes=256", *args.overrides], registry)
    prepared = prepare_training(cfg, registry)
    model, seq_len = prepared.model, int(cfg.data.seq_len)
    params = sum(q.numel() for q in model.parameters())
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            model,
            prepared.windows,
            trainer_cfg={
                **to_plain(cfg.trainer),
                "steps": args.steps + 10,
                "batch_size": args.batch_size,
                "device": str(device),
                "precision": args.precision,
                "compile": args.compile,
                "warmup_steps": 0,
                "resume": False,
            },
            diffusion_cfg=to_plain(cfg.diffusion),
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
    tokens = args.batch_size * seq_len
    achieved = flops / step_s / 1e9
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "matmul_n": n,
        "matmul_fp32_gflops": peak,
        "backbone": {
            **to_plain(cfg.backbone),
            "token_shape": list(prepared.tokenizer.token_shape),
            "parameters": params,
        },
        "overrides": args.overrides,
        "batch_size": args.batch_size,
        "seq_len": seq_len,
        "precision": args.precision,
        "compile": args.compile,
        "timed_steps": args.steps,
        "step_ms_median": step_s * 1e3,
        "tokens_per_s": tokens / step_s,
        "flops_per_step": flops,
        "train_gflops": achieved,
        "train_over_matmul": achieved / peak,
    }
    rows = [
        ("device", result["device"]),
        (f"fp32 matmul {n}x{n} (GFLOP/s)", f"{peak:,.1f}"),
        (f"{cfg.backbone.name} params", f"{params:,}"),
        ("token shape", str(tuple(prepared.tokenizer.token_shape))),
        ("batch x seq_len", f"{args.batch_size} x {seq_len} ({args.precision}{', compiled' if args.compile else ''})"),
        ("train step (ms, median)", f"{step_s * 1e3:.2f}"),
        ("train tokens/s", f"{tokens / step_s:,.0f}"),
        ("FLOPs per step (GFLOP)", f"{flops / 1e9:.3f}"),
        ("train achieved (GFLOP/s)", f"{achieved:,.1f}"),
        ("train / matmul", f"{100 * achieved / peak:.1f}%"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
