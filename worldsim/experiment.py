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
from omegaconf import DictConfig, OmegaConf

from worldsim.checkpoint import WORLD_MODEL_KEYS, load_checkpoint
from worldsim.config import component_kwargs, from_plain, to_plain, with_base_sections
from worldsim.data.goals import GoalWindows, check_goal_dims, goal_cond_dim
from worldsim.data.sequence import SequenceData, strided
from worldsim.data.sources import load_dataset
from worldsim.data.token_cache import cached_tokens
from worldsim.data.windows import TokenWindows
from worldsim.diffusion.model import DiffusionModel
from worldsim.errors import CheckpointError, DataError, WorldsimError
from worldsim.pretrained import output_folder, resolve
from worldsim.runs import RunFolder
from worldsim.settings import DataSettings


def stack_frames(x: torch.Tensor, frames_per_token: int) -> torch.Tensor:
    """(L, A) per-step conditions -> (L // f, f * A) per-token conditions (the tokenizer's frame stacking)."""
    usable = x.shape[0] - x.shape[0] % frames_per_token
    return rearrange(x[:usable], "(t f) a -> t (f a)", f=frames_per_token)


def build_tokenizer(cfg: DictConfig, registry, obs_shape: tuple[int, ...]):
    return registry.build(
        "tokenizer", cfg.tokenizer.name, {"obs_shape": tuple(obs_shape)}, component_kwargs(cfg.tokenizer)
    )


def build_model(cfg: DictConfig, registry, tokenizer, action_dim: int) -> DiffusionModel:
    goal = goal_cond_dim(tokenizer, cfg.data.goal_dims)
    derived = {
        "token_shape": tuple(tokenizer.token_shape),
        "cond_dim": int(action_dim) * int(tokenizer.frames_per_token) + goal,
        "max_tokens": int(cfg.data.seq_len),
    }
    backbone = registry.build("backbone", cfg.backbone.name, derived, component_kwargs(cfg.backbone))
    return DiffusionModel(backbone, schedule=cfg.diffusion.schedule, prediction=cfg.diffusion.prediction)


def encode_episodes(
    tokenizer, data: SequenceData, cache_dir: str | Path | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Tokens (T_i, *token_shape) and per-token conditions for each episode (a partial last token is dropped).

    A tokenizer with ``cache_tokens = True`` (a VAE) has its tokens stored in ``cache_dir`` and read back by
    later runs on the same data with the same tokenizer state (:mod:`worldsim.data.token_cache`).
    """
    f = int(tokenizer.frames_per_token)
    kept = [i for i, obs in enumerate(data.observations) if obs.shape[0] >= f]
    if not kept:
        raise DataError(f"dataset: every episode is shorter than one token ({f} steps)")
    clips = [data.observations[i][: data.observations[i].shape[0] - data.observations[i].shape[0] % f] for i in kept]

    def encode() -> list[torch.Tensor]:
        with torch.no_grad():
            return [tokenizer.encode(torch.from_numpy(np.ascontiguousarray(obs))[None])[0] for obs in clips]

    episodes = cached_tokens(cache_dir, tokenizer, clips, encode)
    conds = None
    if data.actions is not None:
        conds = [stack_frames(torch.from_numpy(np.ascontiguousarray(data.actions[i])), f) for i in kept]
    return episodes, conds


def fit_tokenizer(tokenizer, data: SequenceData) -> None:
    """Fit the tokenizer's statistics (when it has any) on all steps of all episodes, (N, *obs_shape)."""
    if hasattr(tokenizer, "fit"):
        tokenizer.fit(torch.from_numpy(np.concatenate(data.observations)))


def pin_tokenizer_config(cfg: DictConfig, tokenizer) -> None:
    """Replace ``cfg.tokenizer`` by the tokenizer's ``build_kwargs`` when it has them.

    A tokenizer built from outside files (``video_vae`` loads a trained VAE) reports the arguments that
    rebuild an equal module without them; the run's saved config then stands on its own, and its
    checkpoint (which holds the tokenizer's weights) loads after the VAE's run folder is gone.
    """
    kwargs = getattr(tokenizer, "build_kwargs", None)
    if kwargs:
        cfg.tokenizer = OmegaConf.create({"name": str(cfg.tokenizer.name), **to_plain(OmegaConf.create(dict(kwargs)))})


@dataclass
class Prepared:
    """Everything a training run needs."""

    cfg: DictConfig
    model: DiffusionModel
    tokenizer: Any
    windows: TokenWindows
    data: SequenceData


def prepare_training(cfg: DictConfig, settings: DataSettings, registry) -> Prepared:
    """Data, tokenizer (fitted, its config pinned) and model of a run; ``settings``: its ``data`` section."""
    data = strided(load_dataset(to_plain(cfg.dataset), split="train", registry=registry), settings.stride)
    goal_dims = check_goal_dims(settings.goal_dims, data.obs_shape)
    tokenizer = build_tokenizer(cfg, registry, data.obs_shape)
    pin_tokenizer_config(cfg, tokenizer)
    fit_tokenizer(tokenizer, data)
    episodes, conds = encode_episodes(tokenizer, data, settings.token_cache)
    if goal_dims is None:
        windows = TokenWindows(episodes, settings.seq_len, conds)
    else:
        windows = GoalWindows(episodes, settings.seq_len, conds, tokenizer=tokenizer, goal_dims=goal_dims,
                              obs_dim=data.obs_shape[0])  # fmt: skip
    model = build_model(cfg, registry, tokenizer, data.action_dim)
    return Prepared(cfg, model, tokenizer, windows, data)


def checkpoint_extras(prepared: Prepared) -> dict[str, Any]:
    """What a checkpoint needs beyond weights to rebuild the run (plain data only: weights_only loads it)."""
    return {
        "kind": "world_model",
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
        return self.folder.root

    @property
    def folder(self) -> RunFolder:
        """Where reports go: the checkpoint's run, or ``runs/NAME`` for a shipped model."""
        return output_folder(self.checkpoint)


def load_run(path: str | Path, registry, weights: str = "ema") -> LoadedRun:
    """A run folder, a checkpoint file or a shipped model's short name (:mod:`worldsim.pretrained`)."""
    ckpt = resolve(path)
    payload = load_checkpoint(ckpt)
    if payload.get("kind") == "video_vae":
        raise CheckpointError(
            f"{ckpt}: is a VAE checkpoint (trainer.objective=vae), not a world model; use it as "
            f"tokenizer=video_vae tokenizer.checkpoint={ckpt}"
        )
    for key in WORLD_MODEL_KEYS:
        if key not in payload:
            raise CheckpointError(f"{ckpt}: not a worldsim training checkpoint (missing {key!r})")
    cfg = with_base_sections(from_plain(payload["config"]), registry)
    try:
        tokenizer = build_tokenizer(cfg, registry, tuple(payload["obs_shape"]))
        tokenizer.load_state_dict(payload["tokenizer"])
        model = build_model(cfg, registry, tokenizer, int(payload["action_dim"]))
        ema = payload.get("ema")
        state = ema if weights == "ema" and ema else payload["model"]
        model.load_state_dict(state)
    except WorldsimError:
        raise
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{ckpt}: does not match its config ({first})") from None
    model.eval()
    tokenizer.eval()
    return LoadedRun(
        cfg,
        model,
        tokenizer,
        tuple(payload["obs_shape"]),
        int(payload["action_dim"]),
        ckpt,
        int(payload.get("step", 0)),
    )
