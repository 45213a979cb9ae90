"""The CUDA path in one call (``make gpu-check``): every backbone trains, the planner plans, a video model rolls
out, cached and uncached rollouts agree; a table of throughput and peak memory, exit 1 on any failure.

Items, each run through the project's own code and reported on one row:

- ``train BACKBONE TOKENS``: a few steps of the real :class:`worldsim.trainer.Trainer` (Diffusion Forcing loss,
  backward, grad clip, AdamW, EMA) on random windows, for every registered backbone on every token shape it
  takes (state (16,), latents (4, 8, 8)), in bf16 autocast and ``torch.compile`` on CUDA; then a checkpoint
  is written and read back. Fails on a non-finite loss, an autocast that is not bf16, or any exception.
- ``cache BACKBONE TOKENS``: :func:`worldsim.diffusion.sampling.sample` past the window with ``use_cache``
  True and False, same generator, by the untrained model with randomly perturbed weights (as
  ``worldsim.testing`` does: zero-initialized output layers would make both outputs 0); fp32, TF32 off. Fails
  when the largest difference exceeds the tolerance.
- ``plan maze2d-umaze``: the shipped umaze planner (:mod:`worldsim.planning`'s Planner and run_episodes) for
  a few episodes and their first steps in its env.
- ``rollout maze-pixels-32``: the shipped video world model (VAE encode, sampling, decode:
  :func:`worldsim.rollout.rollout`) from random context frames and actions, with the cache and without; fails
  when the frames differ by more than the tolerance.

Peak memory: torch.cuda.max_memory_allocated per item on CUDA; on CPU the growth of the peak resident set
(``_common.PeakMemory``). ``--cpu`` runs the same items on the CPU on tiny shapes (fp32, compile off unless
``--compile``), in well under a minute: CI runs it (tests/test_gpu_check.py) so the CUDA path cannot rot
unseen. Writes benchmarks/results/gpu_check.json (``--cpu``: gpu_check-cpu.json).

    python benchmarks/gpu_check.py [--cpu] [--compile | --no-compile] [--backbones gru,dit] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import PeakMemory, device_name, perturb_, sampling_settings, table, timed  # benchmarks/_common.py

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {"state": (16,), "latent": (4, 8, 8)}
COND_DIM = 2
PLANNER, VIDEO_MODEL = "maze2d-umaze", "maze-pixels-32"


@dataclass(frozen=True)
class Setup:
    """Sizes of one mode: CUDA (the factories' default backbones) or CPU (tiny ones)."""

    backbone_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per backbone; default: its factory's
    batch_size: int = 32
    seq_len: int = 16
    warmup_steps: int = 3  # untimed first steps (torch.compile compiles here)
    steps: int = 20  # timed training steps
    horizon: int = 48  # tokens the cache check samples past its context
    sampling_steps: int = 10
    cache_tol: float = 1e-3  # largest |cached - uncached| of sampled tokens
    plan_episodes: int = 4
    plan_steps: int = 30  # env steps of each planned episode
    plan_sampling_steps: int | None = None  # None: the shipped planner's own
    rollout_frames: int = 32
    rollout_sampling_steps: int | None = None
    rollout_tol: float = 0.5  # largest |cached - uncached| of decoded frames, on the 0-255 scale


CUDA = Setup()
CPU = Setup(
    backbone_kwargs={
        "gru": {"hidden": 32, "embed": 32, "layers": 1, "noise_embed": 16, "channels": 8},
        "dit": {"width": 32, "depth": 1, "heads": 2},
        "unet3d": {"channels": 8, "groups": 4, "heads": 2, "embed": 32},
        "convgru": {"hidden": 16, "channels": 16, "embed": 32},
    },
    batch_size=4,
    seq_len=8,
    warmup_steps=1,
    steps=3,
    horizon=12,
    sampling_steps=3,
    cache_tol=1e-4,
    plan_episodes=2,
    plan_steps=10,
    plan_sampling_steps=5,
    rollout_frames=4,
    rollout_sampling_steps=3,
    rollout_tol=0.05,
)


class CheckFailed(Exception):
    """An item ran but its result is wrong (a NaN loss, cached and uncached outputs that differ)."""


# -- the items -------------------------------------------------------------------------------------
def _registry():
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    return build_registry(get_plugin_manager())


def _build(registry, name: str, shape: tuple[int, ...], setup: Setup, device: torch.device):
    from worldsim.diffusion.model import DiffusionModel

    torch.manual_seed(0)
    derived = {"token_shape": shape, "cond_dim": COND_DIM, "max_tokens": setup.seq_len}
    backbone = registry.build("backbone", name, derived, setup.backbone_kwargs.get(name, {}))
    return DiffusionModel(backbone, schedule="cosine", prediction="x0").to(device)


def train_item(registry, name: str, shape: tuple[int, ...], setup: Setup, device: torch.device, compile_: bool):
    from worldsim.checkpoint import load_checkpoint
    from worldsim.config import base_config, to_plain
    from worldsim.data.windows import TokenWindows
    from worldsim.diffusion.loss import LossSettings
    from worldsim.settings import TrainerSettings
    from worldsim.trainer import Trainer

    gen = torch.Generator().manual_seed(0)
    length = 2 * setup.seq_len
    episodes = [torch.randn(length, *shape, generator=gen) for _ in range(8)]
    conds = [torch.randn(length, COND_DIM, generator=gen) for _ in range(8)]
    windows = TokenWindows(episodes, setup.seq_len, conds)
    model = _build(registry, name, shape, setup, device)
    total = setup.warmup_steps + setup.steps
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(
            model, windows,
            settings=TrainerSettings.from_config({**to_plain(base_config().trainer), "steps": total, "batch_size": setup.batch_size,
                         "device": str(device), "precision": "bf16" if device.type == "cuda" else "fp32",
                         "compile": compile_, "warmup_steps": 1, "resume": False, "ckpt_every": total}),
            loss=LossSettings.from_config({**to_plain(base_config().diffusion), "schedule": "cosine", "prediction": "x0"}),
            run_dir=Path(run_dir), seed=0,
        )  # fmt: skip
        if device.type == "cuda" and trainer.autocast_dtype != torch.bfloat16:
            raise CheckFailed(f"autocast dtype is {trainer.autocast_dtype}, expected torch.bfloat16")
        losses: list[torch.Tensor] = []
        _, first_s = timed(lambda: [losses.append(trainer.train_step()["loss"]) for _ in range(setup.warmup_steps)],
                           device)  # fmt: skip
        _, seconds = timed(lambda: [losses.append(trainer.train_step()["loss"]) for _ in range(setup.steps)], device)
        values = [float(v) for v in losses]
        if not all(math.isfinite(v) for v in values):
            raise CheckFailed(f"non-finite training loss: {values}")
        saved = load_checkpoint(trainer.save())
        if saved["step"] != total:
            raise CheckFailed(f"checkpoint holds step {saved['step']}, expected {total}")
    tokens = setup.batch_size * setup.seq_len * setup.steps
    return {
        "throughput": tokens / seconds,
        "unit": "train tok/s",
        "detail": f"loss {values[0]:.3f} -> {values[-1]:.3f}; {setup.warmup_steps} warm-up steps in {first_s:.1f} s"
        + (" (compiling)" if compile_ else ""),
    }


@contextlib.contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """TF32 off (cuBLAS and cuDNN) for a comparison in fp32; restored after."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cache_item(registry, name: str, shape: tuple[int, ...], setup: Setup, device: torch.device, compile_: bool):
    from worldsim.diffusion.sampling import sample

    model = _build(registry, name, shape, setup, device).eval()
    gen = torch.Generator().manual_seed(1)
    perturb_(model, gen)
    if not model.supports_cache:
        return {"detail": "no cache: nothing to compare", "throughput": None, "unit": ""}
    batch, n_ctx, chunk = 4, 4, 4
    context = torch.randn(batch, n_ctx, *shape, generator=gen).to(device)
    cond = torch.randn(batch, n_ctx + setup.horizon, COND_DIM, generator=gen).to(device)
    window = setup.seq_len if model.max_tokens is None else min(setup.seq_len, model.max_tokens)

    def run(use_cache: bool) -> tuple[torch.Tensor, float]:
        settings = sampling_settings(
            steps=setup.sampling_steps, schedule="pyramid", chunk_size=chunk, use_cache=use_cache
        )
        return timed(lambda: sample(
            model, settings, horizon=setup.horizon, context=context, cond=cond, window=window,
            generator=torch.Generator().manual_seed(2),
        ), device)  # fmt: skip

    with torch.no_grad(), _exact_fp32(device):
        (cached, cached_s), (uncached, uncached_s) = run(True), run(False)
    diff = float((cached - uncached).abs().max())
    if not math.isfinite(diff) or diff > setup.cache_tol:
        raise CheckFailed(f"max |cached - uncached| = {diff:.2e} > {setup.cache_tol:.0e}")
    return {
        "throughput": batch * setup.horizon / cached_s,
        "unit": "cached tok/s",
        "max_abs_diff": diff,
        "detail": f"max |cached - uncached| {diff:.1e} (tol {setup.cache_tol:.0e}); uncached "
        f"{batch * setup.horizon / uncached_s:,.0f} tok/s; window {window}, {setup.horizon} tokens",
    }


def _load_shipped(registry, name: str, device: torch.device, sampling: list[str]):
    from worldsim.config import apply_overrides
    from worldsim.experiment import load_run

    run = load_run(name, registry)
    if sampling:
        run.cfg = apply_overrides(run.cfg, sampling, allowed=("sampling",))
    run.model.to(device)
    run.tokenizer.to(device)
    return run


def plan_item(registry, setup: Setup, device: torch.device, compile_: bool):
    import numpy as np

    from worldsim.planning import Planner, build_objective, build_task, run_episodes
    from worldsim.settings import PlanSettings

    steps = [] if setup.plan_sampling_steps is None else [f"sampling.steps={setup.plan_sampling_steps}"]
    run = _load_shipped(registry, PLANNER, device, steps)
    n = setup.plan_episodes
    settings = dataclasses.replace(PlanSettings.from_config(run.cfg.planning), episodes=n, batch=n)  # frozen: a copy
    task = build_task(run, registry)
    planner = Planner(run, build_objective(run, registry), settings, task)
    result, seconds = timed(lambda: run_episodes(planner, None, setup.plan_episodes, settings.seed, progress=False,
                                                 max_steps=setup.plan_steps), device)  # fmt: skip
    plans = [p for _, p in result["plans"]]
    if not plans or not all(np.isfinite(p).all() for p in plans) or not np.isfinite(result["paths"]).all():
        raise CheckFailed("a plan or the path it drove holds NaN or inf")
    latency = float(np.mean(result["latencies"]))
    return {
        "throughput": setup.plan_episodes * setup.plan_steps / seconds,
        "unit": "env steps/s",
        "detail": f"{setup.plan_episodes} episodes x {setup.plan_steps} steps, {len(plans)} replans of "
        f"{latency:.2f} s, {int(run.cfg.sampling.steps)} sampling steps",
    }


def rollout_item(registry, setup: Setup, device: torch.device, compile_: bool):
    from worldsim.config import apply_overrides
    from worldsim.rollout import rollout

    steps = [] if setup.rollout_sampling_steps is None else [f"sampling.steps={setup.rollout_sampling_steps}"]
    run = _load_shipped(registry, VIDEO_MODEL, device, steps)
    f = int(run.tokenizer.frames_per_token)
    batch, n_ctx = 2, f
    gen = torch.Generator().manual_seed(3)
    context = torch.randint(0, 256, (batch, n_ctx, *run.obs_shape), generator=gen, dtype=torch.uint8)
    needed = n_ctx + math.ceil(setup.rollout_frames / f) * f
    actions = torch.rand(batch, needed, run.action_dim, generator=gen) * 2 - 1

    def go() -> tuple[torch.Tensor, float]:
        return timed(lambda: rollout(run, context, setup.rollout_frames, actions, torch.Generator().manual_seed(4),
                                     progress=False), device)  # fmt: skip

    with _exact_fp32(device):
        cached, cached_s = go()
        run.cfg = apply_overrides(run.cfg, ["sampling.use_cache=false"], allowed=("sampling",))
        uncached, _ = go()
    diff = float((cached - uncached).abs().max())
    if not torch.isfinite(cached).all() or not math.isfinite(diff) or diff > setup.rollout_tol:
        raise CheckFailed(f"max |cached - uncached| = {diff:.2e} frame values (0-255) > {setup.rollout_tol}")
    return {
        "throughput": batch * setup.rollout_frames / cached_s,
        "unit": "frames/s",
        "max_abs_diff": diff,
        "detail": f"{batch} x {setup.rollout_frames} frames of {tuple(run.obs_shape)}, cached and uncached agree to "
        f"{diff:.1e} (tol {setup.rollout_tol}), {int(run.cfg.sampling.steps)} sampling steps",
    }


# -- the driver ------------------------------------------------------------------------------------
def run_item(name: str, fn: Callable[[], dict], device: torch.device) -> dict:
    """Run one item: its row (``ok`` False with the error on a failure), with peak memory and seconds."""
    print(f"... {name}", file=sys.stderr, flush=True)
    memory = PeakMemory(device)
    memory.start()
    started = time.perf_counter()
    try:
        row = {"item": name, "ok": True, **fn()}
    except Exception as exc:  # any failure is reported on its row; the other items still run
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = (str(exc).strip().splitlines() or [""])[0][:300]
        row = {"item": name, "ok": False, "error": f"{type(exc).__name__}: {message}",
               "at": f"{Path(where.filename).name}:{where.lineno}"}  # fmt: skip
    row["seconds"] = time.perf_counter() - started
    row["peak_mib"] = memory.peak_mib()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run the same items on the CPU on tiny shapes (fp32)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the trained models (default: on for CUDA, off for --cpu)")  # fmt: skip
    p.add_argument("--backbones", default=None, help="comma-separated names (default: every registered backbone)")
    p.add_argument("--out", type=Path, default=None, help="JSON result (default: benchmarks/results/gpu_check.json)")
    args = p.parse_args(argv)

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; run it on a GPU machine, or with --cpu for the CPU path",
              file=sys.stderr)  # fmt: skip
        return 2
    device = torch.device("cpu" if args.cpu else "cuda")
    setup = CPU if args.cpu else CUDA
    compile_ = (not args.cpu) if args.compile is None else args.compile
    out = args.out or RESULTS / ("gpu_check-cpu.json" if args.cpu else "gpu_check.json")
    from worldsim.errors import ConfigError

    registry = _registry()
    names = registry.names("backbone") if args.backbones is None else [n for n in args.backbones.split(",") if n]

    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    started = time.perf_counter()
    rows = []
    for name in names:
        for label, shape in SHAPES.items():
            try:  # the shapes a backbone takes: it says so at build time (anything else fails on the item's row)
                _build(registry, name, shape, setup, torch.device("cpu"))
            except ConfigError as exc:
                if "token_shape" in str(exc):
                    continue
            except Exception:  # reported on the item's row below
                pass
            for kind, fn in (("train", train_item), ("cache", cache_item)):
                row = run_item(f"{kind} {name} {label}",
                               lambda fn=fn, shape=shape, name=name: fn(registry, name, shape, setup, device, compile_),
                               device)  # fmt: skip
                row["precision"] = precision if kind == "train" else "fp32"
                row["compile"] = compile_ if kind == "train" else False
                rows.append(row)
        if not any(r["item"].split()[1] == name for r in rows):
            rows.append({"item": f"train {name}", "ok": False, "error": "takes none of the token shapes "
                         f"{list(SHAPES.values())}", "seconds": 0.0, "peak_mib": 0.0})  # fmt: skip
    for label, fn in ((f"plan {PLANNER}", plan_item), (f"rollout {VIDEO_MODEL}", rollout_item)):
        row = run_item(label, lambda fn=fn: fn(registry, setup, device, compile_), device)
        row["precision"], row["compile"] = "fp32", False
        rows.append(row)
    seconds = time.perf_counter() - started

    failed = [r for r in rows if not r["ok"]]
    print(f"gpu check on {device_name(device)}, torch {torch.__version__}: training in {precision}, torch.compile "
          f"{'on' if compile_ else 'off'}{' (--cpu: tiny shapes)' if args.cpu else ''}; sampling in fp32")  # fmt: skip
    body = [[r["item"], "ok" if r["ok"] else "FAIL", r.get("precision", "-"), "yes" if r.get("compile") else "no",
             "-" if r.get("throughput") is None else f"{r['throughput']:,.0f} {r['unit']}",
             f"{r['peak_mib']:,.1f}", f"{r['seconds']:.1f}",
             (r.get("detail") or f"{r.get('error')} ({r.get('at')})")[:140]] for r in rows]  # fmt: skip
    print(table(["item", "status", "precision", "compile", "throughput", "peak MiB", "s", "detail"], body))
    print(f"peak memory: {PeakMemory(device).method}")
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": not args.cpu,
        "compile": compile_,
        "precision": precision,
        "seconds": seconds,
        "setup": {k: v for k, v in vars(setup).items()},
        "items": rows,
        "failed": [r["item"] for r in failed],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} ({len(rows)} items in {seconds:.1f} s)")
    if failed:
        for r in failed:
            print(f"gpu_check: FAILED {r['item']}: {r['error']} ({r.get('at')})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
