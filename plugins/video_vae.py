"""Tokenizer ``video_vae``: frames -> latents of a trained convolutional VAE (``worldsim.video.vae``).

obs (B, L, H, W, 3) in [0, 255] (uint8 or float) -> the VAE posterior MEAN (deterministic), normalized per
latent channel: tokens (B, L / tf, C, H / s, W / s) (``tf = temporal_factor`` frames per token, ``s`` the
spatial factor). Normalizing the latents to zero mean and unit variance is LDM's latent scaling
(Rombach et al. 2022) done per channel; ``fit(obs)`` measures the statistics. ``decode`` inverts it and
returns frames on [0, 255], clamped. The VAE is frozen (no gradients to its weights, always in eval mode);
gradients still flow through ``decode`` to the latents (guidance).

Train the VAE first (``worldsim train experiment=vae_maze_pixels``) and point ``tokenizer.checkpoint`` at
its run folder: its EMA weights and architecture are loaded. The module's ``build_kwargs`` (architecture
+ ``checkpoint: None``) rebuild an equal, untrained module: with the world model's checkpoint, which holds
this tokenizer's state dict, a run loads without the VAE's files. Uses only worldsim's public API.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

import worldsim
from worldsim.checkpoint import load_checkpoint
from worldsim.errors import CheckpointError, ConfigError, DataError
from worldsim.runs import resolve_checkpoint
from worldsim.video import ARCH_DEFAULTS, VideoVAE, check_arch, check_frame_size

FIT_FRAMES = 4096  # fit() uses a random subset of at most this many frames
BATCH_FRAMES = 256  # frames per encoder / decoder call
HALF_RANGE = 127.5


class VideoVAETokenizer(nn.Module):
    """A frozen :class:`worldsim.video.vae.VideoVAE` plus per-channel latent statistics (buffers ``latent_mean``, ``latent_std``)."""

    cache_tokens = True  # encoding is costly: worldsim keeps the training latents on disk (data.token_cache)

    # buffers (registered in __init__)
    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    def __init__(self, frame_shape: tuple[int, int, int], vae: VideoVAE):
        super().__init__()
        self.frame_shape = tuple(frame_shape)
        self.vae = vae
        h, w, _ = self.frame_shape
        s = vae.spatial_factor
        self.frames_per_token = vae.temporal_factor
        self.token_shape = (vae.latent_channels, h // s, w // s)
        self.register_buffer("latent_mean", torch.zeros(vae.latent_channels))
        self.register_buffer("latent_std", torch.ones(vae.latent_channels))
        self.build_kwargs = {**vae.arch, "checkpoint": None}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VideoVAETokenizer:
        return super().train(False)  # frozen: always in eval mode

    def _run(self, fn, x: torch.Tensor, frames: int) -> torch.Tensor:
        """``fn`` on (B, T, ...) (``frames`` frames per sample) in calls of about BATCH_FRAMES frames: frame by
        frame without temporal compression, else whole sequences (a causal VAE reads a sequence from its start)."""
        b = x.shape[0]
        if self.frames_per_token == 1:
            x, frames = rearrange(x, "b t ... -> (b t) 1 ..."), 1
        parts = x.split(max(1, BATCH_FRAMES // frames))
        out = torch.cat([fn(part) for part in parts])
        return rearrange(out, "(b t) 1 ... -> b t ...", b=b) if self.frames_per_token == 1 else out

    def _latents(self, obs: torch.Tensor) -> torch.Tensor:
        """Un-normalized posterior means (B, L / tf, C, h, w) of frames (B, L, H, W, 3)."""
        if obs.dim() != 5 or tuple(obs.shape[2:]) != self.frame_shape:
            raise DataError(
                f"tokenizer 'video_vae': expected frames (B, L, {', '.join(map(str, self.frame_shape))}), "
                f"got shape {tuple(obs.shape)}"
            )
        if obs.shape[1] % self.frames_per_token:
            raise DataError(
                f"tokenizer 'video_vae': {obs.shape[1]} frames are not divisible by "
                f"frames_per_token={self.frames_per_token}"
            )
        dtype = self.latent_mean.dtype  # float32, unless the module was converted (e.g. .double())

        def pixels(o: torch.Tensor) -> torch.Tensor:
            return rearrange(o.to(dtype) / HALF_RANGE - 1.0, "b l h w c -> b l c h w")

        return self._run(lambda o: self.vae.encode(pixels(o))[0], obs.to(self.latent_mean.device), obs.shape[1])

    def _per_channel(self, v: torch.Tensor) -> torch.Tensor:
        return v.view(-1, 1, 1)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, L, H, W, 3) frames in [0, 255] -> normalized latents (B, L / tf, C, h, w)."""
        return (self._latents(obs) - self._per_channel(self.latent_mean)) / self._per_channel(self.latent_std)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, h, w) latents -> (B, T * tf, H, W, 3) frames on [0, 255] (clamped)."""
        if x.dim() != 5 or tuple(x.shape[2:]) != self.token_shape:
            raise DataError(
                f"tokenizer 'video_vae': expected latents (B, T, {', '.join(map(str, self.token_shape))}), "
                f"got shape {tuple(x.shape)}"
            )
        z = x.to(self.latent_mean) * self._per_channel(self.latent_std) + self._per_channel(self.latent_mean)
        frames = self._run(self.vae.decode, z, z.shape[1] * self.frames_per_token)
        return rearrange((frames + 1.0) * HALF_RANGE, "b l c h w -> b l h w c").clamp(0.0, 255.0)

    @torch.no_grad()
    def fit(self, obs: torch.Tensor) -> VideoVAETokenizer:
        """Per-channel mean and std of the latents of (a random subset of at most 4096 of) frames ``obs`` (N, H, W, 3).

        With temporal compression the subset is clips of ``frames_per_token`` consecutive frames (a clip may
        straddle two episodes when ``obs`` concatenates them; harmless for statistics).
        """
        obs = torch.as_tensor(obs)
        obs = obs.reshape(-1, *obs.shape[-3:])
        f = self.frames_per_token
        clips = obs.shape[0] // f
        if clips == 0:
            raise DataError(f"tokenizer 'video_vae': fit() needs at least {f} frames, got {obs.shape[0]}")
        pick = (
            torch.randperm(clips, generator=torch.Generator().manual_seed(0))[: max(1, FIT_FRAMES // f)].sort().values
        )
        idx = (pick[:, None] * f + torch.arange(f)).reshape(-1)
        z = self._latents(obs[idx].reshape(len(pick), f, *obs.shape[1:]))  # (n, 1, C, h, w)
        z = rearrange(z, "n t c h w -> c (n t h w)").double()
        self.latent_mean.copy_(z.mean(1))
        self.latent_std.copy_(z.std(1).clamp_min(1e-4))
        return self


def _vae_payload(checkpoint: str) -> tuple:
    """(path, payload) of a VAE checkpoint (a run folder or a file), or a one-line CheckpointError."""
    try:
        path = resolve_checkpoint(checkpoint)
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"tokenizer.checkpoint: {exc}") from None
    kind = payload.get("kind", "world-model")
    if kind != "video_vae":
        raise CheckpointError(
            f"tokenizer.checkpoint: {path} is a {kind} checkpoint, not a video_vae one; "
            "train one with worldsim train experiment=vae_maze_pixels (vae_maze_pixels32 for 32x32 frames)"
        )
    return path, payload


def _load_vae(checkpoint: str, obs_shape: tuple[int, ...], arch: dict) -> VideoVAE:
    path, payload = _vae_payload(checkpoint)
    for key in ("vae", "frame_shape", "ema"):
        if key not in payload:
            raise CheckpointError(
                f"tokenizer.checkpoint: {path} is not a complete video_vae checkpoint (missing {key!r})"
            )
    if tuple(payload["frame_shape"]) != tuple(obs_shape):
        raise CheckpointError(
            f"tokenizer.checkpoint: {path} was trained on frames of shape {tuple(payload['frame_shape'])} "
            f"but the data has frames of shape {tuple(obs_shape)}"
        )
    trained = check_arch(payload["vae"], prefix=f"{path}: vae")
    for key, value in arch.items():
        if value is not None and check_arch({key: value}, prefix="tokenizer")[key] != trained[key]:
            raise ConfigError(
                f"tokenizer.{key}: {value!r} differs from {trained[key]!r} of the VAE in {path}; "
                "leave it null to use the checkpoint's"
            )
    vae = VideoVAE(**trained)
    try:
        vae.load_state_dict(payload["ema"])
    except (RuntimeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"tokenizer.checkpoint: {path} does not match its architecture ({first[:200]})") from None
    return vae


def build_video_vae(
    obs_shape: tuple,
    checkpoint: str | None = None,
    channels: list | None = None,
    latent_channels: int | None = None,
    spatial_factor: int | None = None,
    temporal_factor: int | None = None,
    blocks: int | None = None,
) -> VideoVAETokenizer:
    """checkpoint: a VAE run folder or checkpoint file (``worldsim train experiment=vae_maze_pixels``); its EMA
    weights and architecture are used. The architecture keys (null: the checkpoint's, else worldsim.video.vae's
    defaults) build an untrained VAE when there is no checkpoint."""
    obs_shape = tuple(int(s) for s in obs_shape)
    if len(obs_shape) != 3 or obs_shape[2] != 3:
        raise ConfigError(f"tokenizer 'video_vae' expects RGB frames (H, W, 3), got obs_shape {obs_shape}")
    arch = {
        "channels": channels,
        "latent_channels": latent_channels,
        "spatial_factor": spatial_factor,
        "temporal_factor": temporal_factor,
        "blocks": blocks,
    }
    assert set(arch) == set(ARCH_DEFAULTS)
    if checkpoint:
        vae = _load_vae(str(checkpoint), obs_shape, arch)
    else:
        vae = VideoVAE(**check_arch(arch, prefix="tokenizer"))
    check_frame_size(vae.arch, obs_shape[0], obs_shape[1], "tokenizer.spatial_factor")
    return VideoVAETokenizer(obs_shape, vae)


@worldsim.hookimpl
def worldsim_configure(config):
    """Check that ``tokenizer.checkpoint`` is a VAE checkpoint before any data is generated or loaded (minutes)."""
    tokenizer = config.get("tokenizer") if hasattr(config, "get") else None
    if tokenizer is not None and tokenizer.get("name") == "video_vae" and tokenizer.get("checkpoint"):
        _vae_payload(tokenizer.get("checkpoint"))


@worldsim.hookimpl
def worldsim_add_tokenizers():
    return {"video_vae": build_video_vae}
