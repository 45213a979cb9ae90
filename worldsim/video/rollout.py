"""Long rollouts of a video world model: generated frames, metrics per horizon, videos to watch.

The model sees ``context`` true frames of held-out episodes (or of a user's video file) and generates
``frames`` more, conditioned on the episodes' own actions (or on an actions file). Against the true
continuation it reports per frame PSNR and SSIM and, when the frames come from a video task (the
``worldsim_add_video_tasks`` hook), where its tracked object is: the task finds it in each generated frame
(``found``), its distance to the true position, in the task's unit, is the position error, and ``agent_tracked``
marks frames with it found within the task's ``tracked_within`` of the truth, next to baselines that know no
dynamics. Frames are averaged per horizon window, the training length's 1x, 2x, 4x, 8x (see
:func:`worldsim.video.metrics.metrics_per_horizon`).

Every rollout writes ``rollout.mp4`` and ``rollout.gif`` (context then generation, next to the truth
when there is one, a few episodes stacked), a TensorBoard video and ``rollout.json``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.config import to_plain
from worldsim.errors import ConfigError, DataError, WorldsimError
from worldsim.experiment import LoadedRun
from worldsim.rollout import horizon_unit, rollout, rollout_extent
from worldsim.runs import TensorBoardEntries, write_report
from worldsim.video.io import side_by_side, write_video
from worldsim.video.metrics import metrics_per_horizon, overall_metrics, position_error, psnr, ssim
from worldsim.video.tasks import build_video_task, no_dynamics_baselines, position_baselines

PSNR_CAP = 100.0  # dB reported for a frame equal to the truth (the PSNR itself is infinite)
SHOWN_EPISODES = 4  # episodes stacked in the video files


def to_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """Frames on the [0, 255] scale (decoded tokens may overshoot) -> uint8, rounded and clamped."""
    x = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def load_actions_file(path: str | Path, episodes: int) -> torch.Tensor:
    """``--actions FILE``: a .npy array (L, A) for every episode or (B, L, A), or a .npz with ``actions``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--actions: no such file {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        arr = loaded["actions"] if isinstance(loaded, np.lib.npyio.NpzFile) else loaded
    except (ValueError, OSError, KeyError) as exc:
        raise ConfigError(f"--actions: cannot read {path} as .npy, or .npz with an 'actions' array ({exc})") from None
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 2:
        arr = np.broadcast_to(arr, (episodes, *arr.shape))
    if arr.ndim != 3 or arr.shape[0] < episodes:
        raise ConfigError(
            f"--actions: expected (L, A) or (episodes >= {episodes}, L, A) actions, got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ConfigError(f"--actions: {path} contains NaN or inf values")
    return torch.from_numpy(np.ascontiguousarray(arr[:episodes]))


def load_eval_video(run: LoadedRun, length: int, episodes: int, data_file: str | None):
    """(frames uint8 (B, L, H, W, 3), actions (B, L, A) | None, positions (B, L, 2) | None, meta) to roll out on."""
    from worldsim.data.sources import load_dataset

    if data_file is None:
        data = load_dataset(to_plain(run.cfg.dataset), split="eval", length=length, count=episodes)
        frames = np.stack(data.observations)
        actions = None if data.actions is None else np.stack(data.actions)  # None: a model without actions
        positions = None if data.positions is None else np.stack(data.positions)
        return frames, actions, positions, dict(data.meta or {})
    from worldsim.video.data import read_episodes

    video = read_episodes(data_file, slice(0, episodes), length)  # only what the rollout uses
    if tuple(video.frames.shape[2:]) != tuple(run.obs_shape):
        raise DataError(
            f"--data: frames of {data_file} are {'x'.join(map(str, video.frames.shape[2:]))} but the model "
            f"was trained on {'x'.join(map(str, run.obs_shape))}"
        )
    if video.actions.shape[-1] != run.action_dim:
        raise DataError(
            f"--data: actions of {data_file} have {video.actions.shape[-1]} dims, the model expects {run.action_dim}"
        )
    if video.frames.shape[1] < length:
        raise DataError(
            f"--data: the rollout needs episodes of {length} frames but {data_file} has {video.frames.shape[1]}"
        )
    meta = {"task": video.task, "fps": video.fps, "resolution": int(video.frames.shape[2]), "settings": video.settings}
    return video.frames, video.actions, video.positions, meta


def video_task_of(meta: dict[str, Any], registry=None):
    """The video task that made the frames ``meta`` describes (built from the settings the file records), or None
    when they come from elsewhere (a task name no plugin registers, or no recorded settings)."""
    from worldsim.registry import default_registry

    registry = default_registry() if registry is None else registry
    name, settings = meta.get("task"), meta.get("settings") or {}
    if name not in registry.video_tasks or not settings:
        return None
    try:
        return build_video_task({**settings, "task": name}, int(meta["resolution"]), registry)
    except WorldsimError as exc:
        warnings.warn(f"rollout: no {name} metrics: {exc}", stacklevel=2)
        return None


def per_frame_metrics(
    generated: np.ndarray, truth: np.ndarray | None, positions: np.ndarray | None, task: Any | None
) -> dict[str, np.ndarray]:
    """Per-frame (B, N) metrics of uint8 frames: psnr/ssim against ``truth``; with the video ``task`` its tracked
    object (found; with true positions its error in the task's unit and whether it is tracked, i.e. found within
    the task's ``tracked_within``)."""
    out: dict[str, np.ndarray] = {}
    if truth is not None:
        out["psnr"] = np.minimum(psnr(generated, truth), PSNR_CAP)
        out["ssim"] = ssim(generated, truth)
    if task is None:
        return out
    found = task.find(generated)
    out["found"] = np.asarray(found["found"], dtype=bool)
    extra = getattr(task, "extra_metrics", None)
    if callable(extra):
        out.update(extra(generated))
    if positions is not None:
        out["position_error"] = position_error(found["centroid_px"], positions, task.to_position)
        # Found AND in the right place: unlike the error of found objects, it does not favour a model that draws
        # the object only while it is easy to place.
        out["agent_tracked"] = np.nan_to_num(out["position_error"], nan=np.inf) < float(task.tracked_within)
    return out


def rollout_video(context: np.ndarray, generated: np.ndarray, truth: np.ndarray | None) -> np.ndarray:
    """One (T, H', W', 3) video: per shown episode a row [truth | generated] (context frames in both), stacked."""
    n_ctx = context.shape[1]
    phase = np.arange(n_ctx + generated.shape[1]) < n_ctx
    rows = []
    for b in range(min(SHOWN_EPISODES, generated.shape[0])):
        panels, labels = [np.concatenate([context[b], generated[b]])], ["generated"]
        if truth is not None:
            panels.insert(0, np.concatenate([context[b], truth[b]]))
            labels.insert(0, "truth")
        rows.append(side_by_side(panels, labels=labels, phase=phase))
    gap = np.full((rows[0].shape[0], 2, rows[0].shape[2], 3), 255, dtype=np.uint8)
    stacked = [rows[0]]
    for r in rows[1:]:
        stacked += [gap, r]
    return np.concatenate(stacked, axis=1)


def _baseline_metrics(
    context: np.ndarray,
    truth: np.ndarray,
    positions: tuple[np.ndarray, np.ndarray] | None,
    seed: int,
    within: float,
    unit: int,
    multiples: list,
) -> dict[str, Any]:
    """The baselines that know no dynamics (``frozen``: the last context frame copied; ``random``: a frame of the
    episodes drawn at random), per horizon and over all frames, by name: psnr and ssim against the true frames,
    and with ``positions`` (the context's and the continuation's) their object's error and tracked share."""
    per_frame: dict[str, dict[str, np.ndarray]] = {
        name: {"psnr": np.minimum(psnr(guess, truth), PSNR_CAP), "ssim": ssim(guess, truth)}
        for name, guess in no_dynamics_baselines(context, truth, seed).items()
    }
    if positions is not None:
        context_pos, true_pos = positions
        for name, guess in position_baselines(context_pos, true_pos, seed).items():
            err = np.linalg.norm(guess - true_pos, axis=-1)
            per_frame[name].update(position_error=err, agent_tracked=err < within)
    return {
        name: {"horizons": metrics_per_horizon(m, unit, multiples), "all_frames": overall_metrics(m)}
        for name, m in per_frame.items()
    }


def _write_rollout(
    report: dict[str, Any],
    run: LoadedRun,
    out_dir: Path | None,
    context: np.ndarray,
    generated: np.ndarray,
    truth: np.ndarray | None,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Write rollout.{json,mp4,gif} and the TensorBoard video of [truth | generated]; returns the report."""
    video = rollout_video(context, generated, truth)
    fps = int(meta.get("fps") or 8)
    files = {key: (f"rollout.{key}", lambda path: write_video(path, video, fps=fps)) for key in ("mp4", "gif")}
    return write_report(report, "rollout", run.folder, run.step, out_dir, files=files,
                        tensorboard=lambda r: _tensorboard(r, video, fps))  # fmt: skip


def evaluate_video_rollouts(
    run: LoadedRun,
    frames: int | None = None,
    context: int | None = None,
    episodes: int | None = None,
    seed: int = 0,
    out_dir: Path | None = None,
    actions_file: str | None = None,
    data_file: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Roll out, measure, and write rollout.{mp4,gif,json} plus a TensorBoard video; returns the report."""
    cfg = run.cfg
    f = int(run.tokenizer.frames_per_token)
    train_frames = int(cfg.data.seq_len) * f
    settings, context_tokens, frames, n = rollout_extent(run, frames, context, episodes, default_windows=8)
    n_ctx = context_tokens * f
    given_actions = load_actions_file(actions_file, n) if actions_file else None
    # With an actions file the data's continuation answers other actions: only the context comes from it.
    length = n_ctx if given_actions is not None else n_ctx + math.ceil(frames / f) * f
    obs, actions, positions, meta = load_eval_video(run, length, n, data_file)
    task = video_task_of(meta)
    n = obs.shape[0]
    if given_actions is not None:
        actions = given_actions[:n]
    actions = None if actions is None else torch.as_tensor(np.asarray(actions))
    generator = torch.Generator().manual_seed(seed)
    decoded = rollout(
        run, torch.from_numpy(obs[:, :n_ctx]), frames, actions if run.action_dim else None, generator, progress
    )
    generated = to_uint8(decoded)
    truth = None if given_actions is not None else obs[:, n_ctx : n_ctx + frames]
    true_pos = None if (given_actions is not None or positions is None) else positions[:, n_ctx : n_ctx + frames]
    metrics = per_frame_metrics(generated, truth, true_pos, task)
    multiples, unit = list(settings.horizons), horizon_unit(run, settings)
    baselines: dict[str, Any] = {}
    if truth is not None:
        pos, within = None, 0.0
        if true_pos is not None and "agent_tracked" in metrics:
            pos, within = (positions[:, :n_ctx], true_pos), float(task.tracked_within)
        baselines = _baseline_metrics(obs[:, :n_ctx], truth, pos, seed, within, unit, multiples)
    report = {
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "task": meta.get("task"),
        "episodes": n,
        "context_frames": n_ctx,
        "generated_frames": frames,
        "train_frames": train_frames,
        "horizon_unit_frames": unit,
        "frames_per_token": f,
        "actions": actions_file or "the episodes' own",
        "sampling": to_plain(cfg.sampling),
        "horizons": metrics_per_horizon(metrics, unit, multiples) if metrics else [],
        "all_frames": overall_metrics(metrics) if metrics else {},
        "per_frame": {k: _nanmean_over_episodes(v) for k, v in metrics.items()},
        "position_unit": None if task is None else str(task.position_unit),
        "baselines": baselines,
    }
    if truth is not None and task is not None:
        report["truth_agent_found"] = float(np.mean(task.find(truth)["found"]))  # the detector's own check
        extra = getattr(task, "extra_metrics", None)
        if callable(extra):  # what the task's extra metrics read in the true frames, to compare the model's with
            truth_extra = extra(truth)
            report["truth_extra"] = {"horizons": metrics_per_horizon(truth_extra, unit, multiples),
                                     "all_frames": overall_metrics(truth_extra)}  # fmt: skip
    return _write_rollout(report, run, out_dir, obs[:, :n_ctx], generated, truth, meta)


def _nanmean_over_episodes(values: np.ndarray) -> list[float]:
    """Per-frame mean over episodes, NaN (JSON null-free: NaN) where no episode has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames where no episode found the agent
        return np.nanmean(values.astype(np.float64), axis=0).tolist()


def format_video_table(report: dict[str, Any]) -> str:
    """psnr (dB) and ssim against the truth; pos err: the tracked object's position error (in the video task's
    ``position_unit``); found: share of frames with it found; tracked: share of frames with it found within the
    task's ``tracked_within`` of the truth; then a column per extra measure of the task (shares of frames, such as
    Pong's ``ball_found``). Then the baselines that know no dynamics, and the extra measures in the true frames."""
    cols = [
        ("psnr", "psnr dB", "{:>8.2f}"),
        ("ssim", "ssim", "{:>7.3f}"),
        ("position_error", "pos err", "{:>8.3f}"),
        ("agent_found", "found", "{:>7.1%}"),
        ("agent_tracked", "tracked", "{:>8.1%}"),
    ]
    rows = list(report["horizons"])
    if report.get("all_frames"):
        rows.append({"horizon": "all", **report["all_frames"]})
    present = [c for c in cols if any(c[0] in r for r in rows)]
    known = {"horizon", "frames", *(c[0] for c in cols)}
    extras = [k for k in (rows[0] if rows else {}) if k not in known]  # a task's own measures, shares of frames
    present += [(k, k, "{:>" + str(max(8, len(k))) + ".1%}") for k in extras]
    head = f"{'horizon':>8} {'frames':>9} " + " ".join(f"{label:>{len(fmt.format(0.0))}}" for _, label, fmt in present)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(fmt.format(r[key]) if key in r else " " * len(fmt.format(0.0)) for key, _, fmt in present)
        lines.append(f"{r['horizon']:>8} {r['frames'][0]:>4}-{r['frames'][1]:<4} {cells}")
    named = {"frozen": "the last context frame copied", "random": "a random frame of the episodes"}
    for name, base in (report.get("baselines") or {}).items():
        lines.append(f"baseline, {named.get(name, name)}: " + _series(base, ("agent_tracked", "psnr", "ssim")))
    if report.get("truth_extra"):
        lines.append("the true frames: " + _series(report["truth_extra"], tuple(report["truth_extra"]["all_frames"])))
    return "\n".join(lines)


def _series(block: dict[str, Any], keys: tuple[str, ...]) -> str:
    """``name a / b / c (1x / 2x / 4x), all d`` for each of ``keys`` a block of horizons and all frames has."""
    horizons = " / ".join(r["horizon"] for r in block["horizons"])
    parts = []
    for key in (k for k in keys if k != "frames" and k in block["all_frames"]):
        series = " / ".join(_fmt(key, r[key]) for r in block["horizons"])
        name = "tracked" if key == "agent_tracked" else key
        parts.append(f"{name} {series} ({horizons}), all {_fmt(key, block['all_frames'][key])}")
    return "; ".join(parts)


def _fmt(key: str, value: float) -> str:
    """psnr in dB, ssim and errors to 3 places, anything else (shares of frames) in percent."""
    return f"{value:.2f}" if key == "psnr" else f"{value:.3f}" if key in ("ssim", "position_error") else f"{value:.1%}"


def _tensorboard(report: dict[str, Any], video: np.ndarray, fps: int) -> TensorBoardEntries:
    scalars = {
        f"rollout/{key}_{r['horizon']}": r[key]
        for r in report["horizons"]
        for key in ("psnr", "ssim", "position_error", "agent_found")
        if key in r
    }
    return TensorBoardEntries(scalars=scalars, videos={"rollout/video": (video, fps)})
