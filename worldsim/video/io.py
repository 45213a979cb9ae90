"""Video files and TensorBoard videos for rollouts: side-by-side panels, mp4/gif writing, GIF summaries.

No moviepy and no font: panels carry a coloured bar on top instead of a text label -- green for ground
truth, grey on context frames and orange on generated frames of a model's panel -- so a viewer sees where
generation starts.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worldsim.errors import ConfigError, DataError, check_int

__all__ = ["side_by_side", "write_video", "log_video", "gif_bytes", "BAR_COLORS"]

BAR_COLORS = {"truth": (40, 170, 60), "generated": (240, 140, 20), "context": (150, 150, 150)}
SEPARATOR, SEPARATOR_PX = (20, 20, 20), 2
_TRUTH_WORDS = ("truth", "ground", "gt", "real", "true", "data")


def _is_truth(label: str | None) -> bool:
    """A panel is ground truth when its label starts with one of ``_TRUTH_WORDS`` (case-insensitive)."""
    return label is not None and label.strip().lower().startswith(_TRUTH_WORDS)


def _video_u8(frames, name: str) -> np.ndarray:
    v = np.asarray(frames)
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
        raise DataError(f"{name}: expected a video (T, H, W, 3) with T >= 1, got shape {v.shape}")
    if v.dtype != np.uint8:
        v = np.clip(np.rint(v.astype(np.float64)), 0, 255).astype(np.uint8)
    return v


def _context_mask(phase, t: int) -> np.ndarray:
    """Per-frame bool, True on context frames; ``phase`` holds bools or 'context'/'generated' strings.
    Frames past its end count as generated."""
    out = np.zeros(t, dtype=bool)
    if phase is None:
        return out
    p = np.asarray(phase)
    if p.ndim != 1:
        raise DataError(f"side_by_side.phase: expected one entry per frame, got shape {p.shape}")
    if p.dtype.kind in "US":
        bad = set(p.tolist()) - {"context", "generated"}
        if bad:
            raise DataError(f"side_by_side.phase: expected 'context' or 'generated', got {sorted(bad)}")
        p = p == "context"
    n = min(t, len(p))
    out[:n] = p[:n].astype(bool)
    return out


def side_by_side(
    rows: Sequence[np.ndarray],
    labels: Sequence[str] | None = None,
    scale: int | None = None,
    phase=None,
    bar_px: int | None = None,
) -> np.ndarray:
    """Videos ``(T_i, H, W, 3)`` left to right in one ``(T, H', W', 3)`` uint8 video.

    Each panel is upscaled by the integer nearest-neighbour ``scale`` (default ``max(1, 128 // max(H, W))``:
    4 for 32x32 frames) and topped by a ``bar_px``-high bar (default ``2 * scale``): green on a panel whose
    label marks ground truth (starts with truth/ground/gt/real/true/data), otherwise grey on context frames
    and orange on generated ones, per frame from ``phase`` (bools or 'context'/'generated'; None: all
    generated). Panels are separated by 2 px; ``T`` is the longest video and shorter ones repeat their last
    frame. ``H' = bar_px + H * scale`` and ``W' = n * W * scale + 2 * (n - 1)``.
    """
    if not rows:
        raise DataError("side_by_side.rows: expected at least one video, got none")
    vids = [_video_u8(v, f"side_by_side.rows[{i}]") for i, v in enumerate(rows)]
    if len({v.shape[1:] for v in vids}) != 1:
        raise DataError(f"side_by_side.rows: expected frames of one size, got {sorted({v.shape[1:] for v in vids})}")
    if labels is not None and len(labels) != len(vids):
        raise DataError(f"side_by_side.labels: expected {len(vids)} labels, got {len(labels)}")
    t, (h, w) = max(v.shape[0] for v in vids), vids[0].shape[1:3]
    scale = max(1, 128 // max(h, w)) if scale is None else check_int("side_by_side.scale", scale)
    bar_px = 2 * scale if bar_px is None else check_int("side_by_side.bar_px", bar_px, minimum=0)
    ph, pw = h * scale, w * scale
    n = len(vids)
    out = np.empty((t, bar_px + ph, n * pw + SEPARATOR_PX * (n - 1), 3), dtype=np.uint8)
    out[:] = SEPARATOR
    ctx = _context_mask(phase, t)
    bar = np.where(ctx[:, None], np.array(BAR_COLORS["context"], np.uint8), np.array(BAR_COLORS["generated"], np.uint8))
    for i, v in enumerate(vids):
        if v.shape[0] < t:
            v = np.concatenate([v, np.repeat(v[-1:], t - v.shape[0], axis=0)])
        x0 = i * (pw + SEPARATOR_PX)
        out[:, bar_px:, x0 : x0 + pw] = v.repeat(scale, axis=1).repeat(scale, axis=2)
        truth = _is_truth(labels[i]) if labels is not None else False
        out[:, :bar_px, x0 : x0 + pw] = BAR_COLORS["truth"] if truth else bar[:, None, None, :]
    return out


def gif_bytes(frames, fps: float) -> bytes:
    """An animated GIF (loops forever) of ``(T, H, W, 3)`` frames, in memory. Pillow merges identical
    consecutive frames into one longer frame, so the frame count can be lower; the timing is kept."""
    import imageio.v3 as iio

    v = _video_u8(frames, "frames")
    if not fps or fps <= 0:
        raise ConfigError(f"fps: expected a positive number, got {fps!r}")
    return iio.imwrite("<bytes>", v, extension=".gif", plugin="pillow", duration=1000.0 / fps, loop=0)


def _write_mp4(path: str, v: np.ndarray, fps: float) -> None:
    import imageio_ffmpeg

    # H.264 in yuv420p needs even sizes: pad by repeating the last row/column instead of letting
    # imageio-ffmpeg resize to a multiple of 16 (macro_block_size=1 turns that resize off)
    v = np.pad(v, ((0, 0), (0, v.shape[1] % 2), (0, v.shape[2] % 2), (0, 0)), mode="edge")
    writer = imageio_ffmpeg.write_frames(
        path,
        (v.shape[2], v.shape[1]),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=8,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start the generator
    try:
        for frame in v:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def write_video(path: str | os.PathLike, frames, fps: float = 8) -> Path:
    """Write ``(T, H, W, 3)`` frames to ``path`` by suffix: ``.mp4`` (H.264, yuv420p, odd sizes padded to
    even, via imageio-ffmpeg's bundled ffmpeg) or ``.gif`` (pillow, loops forever). Atomic: written to a
    temp file with the same suffix in the same folder, then ``os.replace``. Returns the path."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise ConfigError(f"video path: expected a .mp4 or .gif file, got {str(path)!r}")
    if not fps or fps <= 0:
        raise ConfigError(f"fps: expected a positive number, got {fps!r}")
    v = _video_u8(frames, "frames")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        if suffix == ".mp4":
            _write_mp4(tmp, v, fps)
        else:
            Path(tmp).write_bytes(gif_bytes(v, fps))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def log_video(writer, tag: str, frames, step: int, fps: float = 8) -> None:
    """Add ``(T, H, W, 3)`` frames to a ``torch.utils.tensorboard.SummaryWriter`` as an animated GIF image
    summary -- what ``SummaryWriter.add_video`` writes, without moviepy; TensorBoard plays it in the
    Images tab."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    v = _video_u8(frames, "frames")
    image = Summary.Image(height=v.shape[1], width=v.shape[2], colorspace=3, encoded_image_string=gif_bytes(v, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
