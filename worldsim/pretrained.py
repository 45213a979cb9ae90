"""Models shipped with worldsim, found by a short name: ``worldsim plan maze2d-medium``.

A shipped model is one weights-only checkpoint file, ``pretrained/NAME.pt`` (installed as the package
``worldsim_pretrained``): the EMA weights, the tokenizer's fitted state and the fully resolved config, and
nothing a run needs only to resume training (optimizer, RNG states, raw weights). It loads with
``torch.load(weights_only=True)`` like every checkpoint. :func:`export` makes one from a training run;
reports of a shipped model go to ``runs/NAME/`` of the working directory, never into the installed package.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from worldsim.checkpoint import WORLD_MODEL_KEYS, load_checkpoint, save_checkpoint
from worldsim.errors import CheckpointError
from worldsim.runs import RunFolder, resolve_checkpoint

PACKAGE = "worldsim_pretrained"
SUFFIX = ".pt"
#: what a shipped file keeps of a training checkpoint (``model`` holds the EMA weights when there are any)
KEPT = ("kind", "config", "tokenizer", "obs_shape", "action_dim", "step")


def folder() -> Path:
    """Where the shipped models are installed."""
    return Path(str(resources.files(PACKAGE)))


def shipped() -> dict[str, Path]:
    """Short name -> checkpoint file of every shipped model."""
    return {p.stem: p for p in sorted(folder().glob(f"*{SUFFIX}"))}


def resolve(run_or_name: str | os.PathLike) -> Path:
    """A checkpoint file from a run folder, a checkpoint file, or a shipped model's short name (a name with no
    path separator that is not an existing path)."""
    path = Path(run_or_name)
    if path.exists() or os.sep in str(run_or_name):
        return resolve_checkpoint(path)
    found = shipped().get(str(run_or_name))
    if found is None:
        names = ", ".join(shipped()) or "none"
        raise CheckpointError(f"{run_or_name}: no such run folder or checkpoint, and no shipped model of that name "
                              f"(shipped: {names})")  # fmt: skip
    return found


def output_folder(checkpoint: Path) -> RunFolder:
    """The run folder reports of ``checkpoint`` go to: its own run, or ``runs/NAME`` for a shipped model."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.resolve() == folder().resolve():
        return RunFolder(Path("runs") / checkpoint.stem)
    return RunFolder.of_checkpoint(checkpoint)


def export(
    run_or_checkpoint: str | os.PathLike,
    dest: str | os.PathLike,
    settings: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Path:
    """Write the weights-only file of a training run's checkpoint (its EMA weights) to ``dest``. ``settings``
    maps the run's resolved config to the one the file keeps (the planning settings it is shipped with)."""
    payload = load_checkpoint(resolve_checkpoint(run_or_checkpoint))
    missing = [k for k in WORLD_MODEL_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{run_or_checkpoint}: not a world-model checkpoint (missing {', '.join(missing)})")
    slim = {k: payload[k] for k in KEPT if k in payload}
    if settings is not None:
        slim["config"] = settings(payload["config"])
    slim["model"] = payload.get("ema") or payload["model"]
    return save_checkpoint(dest, slim)
