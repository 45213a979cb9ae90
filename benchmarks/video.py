"""Video world models: training and rollout frames/s in pixels vs VAE latents, with and without caches.

On random frames and untrained models in fp32, for two token spaces of the action-conditioned video
world model (random actions, cond_dim 2; DiffusionModel with the experiment's prediction v and sigmoid
schedule; one frame per token in both):

- ``pixels``: 32x32x3 frames through the ``pixels`` tokenizer -> tokens (3, 32, 32), with the backbone of
  configs/experiment/video_maze_pixels.yaml (convgru, 4x4 pixel blocks folded into channels);
- ``latents``: 64x64x3 frames through the ``video_vae`` tokenizer built without a checkpoint from the
  ``vae:`` architecture of configs/experiment/vae_maze_pixels.yaml (channels [16, 32, 64], 4 latent
  channels, spatial factor 8) -> tokens (4, 8, 8), with the backbone of video_maze_latent.yaml.

Measured for each space:

- training: ``diffusion_loss`` (Diffusion Forcing, the experiment's weighting, condition dropout and clean
  context) forward + backward + AdamW step on (``--batch-size``, ``--seq-len``) windows of tokens,
  frames/s, median of ``--steps`` steps after 2 warm-up steps. The tokens are given, as the latent cache
  gives them; encoding the window's frames to tokens ("encode", median of ``--steps``) is the cost that
  cache removes, and "train + encode" is the rate without it, estimated as 1 / (1/train + 1/encode);
- rollout: ``worldsim.diffusion.sampling.sample`` of ``--frames`` tokens after 4 context tokens (encoded
  random frames), ``--rollout-batch`` sequences, chunks of 1 token, autoregressive schedule,
  ``--sampling-steps`` DDIM steps, the experiment's stabilization level, by the model with randomly
  perturbed weights (as in worldsim.testing, at scale 0.01: zero-initialized layers could make the
  comparison below trivially exact), timed once after a one-token warm-up, for three settings: uncached with a
  sliding window of ``--seq-len`` tokens; cached with the same window (the GRU state is rebuilt from the
  visible tokens for every chunk: the same inputs, so the largest |cached - uncached| of the same seed
  is reported); cached with window None (the GRU state runs on over the whole rollout: what rollouts of
  the GRU use). Then decoding the generated tokens to frames (median of ``--steps``);
- VAE alone: encode and decode of ``--vae-batch`` 64x64 frames by the untrained VAE, frames/s (median of
  ``--steps`` after a warm-up call).

- play (``--play NAME``, e.g. the shipped ``maze-pixels-32``): the latency of ``worldsim play`` at batch 1, from a
  key press (a ``step`` message sent over a real WebSocket to a :class:`worldsim.play.PlayServer` in this process)
  to its frame received, the time the page then takes to draw 32x32 pixels not counted; median and p95 of
  ``--play-presses`` presses after 3 warm-up ones, keys held 5 presses each in turn (right, down, left, up), from a
  held-out episode's context, for each of ``--play-settings`` (``shipped``, or ``;``-separated sampling overrides
  such as ``sampling.steps=5``). frames/s is 1000 / the median, and "model" the server's own time per frame.

Every phase reports its peak memory (benchmarks/_common.PeakMemory, as benchmarks/backbones.py: on CUDA
torch.cuda.max_memory_allocated; on CPU the growth of the process's peak RSS); a throwaway pass of
everything at tiny sizes runs first, so library and kernel loading is not counted in the first phase.
Models are built inside their phase (train and each rollout setting); the tokenizers outlive phases.

Prints one table row per measurement and writes benchmarks/results/video.json (``--out``).

    python benchmarks/video.py [--device auto] [--steps 5] [--batch-size 32] [--seq-len 16] [--frames 64]
                               [--sampling-steps 10] [--rollout-batch 4] [--vae-batch 64] [--out PATH]
                               [--spaces pixels,latents|none] [--play NAME [--play-settings S,...] [--play-presses 60]]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import torch
import yaml
from _common import (  # benchmarks/_common.py
    PeakMemory,
    device_name,
    median_seconds,
    perturb_,
    resolve_device,
    sampling_settings,
    table,
    timed,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "video.json"
CONTEXT = 4  # clean context tokens before each rollout
COND_DIM = 2  # random actions
# Weight noise for rollouts. Smaller than worldsim.testing's 0.1: at 0.1 these conv nets' outputs, fed back
# token after token, grow to ~1e10 and an absolute cached / uncached difference says nothing.
PERTURB = 0.01


def _experiment(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / "experiment" / f"{name}.yaml").read_text())


def _backbone(experiment: dict) -> tuple[str, dict]:
    """An experiment's backbone: its name (``override /backbone``, else the base's gru) and its arguments
    (the factory's defaults updated by the experiment's ``backbone`` section)."""
    name = "gru"
    for entry in experiment.get("defaults", []):
        if isinstance(entry, dict) and "override /backbone" in entry:
            name = entry["override /backbone"]
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    kwargs = build_registry(get_plugin_manager()).factory_defaults("backbone", name)
    kwargs.update(experiment.get("backbone") or {})
    return name, kwargs


def spaces() -> dict[str, dict]:
    """The token spaces: pixels with the backbone of experiment=video_maze_pixels; the 64x64 VAE's latents with the
    backbone of experiment=video_maze_latent; the 32x32 VAE's latents (vae_maze_pixels32's architecture) with the
    same backbone, as the shipped maze-pixels-32 model (experiment=video_maze_long32) has them."""
    from worldsim.video.vae import ARCH_DEFAULTS

    def vae(name: str) -> dict:
        arch = {k: v for k, v in _experiment("vae_maze_pixels")["vae"].items() if k in ARCH_DEFAULTS}
        return {**arch, **{k: v for k, v in (_experiment(name).get("vae") or {}).items() if k in ARCH_DEFAULTS}}

    pixels_backbone, pixels_kwargs = _backbone(_experiment("video_maze_pixels"))
    latent_backbone, latent_kwargs = _backbone(_experiment("video_maze_latent"))
    return {
        "pixels": {"frame_shape": [32, 32, 3], "tokenizer": "pixels", "tokenizer_kwargs": {},
                   "backbone": pixels_backbone, "backbone_kwargs": pixels_kwargs},
        "latents": {"frame_shape": [64, 64, 3], "tokenizer": "video_vae",
                    "tokenizer_kwargs": {**vae("vae_maze_pixels"), "checkpoint": None},
                    "backbone": latent_backbone, "backbone_kwargs": latent_kwargs},
        "latents32": {"frame_shape": [32, 32, 3], "tokenizer": "video_vae",
                      "tokenizer_kwargs": {**vae("vae_maze_pixels32"), "checkpoint": None},
                      "backbone": latent_backbone, "backbone_kwargs": latent_kwargs},
    }  # fmt: skip


class Bench:
    """Settings, device, registry and memory meter shared by the phases."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        from worldsim.plugins import get_plugin_manager
        from worldsim.registry import build_registry

        self.args, self.device = args, device
        self.registry = build_registry(get_plugin_manager())
        self.memory = PeakMemory(device)
        from worldsim.config import compose_config
        from worldsim.diffusion.loss import LossSettings

        video = compose_config(["experiment=video_maze_pixels"], self.registry)  # with the base config's values
        self.diffusion = {k: video.diffusion[k] for k in ("prediction", "schedule")}
        self.loss = LossSettings.from_config(video.diffusion)
        # the loss settings the report names
        self.loss_kwargs = {k: video.diffusion[k] for k in ("weighting", "cond_dropout", "clean_context_prob")}
        self.stabilization = float(video.sampling.stabilization_level)

    def frames(self, gen: torch.Generator, *shape: int) -> torch.Tensor:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8).to(self.device)

    def model(self, spec: dict, tokenizer):
        from worldsim.diffusion.model import DiffusionModel

        torch.manual_seed(self.args.seed)  # the same weights in every phase
        derived = {
            "token_shape": tuple(tokenizer.token_shape),
            "cond_dim": COND_DIM * int(tokenizer.frames_per_token),
            "max_tokens": self.args.seq_len,
        }  # as worldsim.experiment.build_model
        backbone = self.registry.build("backbone", spec["backbone"], derived, spec["backbone_kwargs"])
        return DiffusionModel(backbone, **self.diffusion).to(self.device)

    def phase(self, fn):
        """``fn()`` -> (result, peak MiB of the call); the next phase's start collects what it left behind."""
        self.memory.start()
        out = fn()
        return out, self.memory.peak_mib()


def _rate(frames: int, seconds: float) -> dict:
    return {"frames_per_s": frames / seconds, "ms": seconds * 1e3}


def measure_space(bench: Bench, spec: dict) -> dict:
    from worldsim.diffusion.loss import diffusion_loss
    from worldsim.diffusion.sampling import sample

    a, device = bench.args, bench.device
    tokenizer = bench.registry.build("tokenizer", spec["tokenizer"], {"obs_shape": tuple(spec["frame_shape"])},
                                     spec["tokenizer_kwargs"]).to(device)  # fmt: skip
    f = int(tokenizer.frames_per_token)
    gen = torch.Generator().manual_seed(a.seed)
    B, T = a.batch_size, a.seq_len
    frames = bench.frames(gen, B, T * f, *spec["frame_shape"])
    cond = torch.randn(B, T, COND_DIM * f, generator=gen).to(device)
    result = {**spec, "token_shape": list(tokenizer.token_shape), "frames_per_token": f}

    def encode():
        with torch.no_grad():
            return tokenizer.encode(frames)

    seconds, peak = bench.phase(lambda: median_seconds(encode, device, a.steps))
    result["encode"] = {**_rate(B * T * f, seconds), "peak_mib": peak}
    tokens = encode()

    def train():
        model = bench.model(spec, tokenizer)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_gen = torch.Generator().manual_seed(a.seed)

        def step():
            out = diffusion_loss(model, tokens, bench.loss, cond=cond, generator=loss_gen)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return sum(p.numel() for p in model.parameters()), median_seconds(step, device, a.steps, warmup=2)

    (result["parameters"], seconds), peak = bench.phase(train)
    result["train"] = {**_rate(B * T * f, seconds), "peak_mib": peak}
    result["train_with_encode_frames_per_s"] = 1 / (
        1 / result["train"]["frames_per_s"] + 1 / result["encode"]["frames_per_s"]
    )

    R, H = a.rollout_batch, a.frames
    with torch.no_grad():
        context = tokenizer.encode(bench.frames(gen, R, CONTEXT * f, *spec["frame_shape"]))
    actions = torch.randn(R, CONTEXT + H, COND_DIM * f, generator=gen).to(device)
    settings = {"uncached": (False, T), "cached": (True, T), "cached_unlimited": (True, None)}

    def rollout(use_cache: bool, window: int | None):
        model = bench.model(spec, tokenizer).eval()
        perturb_(model, torch.Generator().manual_seed(a.seed), PERTURB)

        sampling = sampling_settings(
            steps=a.sampling_steps,
            schedule="autoregressive",
            chunk_size=1,
            use_cache=use_cache,
            stabilization_level=bench.stabilization,
        )

        def run(horizon: int):
            return sample(
                model, sampling, horizon=horizon, context=context, cond=actions[:, : CONTEXT + horizon],
                window=window, generator=torch.Generator().manual_seed(a.seed),
            )  # fmt: skip

        run(1)  # warm up kernels and allocator
        return timed(lambda: run(H), device)

    outs, result["rollout"] = {}, {"batch": R, "context": CONTEXT, "frames": H * f, "window": T}
    for name, (use_cache, window) in settings.items():
        (outs[name], seconds), peak = bench.phase(lambda use_cache=use_cache, window=window: rollout(use_cache, window))
        result["rollout"][name] = {
            "use_cache": use_cache,
            "window": window,
            **_rate(R * H * f, seconds),
            "peak_mib": peak,
        }
    result["rollout"]["max_abs_diff"] = float((outs["cached"] - outs["uncached"]).abs().max())
    result["rollout"]["max_abs_output"] = float(outs["uncached"].abs().max())  # the scale of that difference

    def decode():
        with torch.no_grad():
            return tokenizer.decode(outs["cached_unlimited"])

    seconds, peak = bench.phase(lambda: median_seconds(decode, device, a.steps))
    result["rollout"]["decode"] = {**_rate(R * H * f, seconds), "peak_mib": peak}
    return result


def measure_vae(bench: Bench, spec: dict) -> dict:
    """Encode and decode of ``--vae-batch`` frames by the untrained VAE of the ``latents`` space."""
    a, device = bench.args, bench.device
    tokenizer = bench.registry.build("tokenizer", spec["tokenizer"], {"obs_shape": tuple(spec["frame_shape"])},
                                     spec["tokenizer_kwargs"]).to(device)  # fmt: skip
    f, n = int(tokenizer.frames_per_token), a.vae_batch
    frames = bench.frames(torch.Generator().manual_seed(a.seed), n, f, *spec["frame_shape"])  # n clips of f frames
    with torch.no_grad():
        latents = tokenizer.encode(frames)
        out = {
            "frame_shape": spec["frame_shape"],
            "batch": n * f,
            "arch": spec["tokenizer_kwargs"],
            "parameters": sum(p.numel() for p in tokenizer.vae.parameters()),
        }
        for name, fn in (("encode", lambda: tokenizer.encode(frames)), ("decode", lambda: tokenizer.decode(latents))):
            seconds, peak = bench.phase(lambda fn=fn: median_seconds(fn, device, a.steps))
            out[name] = {**_rate(n * f, seconds), "peak_mib": peak}
    return out


def run_all(bench: Bench) -> dict:
    specs = spaces()
    chosen = bench.args.spaces
    vae_space = "latents" if "latents" in chosen else next((n for n in chosen if n != "pixels"), None)
    return {"spaces": {name: measure_space(bench, specs[name]) for name in chosen},
            "vae": None if vae_space is None else measure_vae(bench, specs[vae_space])}  # fmt: skip


def measure_play(name: str, settings: list[str], presses: int) -> list[dict]:
    """Key press to frame received through a real PlayServer, at batch 1, per sampling setting."""
    import tempfile
    import time

    import numpy as np
    from websockets.sync.client import connect

    from worldsim.config import apply_overrides, to_plain
    from worldsim.experiment import load_run
    from worldsim.play import Background, PlayServer, PlayWorld
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry, results = build_registry(get_plugin_manager()), []
    keys = [k for k in ("right", "down", "left", "up") for _ in range(5)]
    for setting in settings:
        run = load_run(name, registry)
        overrides = [] if setting == "shipped" else [o for o in setting.split(";") if o]
        if overrides:
            run.cfg = apply_overrides(run.cfg, overrides, allowed=("sampling",))
        world = PlayWorld(run, registry, episodes=1)
        with tempfile.TemporaryDirectory() as out:
            server = Background(PlayServer(world, Path(out)))
            latency, model = [], []
            try:
                with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
                    ws.recv(), ws.recv()  # hello, the first frame
                    for i in range(3 + presses):
                        start = time.perf_counter()
                        ws.send(json.dumps({"type": "step", "action": keys[i % len(keys)]}))
                        reply = json.loads(ws.recv())
                        if i >= 3:
                            latency.append(1000 * (time.perf_counter() - start))
                            model.append(reply["frames"][0]["ms"])
            finally:
                server.stop()
        median = float(np.median(latency))
        results.append({"model": name, "setting": setting, "sampling": to_plain(run.cfg.sampling), "presses": presses,
                        "latency_ms_median": median, "latency_ms_p95": float(np.percentile(latency, 95)),
                        "frames_per_s": 1000 / median, "model_ms_median": float(np.median(model))})  # fmt: skip
    return results


def _rows(results: dict, args: argparse.Namespace) -> list[list[str]]:
    def row(label, phase, rate, ms, peak, note=""):
        return [
            label,
            phase,
            f"{rate:,.1f}",
            "-" if ms is None else f"{ms:,.1f}",
            "-" if peak is None else f"{peak:,.0f}",
            note,
        ]

    rows = []
    for name, s in results["spaces"].items():
        label = f"{name} {tuple(s['token_shape'])}"
        e, t, r = s["encode"], s["train"], s["rollout"]
        rows.append(
            row(
                label,
                f"train (batch {args.batch_size} x {args.seq_len})",
                t["frames_per_s"],
                t["ms"],
                t["peak_mib"],
                f"{s['parameters']:,} parameters",
            )
        )
        rows.append(
            row(label, "encode frames -> tokens", e["frames_per_s"], e["ms"], e["peak_mib"], "per training window")
        )
        rows.append(
            row(
                label,
                "train + encode (no latent cache)",
                s["train_with_encode_frames_per_s"],
                None,
                None,
                "estimate: 1 / (1/train + 1/encode)",
            )
        )
        for key, what in (
            ("uncached", f"window {r['window']}"),
            ("cached", f"window {r['window']}"),
            ("cached_unlimited", "window None"),
        ):
            m = r[key]
            note = f"max |cached - uncached| {r['max_abs_diff']:.1e}" if key == "cached" else ""
            rows.append(
                row(label, f"rollout {key.split('_')[0]}, {what}", m["frames_per_s"], m["ms"], m["peak_mib"], note)
            )
        d = r["decode"]
        rows.append(
            row(
                label,
                "decode tokens -> frames",
                d["frames_per_s"],
                d["ms"],
                d["peak_mib"],
                f"{r['frames']} frames x {r['batch']}",
            )
        )
    for m in results.get("play", []):
        rows.append(
            row(
                f"play {m['model']}",
                f"key press -> frame, {m['setting']}",
                m["frames_per_s"],
                m["latency_ms_median"],
                None,
                f"p95 {m['latency_ms_p95']:.1f} ms, model {m['model_ms_median']:.1f} ms, batch 1",
            )  # fmt: skip
        )
    v = results["vae"]
    label = "" if v is None else f"vae {v['frame_shape'][0]}x{v['frame_shape'][1]}"
    for key in () if v is None else ("encode", "decode"):
        rows.append(
            row(
                label,
                f"{key} (batch {v['batch']})",
                v[key]["frames_per_s"],
                v[key]["ms"],
                v[key]["peak_mib"],
                f"{v['parameters']:,} parameters" if key == "encode" else "",
            )
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--steps", type=int, default=5, help="timed repeats of training steps, encodes and decodes (medians)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--seq-len", type=int, default=16, help="training window and rollout window, in tokens")
    p.add_argument("--frames", type=int, default=64, help="rollout horizon in tokens (one frame each)")
    p.add_argument("--sampling-steps", type=int, default=10, help="DDIM steps per token in rollouts")
    p.add_argument("--rollout-batch", type=int, default=4, help="sequences generated at once")
    p.add_argument("--vae-batch", type=int, default=64, help="frames per VAE encode / decode call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--spaces", default="pixels,latents", help="comma-separated token spaces: pixels, latents, latents32"
    )
    p.add_argument("--play", default=None, metavar="NAME", help="also time worldsim play of this video model")
    p.add_argument("--play-settings", default="shipped,sampling.steps=10,sampling.steps=5",
                   help="comma-separated: shipped, or ';'-separated sampling overrides")  # fmt: skip
    p.add_argument("--play-presses", type=int, default=60, help="timed key presses per play setting")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    args.spaces = [] if args.spaces == "none" else [name.strip() for name in args.spaces.split(",") if name.strip()]
    unknown = sorted(set(args.spaces) - set(spaces()))
    if unknown or not (args.spaces or args.play):
        p.error(f"--spaces: unknown space {unknown[0] if unknown else '(none)'}; expected pixels, latents, latents32")
    for key in (
        "steps",
        "batch_size",
        "seq_len",
        "frames",
        "sampling_steps",
        "rollout_batch",
        "vae_batch",
        "play_presses",
    ):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')}: expected an integer >= 1, got {getattr(args, key)}")

    device = resolve_device(args.device)
    # Every phase starts with gc.collect(), which walks all live objects: torch alone (and torch._dynamo, which
    # the first optimizer imports) leaves ~10^6 of them. Import those now and freeze them out of collections.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    gc.collect()
    gc.freeze()
    tiny = argparse.Namespace(**{**vars(args), "steps": 1, "batch_size": 1, "seq_len": 2, "frames": 1, "sampling_steps": 1,
                                 "rollout_batch": 1, "vae_batch": 1})  # fmt: skip
    print("... warm-up pass at tiny sizes", file=sys.stderr, flush=True)
    run_all(Bench(tiny, device))  # loads libraries and kernels: not counted in the first phase's peak
    print("... measuring", file=sys.stderr, flush=True)
    bench = Bench(args, device)
    results = run_all(bench)
    if args.play:
        print("... play latency", file=sys.stderr, flush=True)
        results["play"] = measure_play(args.play, args.play_settings.split(","), args.play_presses)

    threads = torch.get_num_threads()
    print(f"device: {device_name(device)}, torch {torch.__version__}, {threads} threads "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")  # fmt: skip
    print(f"fp32; training: diffusion_loss + backward + AdamW, {bench.loss_kwargs}, median of {args.steps} steps; "
          f"rollout: batch {args.rollout_batch}, {CONTEXT} context tokens, {args.frames} frames, chunks of 1, "
          f"autoregressive, {args.sampling_steps} DDIM steps, stabilization {bench.stabilization}")  # fmt: skip
    print(table(["space", "phase", "frames/s", "ms per call", "peak MiB", "note"], _rows(results, args)))
    print(f"\npeak memory: {bench.memory.method}")
    out = {
        "device": device_name(device),
        "torch": torch.__version__,
        "threads": threads,
        "memory_method": bench.memory.method,
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "diffusion": {**bench.diffusion, **bench.loss_kwargs},
        **results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
