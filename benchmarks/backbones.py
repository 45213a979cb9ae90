"""Backbones side by side: training speed, rollout speed with and without the cache, peak memory.

For every backbone (default: every registered one) and token shape (state tokens (16,), the toy
experiment's shape, and video latents (4, 8, 8); a backbone whose factory rejects a shape is skipped
for it, with the reason), on random data and an untrained model:

- training: a full step of the real Trainer (Diffusion Forcing loss, backward, grad clip, AdamW, EMA)
  in fp32 on windows of ``--seq-len`` tokens: tokens/s, FLOPs per step (FlopCounterMode) and achieved
  GFLOP/s against this machine's measured fp32 matmul rate;
- rollout: ``worldsim.diffusion.sampling.sample`` after ``--context`` clean tokens, for each horizon,
  by an untrained model whose weights are randomly perturbed (as in worldsim.testing: zero-initialized
  output layers would make every output 0 and the comparison below trivially exact),
  with and without the backbone's cache (window = max_tokens = ``--seq-len``, pyramid schedule,
  ``--chunk-size`` tokens per chunk, ``--sampling-steps`` DDIM steps, the same generator seed for both):
  generated tokens/s and the largest |cached - uncached| difference of the outputs;
- peak memory of each phase: on CUDA torch.cuda.max_memory_allocated; on CPU the growth of the
  process's peak resident set size (Linux VmHWM, reset before each phase through /proc/self/clear_refs,
  after returning freed heap to the OS with glibc's malloc_trim; elsewhere the ru_maxrss growth). Each
  (backbone, shape) runs in its own fresh process, after a throwaway training step of a one-layer
  stand-in that loads libraries and kernels, so the peaks belong to the backbone.

Prints a training table and a rollout table and writes benchmarks/results/backbones.json.

    python benchmarks/backbones.py [--backbones gru,dit,unet3d] [--device cuda] [--steps 20] [--arg dit.width=256 ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from _common import (  # benchmarks/_common.py
    PeakMemory,
    device_name,
    matmul_gflops,
    median_seconds,
    perturb_,
    resolve_device,
    sampling_settings,
    step_flops,
    table,
    timed,
)

RESULTS = Path(__file__).resolve().parent / "results" / "backbones.json"
SHAPES = {"state": (16,), "latent": (4, 8, 8)}
RESULT_TAG = "BACKBONE_RESULT "


# -- one backbone on one token shape (runs in a fresh process) --------------------------------------
def _registry():
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    return build_registry(get_plugin_manager())


def _build(job: dict, registry, device: torch.device):
    from worldsim.diffusion.model import DiffusionModel

    derived = {"token_shape": tuple(job["shape"]), "cond_dim": job["cond_dim"], "max_tokens": job["seq_len"]}
    torch.manual_seed(job["seed"])
    backbone = registry.build("backbone", job["backbone"], derived, job["kwargs"])
    return DiffusionModel(backbone, schedule="cosine", prediction="x0").to(device)


def _train(job: dict, model, windows, device: torch.device, memory: PeakMemory) -> dict:
    from worldsim.config import base_config, to_plain
    from worldsim.diffusion.loss import LossSettings
    from worldsim.settings import TrainerSettings
    from worldsim.trainer import Trainer

    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            model, windows,
            settings=TrainerSettings.from_config({**to_plain(base_config().trainer), "steps": job["steps"] + 10, "batch_size": job["batch_size"], "device": str(device),
                         "precision": "fp32", "warmup_steps": 0, "resume": False}),
            loss=LossSettings.from_config({**to_plain(base_config().diffusion), "schedule": "cosine", "prediction": "x0"}),
            run_dir=Path(run_dir), seed=job["seed"],
        )  # fmt: skip
        for _ in range(2):
            trainer.train_step()
        flops = step_flops(trainer)
        step_s = median_seconds(trainer.train_step, device, job["steps"], warmup=0)
        peak = memory.peak_mib()
    return {
        "parameters": params,
        "step_ms_median": step_s * 1e3,
        "tokens_per_s": job["batch_size"] * job["seq_len"] / step_s,
        "flops_per_step": flops,
        "gflops": flops / step_s / 1e9,
        "peak_mib": peak,
    }


def _rollout(job: dict, registry, device: torch.device, memory: PeakMemory) -> dict:
    from worldsim.diffusion.sampling import sample

    memory.start()
    model = _build(job, registry, device).eval()
    # Leave the init point, as worldsim.testing does: zero-initialized output layers (adaLN-Zero) would
    # make every output 0 and the cached / uncached comparison trivially exact.
    gen = torch.Generator().manual_seed(job["seed"])
    perturb_(model, gen)
    B, n_ctx, shape, cond_dim = job["rollout_batch"], job["context"], tuple(job["shape"]), job["cond_dim"]
    longest = max(job["horizons"])
    context = torch.randn(B, n_ctx, *shape, generator=gen).to(device)
    cond_all = torch.randn(B, n_ctx + longest, cond_dim, generator=gen).to(device) if cond_dim else None
    window = job["seq_len"] if model.max_tokens is None else min(job["seq_len"], model.max_tokens)
    modes = [True, False] if model.supports_cache else [False]

    def run(horizon: int, use_cache: bool) -> tuple[torch.Tensor, float]:
        cond = None if cond_all is None else cond_all[:, : n_ctx + horizon]
        settings = sampling_settings(steps=job["sampling_steps"], schedule="pyramid", chunk_size=job["chunk_size"],
                                     use_cache=use_cache)  # fmt: skip
        return timed(lambda: sample(
            model, settings, horizon=horizon, context=context, cond=cond, window=window,
            generator=torch.Generator().manual_seed(job["seed"]),
        ), device)  # fmt: skip

    for use_cache in modes:  # warm up kernels and allocator
        run(min(job["chunk_size"], longest), use_cache)
    rows = []
    for horizon in job["horizons"]:
        outs, row = {}, {"horizon": horizon}
        for use_cache in modes:
            outs[use_cache], seconds = run(horizon, use_cache)
            row["cached_tokens_per_s" if use_cache else "uncached_tokens_per_s"] = B * horizon / seconds
        row["max_abs_diff"] = float((outs[True] - outs[False]).abs().max()) if True in outs else None
        rows.append(row)
    return {"window": window, "cache": model.supports_cache, "horizons": rows, "peak_mib": memory.peak_mib()}


class _Probe(torch.nn.Module):
    """A one-layer stand-in backbone: a throwaway training step with it loads the libraries, thread pools
    and kernels that any first step loads, so the measured peaks belong to the backbone."""

    causal, max_tokens = False, None

    def __init__(self, width: int):
        super().__init__()
        self.lin = torch.nn.Linear(width, width)

    def forward(self, x, k, cond=None, cache=None):
        return self.lin(x) * (1 + k.reshape(*k.shape, *[1] * (x.dim() - 2)))


def _warm_up(windows, job: dict, device: torch.device) -> None:
    from worldsim.config import base_config, to_plain
    from worldsim.diffusion.loss import LossSettings
    from worldsim.diffusion.model import DiffusionModel
    from worldsim.settings import TrainerSettings
    from worldsim.trainer import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            DiffusionModel(_Probe(job["shape"][-1]), schedule="cosine"), windows,
            settings=TrainerSettings.from_config({**to_plain(base_config().trainer), "steps": 2, "batch_size": 2, "device": str(device), "precision": "fp32", "warmup_steps": 0,
                         "resume": False}),
            loss=LossSettings.from_config({**to_plain(base_config().diffusion), "schedule": "cosine"}), run_dir=Path(run_dir),
        )  # fmt: skip
        trainer.train_step()
        step_flops(trainer)
    del trainer
    gc.collect()


def worker(job: dict) -> dict:
    from worldsim.data.windows import TokenWindows

    device = torch.device(job["device"])
    registry = _registry()
    gen = torch.Generator().manual_seed(job["seed"])
    length, shape, cond_dim = 2 * job["seq_len"], tuple(job["shape"]), job["cond_dim"]
    episodes = [torch.randn(length, *shape, generator=gen) for _ in range(8)]
    conds = [torch.randn(length, cond_dim, generator=gen) for _ in range(8)] if cond_dim else None
    windows = TokenWindows(episodes, job["seq_len"], conds)
    _warm_up(windows, job, device)
    memory = PeakMemory(device)
    memory.start()
    try:
        model = _build(job, registry, device)
    except Exception as e:
        return {"skipped": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
    train = _train(job, model, windows, device, memory)
    del model
    gc.collect()  # the trainer's model, optimizer and EMA: not counted in the rollout's peak
    return {"train": train, "rollout": _rollout(job, registry, device, memory), "memory_method": memory.method}


def run_job(job: dict) -> dict:
    """Run ``worker(job)`` in a fresh Python process; returns its result (or the failure as a note)."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job)],
        capture_output=True, text=True, env=os.environ.copy(),
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"failed": f"exit {proc.returncode}: {last}"}


# -- driver ----------------------------------------------------------------------------------------
def _parse_args(specs: list[str]) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` (VALUE in YAML) -> {NAME: {KEY: value}}."""
    out: dict[str, dict] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot or not name or not field:
            raise SystemExit(f"backbones.py: error: --arg {spec!r}: expected BACKBONE.KEY=VALUE, e.g. dit.width=128")
        out.setdefault(name, {})[field] = yaml.safe_load(value)
    return out


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=None, help="comma-separated names (default: every registered backbone)")
    p.add_argument("--shapes", default="state,latent", help=f"comma-separated token shapes of {list(SHAPES)}")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--steps", type=int, default=20, help="timed training steps (after 2 warm-up steps)")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--seq-len", type=int, default=32, help="training window = max_tokens = rollout window")
    p.add_argument("--cond-dim", type=int, default=2, help="per-token condition size (actions)")
    p.add_argument("--horizons", default="16,64,256", help="rollout horizons in tokens, comma-separated")
    p.add_argument("--rollout-batch", type=int, default=4)
    p.add_argument("--context", type=int, default=4, help="clean context tokens before each rollout")
    p.add_argument("--chunk-size", type=int, default=4)
    p.add_argument("--sampling-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a backbone argument, e.g. --arg dit.width=128 (repeatable; defaults: the factory's)",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        print(RESULT_TAG + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    device = resolve_device(args.device)
    registered = build_registry(get_plugin_manager()).names("backbone")
    names = registered if args.backbones is None else [n.strip() for n in args.backbones.split(",") if n.strip()]
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise SystemExit(f"backbones.py: error: --shapes: unknown {bad}; expected some of {list(SHAPES)}")
    kwargs = _parse_args(args.arg)
    horizons = _ints(args.horizons)
    n = 4096 if device.type == "cuda" else 1024
    peak = matmul_gflops(device, n)

    results = []
    for name in names:
        for shape_name in shapes:
            entry = {
                "backbone": name,
                "tokens": shape_name,
                "token_shape": list(SHAPES[shape_name]),
                "kwargs": kwargs.get(name, {}),
            }
            if name not in registered:
                entry["skipped"] = "not registered"
            else:
                job = {
                    "backbone": name, "shape": list(SHAPES[shape_name]), "kwargs": kwargs.get(name, {}),
                    "device": str(device), "steps": args.steps, "batch_size": args.batch_size, "seq_len": args.seq_len,
                    "cond_dim": args.cond_dim, "horizons": horizons, "rollout_batch": args.rollout_batch,
                    "context": args.context, "chunk_size": args.chunk_size, "sampling_steps": args.sampling_steps,
                    "seed": args.seed,
                }  # fmt: skip
                print(f"... {name} on {shape_name} tokens {SHAPES[shape_name]}", file=sys.stderr, flush=True)
                entry.update(run_job(job))
                if "train" in entry:
                    entry["train"]["over_matmul"] = entry["train"]["gflops"] / peak
            results.append(entry)

    def label(e):
        return f"{e['tokens']} {tuple(e['token_shape'])}"

    train_rows, roll_rows = [], []
    for e in results:
        note = e.get("skipped") or e.get("failed")
        if note:
            train_rows.append([e["backbone"], label(e), *["-"] * 6, f"skipped: {note}"[:100]])
            continue
        t, r = e["train"], e["rollout"]
        train_rows.append([
            e["backbone"], label(e), f"{t['parameters']:,}", f"{t['tokens_per_s']:,.0f}", f"{t['flops_per_step'] / 1e9:.3f}",
            f"{t['gflops']:,.1f}", f"{100 * t['over_matmul']:.1f}%", f"{t['peak_mib']:,.0f} / {r['peak_mib']:,.0f}", "",
        ])  # fmt: skip
        for h in r["horizons"]:
            cached, uncached = h.get("cached_tokens_per_s"), h["uncached_tokens_per_s"]
            roll_rows.append([
                e["backbone"], label(e), str(h["horizon"]), _fmt(cached, ",.0f"), _fmt(uncached, ",.0f"),
                "-" if cached is None else f"{cached / uncached:.2f}x", _fmt(h["max_abs_diff"], ".1e"),
            ])  # fmt: skip
    memory_method = next((e["memory_method"] for e in results if "memory_method" in e), PeakMemory(device).method)
    print(f"device: {device_name(device)}, torch {torch.__version__}; fp32 matmul {n}x{n}: {peak:,.1f} GFLOP/s")
    print(
        f"training: fp32, batch {args.batch_size} x {args.seq_len} tokens, cond_dim {args.cond_dim}, median of {args.steps} steps"
    )
    print(table(["backbone", "tokens", "params", "train tok/s", "GFLOP/step", "GFLOP/s", "of matmul",
                  "peak MiB train / rollout", "note"], train_rows))  # fmt: skip
    print(f"\nrollout: batch {args.rollout_batch}, {args.context} context tokens, window {args.seq_len}, chunks of "
          f"{args.chunk_size}, pyramid, {args.sampling_steps} DDIM steps; generated tokens/s")  # fmt: skip
    print(table(["backbone", "tokens", "horizon", "cached tok/s", "uncached tok/s", "speedup", "max |cached - uncached|"],
                 roll_rows))  # fmt: skip
    print(f"\npeak memory: {memory_method}")
    out = {
        "device": device_name(device),
        "torch": torch.__version__,
        "matmul_n": n,
        "matmul_fp32_gflops": peak,
        "memory_method": memory_method,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "worker")},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
