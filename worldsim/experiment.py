"""From a resolved config to the objects of a run: data, tokenizer, model; and back from a checkpoint.

Shapes are derived here, never configured: ``token_shape`` from the tokenizer, ``cond_dim`` from the
data's action size times the tokenizer's frames per token, ``max_tokens`` = ``data.seq_len``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from omegaconf import DictConfig

from worldsim.checkpoint import load_checkpoint, resolve_checkpoint
from worldsim.config import component_kwargs, from_plain, to_plain
from worldsim.data.sources import SequenceData, load_dataset
from worldsim.data.windows import TokenWindows
from worldsim.diffusion.model import DiffusionModel
from worldsim.errors import CheckpointError, DataError, WorldsimError

def stack_frames(x: torch.Tensor, frames_per_token: int) -> torch.Tensor:
    """(L, A) per-step conditions -> (L // f, f * A) per-token conditions (the tokenizer's frame stacking)."""
    usable = x.shape[0] - x.shape[0] % frames_per_token
    return rearrange(x[:usable], "(t f) a -> t (f a)", f=frames_per_token)


def build_tokenizer(cfg: DictConfig, registry, obs_shape: tuple[int, ...]):
    return registry.build("tokenizer", cfg.tokenizer.name, {"obs_shape": tuple(obs_shape)}, component_kwargs(cfg.tokenizer))


def build_model(cfg: DictConfig, registry, tokenizer, action_dim: int) -> DiffusionModel:
    derived = {
        "token_shape": tuple(tokenizer.token_shape),
        "cond_dim": int(action_dim) * int(tokenizer.frames_per_token),
        "max_tokens": int(cfg.data.seq_len),
    }
    backbone = registry.build("backbone", cfg.backbone.name, derived, component_kwargs(cfg.backbone))
    return DiffusionModel(backbone, schedule=cfg.diffusion.schedule, prediction=cfg.diffusion.prediction)


def encode_episodes(tokenizer, data: SequenceData) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Tokens (T_i, *token_shape) and per-token conditions for each episode (a partial last token is dropped)."""
    f = int(tokenizer.frames_per_token)
    episodes, conds = [], [] if data.actions is not None else None
    with torch.no_grad():
        for i, obs in enumerate(data.observations):
            usable = obs.shape[0] - obs.shape[0] % f
            if usable == 0:
                continue
            episodes.append(tokenizer.encode(torch.from_numpy(np.ascontiguousarray(obs[:usable]))[None])[0])
            if conds is not None:
                conds.append(stack_frames(torch.from_numpy(np.ascontiguousarray(data.actions[i])), f))
    if not episodes:
        raise DataError(f"dataset: every episode is shorter than one token ({f} steps)")
    return episodes, conds


def fit_tokenizer(tokenizer, data: SequenceData) -> None:
    tokenizer.fit(torch.from_numpy(np.concatenate(data.observations)))  # all steps of all episodes, (N, *obs_shape)


@dataclass
class Prepared:
    """Everything a training run needs."""

    cfg: DictConfig
    model: DiffusionModel
    tokenizer: Any
    windows: TokenWindows
    data: SequenceData


def prepare_training(cfg: DictConfig, registry) -> Prepared:
    data = load_dataset(to_plain(cfg.dataset), split="train")
    tokenizer = build_tokenizer(cfg, registry, data.obs_shape)
    fit_tokenizer(tokenizer, data)
    episodes, conds = encode_episodes(tokenizer, data)
    windows = TokenWindows(episodes, int(cfg.data.seq_len), conds)
    model = build_model(cfg, registry, tokenizer, data.action_dim)
    return Prepared(cfg, model, tokenizer, windows, data)


def checkpoint_extras(prepared: Prepared) -> dict[str, Any]:
    """What a checkpoint needs beyond weights to rebuild the run (plain data only: weights_only loads it)."""
    return {
        "config": to_plain(prepared.cfg),
        "tokenizer": prepared.tokenizer.state_dict(),
        "obs_shape": list(prepared.data.obs_shape),
        "action_dim": prepared.data.action_dim,
    }


@dataclass
class LoadedRun:
    """A trained model restored from a checkpoint (EMA weights), ready to sample."""

    cfg: DictConfig
    model: DiffusionModel
    tokenizer: Any
    obs_shape: tuple[int, ...]
    action_dim: int
    checkpoint: Path
    step: int

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.parent.parent if self.checkpoint.parent.name == "checkpoints" else self.checkpoint.parent


def load_run(path: str | Path, registry, weights: str = "ema") -> LoadedRun:
    ckpt = resolve_checkpoint(path)
    payload = load_checkpoint(ckpt)
    for key in ("config", "tokenizer", "obs_shape", "action_dim", "model"):
        if key not in payload:
            raise CheckpointError(f"{ckpt}: not a worldsim training checkpoint (missing {key!r})")
    cfg = from_plain(payload["config"])
    try:
        tokenizer = build_tokenizer(cfg, registry, tuple(payload["obs_shape"]))
        tokenizer.load_state_dict(payload["tokenizer"])
        model = build_model(cfg, registry, tokenizer, int(payload["action_dim"]))
        state = payload.get("ema") if weights == "ema" and payload.get("ema") else payload["model"]
        model.load_state_dict(state)
    except WorldsimError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{ckpt}: does not match its config ({first})") from None
    model.eval()
    tokenizer.eval()
    return LoadedRun(cfg, model, tokenizer, tuple(payload["obs_shape"]), int(payload["action_dim"]), ckpt, int(payload.get("step", 0)))
