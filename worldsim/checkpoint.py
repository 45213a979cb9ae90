"""Checkpoint files: atomic writes, safe loads (``torch.load(weights_only=True)``).

A checkpoint is a plain dict of tensors, dicts, lists, strings, numbers, bools and None, so it loads
without unpickling arbitrary objects. The trainer writes these keys (see ``worldsim.trainer``)::

    format     "worldsim-checkpoint-v1"
    step       int, optimizer steps taken
    model      DiffusionModel state_dict (raw weights)
    ema        EMA weights, a state_dict with the model's keys (load it into the model to sample)
    optimizer  AdamW state_dict
    rng        {"torch": ByteTensor, "cuda": [ByteTensor per device]} (cuda only when available)
    config     resolved config as a plain dict
    tokenizer  tokenizer state_dict or None
    ...        any extras the caller passed (``Trainer(extra_state=...)``)
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from worldsim.errors import CheckpointError

FORMAT = "worldsim-checkpoint-v1"
#: what a world-model checkpoint must hold to rebuild its run (training checkpoints and shipped files alike)
WORLD_MODEL_KEYS = ("config", "tokenizer", "obs_shape", "action_dim", "model")
#: free space below which a failed write is reported as a full disk
DISK_FULL_BYTES = 2**20
_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.device)


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError naming the key whose value ``torch.load(weights_only=True)`` could not read."""
    if isinstance(value, (torch.Tensor,) + _SCALARS):
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint payload: key {k!r} in {where} must be a str or int")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint payload: {where} is a {type(value).__name__}; expected tensors, dicts, lists, str, int, float, bool or None"
    )


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` to ``path`` atomically: temp file in the same folder, fsync, ``os.replace``.

    A reader (or a crash) sees either the old file or the complete new one, never a partial file.
    ``format`` is filled in when missing. Returns the path. A write that fails (a full disk, an I/O error)
    removes its temp file, leaves the old ``path`` as it was and raises :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    payload = {"format": FORMAT, **payload}
    _check_plain(payload, "payload")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)

    def write() -> None:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())

    _replace_with(path, tmp, write)
    return path


def link_checkpoint(source: str | os.PathLike, dest: str | os.PathLike) -> str:
    """Make ``dest`` hold the checkpoint ``source`` as it is now: a hard link where the file system allows one,
    else a copy; returns ``"link"`` or ``"copy"``.

    The trainer keeps a ``step_N.pt`` every ``ckpt_every`` steps beside ``last.pt`` so that an earlier step can
    be planned or rolled out from (or resumed). At step N both hold the same bytes, so the step file is a
    second name of the ``last.pt`` just written instead of a second copy of it (16.5 MB each for the toy run).
    That stays safe: ``last.pt`` is only ever replaced by ``os.replace`` (:func:`save_checkpoint`), which points
    the name ``last.pt`` at a new file and leaves the old one, still named ``step_N.pt``, untouched (a tool that
    rewrote ``last.pt`` in place, ``cp x last.pt``, would change ``step_N.pt`` too; worldsim never does). Like
    :func:`save_checkpoint`, ``dest`` appears complete or not at all (link or copy to a temp name, then rename).
    """
    source, dest = Path(source), Path(dest)
    tmp = _temp_name(dest)
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links here (some network and FAT-like file systems), or across devices
        pass
    else:
        _replace_with(dest, tmp, lambda: None)
        return "link"

    def copy() -> None:
        with open(source, "rb") as src, open(tmp, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
            f.flush()
            os.fsync(f.fileno())

    _replace_with(dest, tmp, copy)
    return "copy"


def _temp_name(path: Path) -> Path:
    """The temp file a write of ``path`` goes through (its writer's pid in the name: see remove_stale_temp_files)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _replace_with(path: Path, tmp: Path, write: Callable[[], None]) -> None:
    """Run ``write()`` (which fills ``tmp``), then ``os.replace(tmp, path)`` and fsync the folder. Any failure
    removes ``tmp``, leaves ``path`` as it was and raises CheckpointError naming ``path`` and the reason."""
    try:
        write()
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a failed write of its zip as a RuntimeError
        raise CheckpointError(f"checkpoint {path}: writing it failed ({_write_failure(exc, path)})") from None
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable (POSIX; not possible on every platform)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_failure(exc: BaseException, path: Path) -> str:
    """Why a write failed, in a few words. torch.save reports a full disk as a bare zip-writer error ("unexpected
    pos ..."), so the free space is measured (the failed temp file still there) and a full disk is said as such."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if isinstance(exc, RuntimeError):  # torch's "[enforce fail at inline_container.cc:N] . unexpected pos ..."
            reason = "torch.save: " + reason.split("] ", 1)[-1].strip(" .")
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return reason
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < DISK_FULL_BYTES:
        detail = "" if reason == os.strerror(errno.ENOSPC) else f"; {reason}"
        return f"{os.strerror(errno.ENOSPC)}: {free / 2**20:.1f} MB free on its file system{detail}"
    return reason


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files of :func:`save_checkpoint` whose writer is gone (killed mid-write); returns them.

    A temp file is never a checkpoint (only ``os.replace`` makes one), so this only frees the space.
    """
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a worldsim checkpoint onto the CPU with ``weights_only=True``.

    Missing, unreadable, or non-worldsim files raise :class:`CheckpointError` with a one-line message.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: file not found")
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path}: is a folder; expected a checkpoint file (a run folder is read by worldsim.runs.resolve_checkpoint)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of foreign objects, not a torch file at all
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"checkpoint {path}: cannot be read ({reason[:200]}); expected a file written by worldsim"
        ) from None
    if not isinstance(payload, dict) or "format" not in payload:
        raise CheckpointError(f"checkpoint {path}: not a worldsim checkpoint (no 'format' key)")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path}: unsupported format {payload['format']!r}; expected {FORMAT!r}")
    return payload
