"""The run folder: the one module that knows its layout, and the writer of every evaluator's report in it.

::

    runs/NAME/                       (``run.dir``, or ``runs/<run.name>``)
      config.yaml                    the fully resolved config
      checkpoints/last.pt            the newest checkpoint; step_XXXXXXXX.pt every trainer.ckpt_every steps
                                     (a hard link of last.pt as it was then, where the file system has them)
      tb/                            TensorBoard events: training, and every report below
      rollouts/rollout.json          worldsim rollout (+ rollout.png, or rollout.mp4 / rollout.gif for video)
      plans/plan.json                worldsim plan (+ plans.png)

:func:`check_writable` checks an output folder (``run.dir``, ``--out``) before any work starts.
Every report is written the same way (:func:`write_report`): its files, then its JSON (last, so a JSON that
exists describes complete files), then its TensorBoard scalars, images and videos.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.errors import CheckpointError, ConfigError

CHECKPOINTS = "checkpoints"
LAST = "last.pt"
#: the report kinds: their folder and JSON file names
REPORTS = {"rollout": ("rollouts", "rollout.json"), "plan": ("plans", "plan.json")}


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run."""

    root: Path

    @classmethod
    def of(cls, cfg: Any) -> RunFolder:
        """The run folder a config names: ``run.dir``, else ``runs/<run.name>``."""
        return cls(Path(cfg.run.dir) if cfg.run.dir else Path("runs") / str(cfg.run.name))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | os.PathLike) -> RunFolder:
        """The run a checkpoint file belongs to (a loose checkpoint file: the folder it is in)."""
        path = Path(checkpoint)
        return cls(path.parent.parent if path.parent.name == CHECKPOINTS else path.parent)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def reports(self, kind: str) -> Path:
        return self.root / REPORTS[kind][0]

    def check_report_folders(self, kind: str, out_dir: str | os.PathLike | None = None) -> None:
        """Before an evaluator of ``kind`` runs: the folder its report goes to (``--out``, else the run's) and
        the run's TensorBoard folder can be written (:func:`check_writable`)."""
        if out_dir is not None:
            check_writable(out_dir, "--out")
        else:
            check_writable(self.reports(kind), "--out (default: the run's report folder)")
        check_writable(self.tensorboard, "the run's TensorBoard folder")


def check_writable(folder: str | os.PathLike, option: str) -> Path:
    """Create ``folder`` (with its parents) and write, then remove, a small temp file in it; returns it.

    Called before any work starts, so a bad output path (``--out``, ``run.dir``) fails at once and not after
    the work: a ConfigError naming ``option`` and the path (exit 2 from the CLI).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder}: is a file; expected a folder that can be created and written")
    probe, doing = None, "created"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        doing = "written"
        fd, name = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        probe = Path(name)
        with os.fdopen(fd, "wb") as f:
            f.write(b"worldsim")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"{option} {folder}: cannot be {doing} ({reason}); expected a folder that can be created and written"
        ) from None
    finally:
        if probe is not None:
            try:
                probe.unlink()
            except OSError:
                pass
    return folder


def resolve_checkpoint(run_or_ckpt: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder -> its ``checkpoints/last.pt``."""
    path = Path(run_or_ckpt)
    if path.is_dir():
        last = RunFolder(path).last
        if not last.exists():
            raise CheckpointError(
                f"run {path}: no {CHECKPOINTS}/{LAST}; expected a run folder written by `worldsim train`"
            )
        return last
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: file not found")
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` through a temp file in the same folder and ``os.replace``: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@dataclass
class TensorBoardEntries:
    """What a report adds to the run's TensorBoard: scalars, images (PNG files) and videos (uint8 (N, T, H, W, 3))."""

    scalars: dict[str, float] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    videos: dict[str, tuple[np.ndarray, int]] = field(default_factory=dict)  # tag -> (frames, fps)


def write_report(
    report: dict[str, Any],
    kind: str,
    run: RunFolder,
    step: int,
    out_dir: str | os.PathLike | None = None,
    files: Mapping[str, tuple[str, Callable[[Path], Any]]] | None = None,
    tensorboard: Callable[[dict[str, Any]], TensorBoardEntries] | None = None,
) -> dict[str, Any]:
    """Write one evaluator's ``report`` of ``kind`` (``rollout`` / ``plan``); returns it with the paths added.

    ``files`` maps a report key to (file name, a function writing that file), e.g. ``{"plot": ("plans.png",
    draw)}``; they go to ``out_dir`` (default: the run's folder for the kind). The JSON is written last,
    atomically; ``tensorboard(report)`` then says what to log at ``step`` in the run's TensorBoard.
    """
    out = Path(out_dir) if out_dir is not None else run.reports(kind)
    out.mkdir(parents=True, exist_ok=True)
    for key, (name, write) in (files or {}).items():
        write(out / name)
        report[key] = str(out / name)
    report["json"] = str(out / REPORTS[kind][1])
    report["tensorboard"] = str(run.tensorboard)
    write_text_atomic(report["json"], json.dumps(report, indent=2, allow_nan=True))
    if tensorboard is not None:
        _log(run.tensorboard, tensorboard(report), step)
    return report


def _log(folder: Path, entries: TensorBoardEntries, step: int) -> None:
    import imageio.v3 as iio
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    try:
        for tag, value in entries.scalars.items():
            if np.isfinite(value):
                writer.add_scalar(tag, value, step)
        for tag, png in entries.images.items():
            writer.add_image(tag, iio.imread(png)[..., :3], step, dataformats="HWC")
        if entries.videos:
            from worldsim.video.io import log_video

            for tag, (frames, fps) in entries.videos.items():
                log_video(writer, tag, frames, step, fps=fps)
    finally:
        writer.close()
