"""``worldsim train`` with ``trainer.objective=vae``: train the VAE of the ``video_vae`` tokenizer on frames.

The data set's frames go through the run's tokenizer (a frame tokenizer: (3, H, W) in [-1, 1]) in windows of
``data.seq_len`` frames (a multiple of ``vae.temporal_factor``); the VAE (``worldsim.video.vae``, built from the
``vae`` config section) is trained on them by :class:`worldsim.trainer.Trainer` with :class:`VAELoss`.
Checkpoints hold the usual trainer state plus ``kind: video_vae``, the architecture (``vae``) and the
``frame_shape``, which is what ``tokenizer=video_vae tokenizer.checkpoint=RUN`` loads. The summary ends with
the reconstruction PSNR of held-out frames (``split=eval``, up to 256 frames, EMA weights).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from worldsim.config import to_plain
from worldsim.data.sources import load_dataset
from worldsim.data.windows import Batch
from worldsim.errors import ConfigError, DataError
from worldsim.runs import RunFolder, write_text_atomic
from worldsim.settings import RunSettings
from worldsim.video.vae import VAELoss, VideoVAE, check_frame_size

EVAL_FRAMES = 256
CHECKPOINT_KIND = "video_vae"


class FrameWindows:
    """Windows of ``seq_len`` consecutive frames drawn uniformly over all episodes, kept as uint8 in memory
    and turned into tokens by ``tokenizer.encode`` one batch at a time (a float copy of a video data set
    would take 4x the memory). Episodes shorter than ``seq_len`` are skipped."""

    def __init__(self, episodes: list[np.ndarray], seq_len: int, tokenizer):
        self.episodes = [e for e in episodes if e.shape[0] >= seq_len]
        if not self.episodes:
            raise DataError(f"dataset: no episode has the {seq_len} frames of a training window (data.seq_len)")
        self.seq_len, self.tokenizer = seq_len, tokenizer
        starts = torch.tensor([e.shape[0] - seq_len + 1 for e in self.episodes])
        self._first = torch.cumsum(starts, 0) - starts  # flat index of each episode's first start
        self._total = int(starts.sum())

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        flat = torch.randint(self._total, (batch_size,), generator=generator)
        ep = torch.searchsorted(self._first, flat, right=True) - 1
        clips = np.stack(
            [
                self.episodes[e][s : s + self.seq_len]
                for e, s in zip(ep.tolist(), (flat - self._first[ep]).tolist(), strict=True)
            ]
        )
        with torch.no_grad():
            x = self.tokenizer.encode(torch.from_numpy(clips))
        return Batch(x, None, torch.ones(batch_size, self.seq_len, dtype=torch.bool))


def eval_clips(episodes: list[np.ndarray], seq_len: int, frames: int = EVAL_FRAMES) -> np.ndarray:
    """Up to ``frames`` frames as (N, seq_len, H, W, 3) clips, non-overlapping, spread evenly over the episodes."""
    windows = [(i, s) for i, e in enumerate(episodes) for s in range(0, e.shape[0] - seq_len + 1, seq_len)]
    if not windows:
        raise DataError(f"dataset: no held-out (split=eval) episode has the {seq_len} frames of one window")
    n = min(len(windows), math.ceil(frames / seq_len))
    pick = np.linspace(0, len(windows) - 1, n).round().astype(int)
    return np.stack([episodes[windows[j][0]][windows[j][1] : windows[j][1] + seq_len] for j in pick])


@torch.no_grad()
def reconstruction_psnr(vae: VideoVAE, tokenizer, clips: np.ndarray, device: torch.device, batch: int = 32) -> float:
    """PSNR in dB (peak 255) of frames decoded from the posterior mean, clamped to [0, 255], against ``clips``."""
    vae.eval()
    sq, count = 0.0, 0
    for part in np.array_split(clips, max(1, math.ceil(len(clips) / batch))):
        truth = torch.from_numpy(part)
        x = tokenizer.encode(truth).to(device)
        recon = tokenizer.decode(vae.decode(vae.encode(x)[0]).float().cpu()).clamp(0.0, 255.0)
        sq += float((recon - truth.float()).pow(2).sum())
        count += truth.numel()
    return 10.0 * math.log10(255.0**2 / max(sq / count, 1e-12))


def train_vae(
    cfg: DictConfig, settings: RunSettings, registry, run_dir: Path, write_config: bool = True
) -> dict[str, Any]:
    """Prepare data and the VAE from ``cfg`` and its typed ``settings`` (with ``settings.vae``, checked when the
    config was composed), train, return the trainer's summary plus ``eval_psnr``."""
    from worldsim.experiment import build_tokenizer
    from worldsim.trainer import Trainer

    if settings.vae is None:
        raise ConfigError(f"trainer.objective: got {settings.trainer.objective!r}; the VAE trains with objective=vae")
    plain = to_plain(cfg)
    arch, seq_len = dict(settings.vae.arch), settings.data.seq_len
    loss_fn = VAELoss(**settings.vae.loss)
    data = load_dataset(plain["dataset"], split="train", registry=registry)
    shape = tuple(data.obs_shape)
    if len(shape) != 3 or shape[2] != 3:
        raise ConfigError(
            f"dataset: trainer.objective=vae needs RGB frames (H, W, 3), got observations of shape {shape}"
        )
    check_frame_size(arch, shape[0], shape[1], "vae.spatial_factor")
    tokenizer = build_tokenizer(cfg, registry, shape)
    if int(tokenizer.frames_per_token) != 1 or tuple(tokenizer.token_shape) != (3, shape[0], shape[1]):
        raise ConfigError(
            f"tokenizer: trainer.objective=vae trains on frames, one (3, H, W) token per frame, got tokenizer "
            f"{cfg.tokenizer.name!r} with token_shape {tuple(tokenizer.token_shape)}; use a frame tokenizer, as the "
            f"experiments of trainer.objective=vae do"
        )
    windows = FrameWindows(data.observations, seq_len, tokenizer)
    if write_config:
        write_text_atomic(RunFolder(run_dir).config, OmegaConf.to_yaml(plain))
    trainer = Trainer(
        VideoVAE(**arch),
        windows,
        settings=settings.trainer,
        run_dir=run_dir,
        seed=int(cfg.run.seed),
        extra_state={"config": plain, "vae": arch, "frame_shape": list(shape), "kind": CHECKPOINT_KIND},
        loss_fn=loss_fn,
    )
    summary = trainer.fit()
    summary["run_dir"] = str(run_dir)
    if trainer.dist.is_main:
        ema = VideoVAE(**arch).to(trainer.device)
        ema.load_state_dict(trainer.ema.state_dict())
        held_out = load_dataset(plain["dataset"], split="eval", registry=registry)
        summary["eval_psnr"] = reconstruction_psnr(
            ema, tokenizer, eval_clips(held_out.observations, seq_len), trainer.device
        )
    return summary
