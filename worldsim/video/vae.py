"""A small convolutional VAE for frames and clips: the network of the ``video_vae`` tokenizer, and its loss.

Frames come in the ``pixels`` token layout, ``(B, L, 3, H, W)`` floats in [-1, 1]. The encoder maps them to
a diagonal Gaussian posterior over latents ``(B, L / temporal_factor, latent_channels, H / s, W / s)``
(``s = spatial_factor``), the decoder maps latents back to frames (Kingma & Welling 2014). As in Latent
Diffusion's KL-f8 autoencoder (Rombach et al. 2022) the KL weight is tiny (1e-6): a nearly deterministic
autoencoder whose latents stay at a sane scale.

Architecture: per resolution level a stride-2 conv (the first one reads the pixels) and ``blocks`` ResNet
blocks (GroupNorm + SiLU + conv, He et al. 2016), then a conv to the posterior's mean and log-variance; the
decoder mirrors it with nearest-neighbour upsampling + conv (the last one writes the pixels).
``channels[i]`` is the width after the (i+1)-th downsampling (the last entry repeats for deeper levels).
Nothing runs at full resolution, which keeps the network cheap on a CPU: 64x64 frames with the
experiment's channels [16, 32, 64] cost about 0.26 GFLOP per frame and training step.

Temporal compression (``temporal_factor`` 2 or 4): every conv becomes a causal 3-D conv (kernel 3 in
time, padded only on the past side by repeating the first frame, as the causal 3-D convs of MAGVIT-v2
and CV-VAE; cf. LVDM's 3-D autoencoder) and the first one or two downsamplings also halve time, so 4
frames -> 1 latent. GroupNorm normalizes each frame on its own. Hence latent t depends only on frames
<= 4t + 3, and decoded frame i only on latents <= i // 4. Without temporal compression the network is
2-D and frames are encoded independently.

Loss (:class:`VAELoss`): reconstruction (``recon``: ``l1``, ``mse`` or ``l1+mse`` (default) on [-1, 1]
pixels: L1 keeps edges sharp, MSE is what PSNR measures) + ``kl_weight`` * KL(q(z|x) || N(0, I)). The KL
is summed over latent elements and divided by the number of pixel values, so ``kl_weight`` means what it
means in LDM, whose losses are sums over pixels. Optional PatchGAN (Isola et al. 2017) with the hinge
loss, as in LDM/VQGAN, after ``adversarial_start`` steps (see :class:`VAELoss`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from worldsim.errors import ConfigError
from worldsim.nn import frozen

#: Architecture keys of :func:`build_vae` with their defaults (what a checkpoint stores as ``vae``).
ARCH_DEFAULTS: dict[str, Any] = {
    "channels": [32, 64, 128],
    "latent_channels": 4,
    "spatial_factor": 8,
    "temporal_factor": 1,
    "blocks": 1,
}
#: Loss keys of :class:`VAELoss` with their defaults.
LOSS_DEFAULTS: dict[str, Any] = {
    "kl_weight": 1e-6,
    "recon": "l1+mse",
    "adversarial": False,
    "adversarial_start": 1000,
    "adversarial_weight": 0.1,
    "disc_lr": 2e-4,
    "disc_channels": 32,
}
SPATIAL_FACTORS = (2, 4, 8, 16)
TEMPORAL_FACTORS = (1, 2, 4)
RECON_LOSSES = ("l1", "mse", "l1+mse")
LOGVAR_RANGE = (-30.0, 20.0)  # as LDM's DiagonalGaussianDistribution


# -- layers -----------------------------------------------------------------------------------------


class Conv(nn.Module):
    """A 2-D conv on ``(N, C, H, W)``, or with ``temporal`` a causal 3-D conv on ``(N, C, T, H, W)``:
    kernel 3 in time, the past side padded by repeating the first frame, optional stride 2 in time."""

    def __init__(
        self, cin: int, cout: int, kernel: int = 3, stride: int = 1, *, temporal: bool = False, t_stride: int = 1
    ):
        super().__init__()
        self.temporal = temporal
        pad = kernel // 2
        if temporal:
            self.t_pad = 3 - t_stride  # output j sees frames t_stride*j + t_stride-1 and the two before it
            self.conv: nn.Conv2d | nn.Conv3d = nn.Conv3d(
                cin, cout, (3, kernel, kernel), (t_stride, stride, stride), (0, pad, pad)
            )
        else:
            self.conv = nn.Conv2d(cin, cout, kernel, stride, pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            x = F.pad(x, (0, 0, 0, 0, self.t_pad, 0), mode="replicate")
        return self.conv(x)


class FrameNorm(nn.GroupNorm):
    """GroupNorm over each frame on its own (never mixes time steps: keeps the network causal)."""

    def __init__(self, channels: int):
        super().__init__(math.gcd(32, channels), channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            n = x.shape[0]
            return rearrange(super().forward(rearrange(x, "n c t h w -> (n t) c h w")), "(n t) c h w -> n c t h w", n=n)
        return super().forward(x)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv, twice, plus a (1x1-projected) skip."""

    def __init__(self, cin: int, cout: int, temporal: bool):
        super().__init__()
        self.norm1, self.conv1 = FrameNorm(cin), Conv(cin, cout, temporal=temporal)
        self.norm2, self.conv2 = FrameNorm(cout), Conv(cout, cout, temporal=temporal)
        self.skip = nn.Identity() if cin == cout else Conv(cin, cout, kernel=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 in space (and in time when ``t_scale`` is 2), then a conv."""

    def __init__(self, cin: int, cout: int, temporal: bool, t_scale: int):
        super().__init__()
        self.t_scale = t_scale
        self.conv = Conv(cin, cout, temporal=temporal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = (self.t_scale, 2.0, 2.0) if x.dim() == 5 else (2.0, 2.0)
        return self.conv(F.interpolate(x, scale_factor=scale, mode="nearest"))


# -- the VAE -----------------------------------------------------------------------------------------


class VideoVAE(nn.Module):
    """Encoder/decoder pair; frames ``(B, L, 3, H, W)`` in [-1, 1] <-> latents ``(B, L / tf, C, h, w)``."""

    def __init__(
        self, channels: list[int], latent_channels: int, spatial_factor: int, temporal_factor: int, blocks: int
    ):
        super().__init__()
        self.arch = {
            "channels": list(channels),
            "latent_channels": latent_channels,
            "spatial_factor": spatial_factor,
            "temporal_factor": temporal_factor,
            "blocks": blocks,
        }
        self.latent_channels, self.spatial_factor, self.temporal_factor = (
            latent_channels,
            spatial_factor,
            temporal_factor,
        )
        levels = int(math.log2(spatial_factor))
        t_downs = int(math.log2(temporal_factor))
        temporal = temporal_factor > 1
        ch = [channels[min(i, len(channels) - 1)] for i in range(levels)]  # width at 1/2, 1/4, ... resolution

        enc: list[nn.Module] = []
        for i in range(levels):  # the first stride-2 conv reads the frame: nothing runs at full resolution
            enc.append(
                Conv(ch[i - 1] if i else 3, ch[i], stride=2, temporal=temporal, t_stride=2 if i < t_downs else 1)
            )
            enc += [ResBlock(ch[i], ch[i], temporal) for _ in range(blocks)]
        enc += [FrameNorm(ch[-1]), nn.SiLU(), Conv(ch[-1], 2 * latent_channels, temporal=temporal)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [Conv(latent_channels, ch[-1], temporal=temporal)]
        for i in reversed(range(levels)):
            dec += [ResBlock(ch[i], ch[i], temporal) for _ in range(blocks)]
            if i == 0:  # the last upsampling conv writes the frame
                dec += [FrameNorm(ch[0]), nn.SiLU()]
            dec.append(Upsample(ch[i], ch[i - 1] if i else 3, temporal, 2 if i < t_downs else 1))
        self.decoder = nn.Sequential(*dec)

    # layout helpers: (B, L, C, H, W) <-> the network's (B*L, C, H, W) or (B, C, L, H, W)
    def _to_net(self, x: torch.Tensor) -> torch.Tensor:
        return (
            rearrange(x, "b l c h w -> b c l h w")
            if self.temporal_factor > 1
            else rearrange(x, "b l c h w -> (b l) c h w")
        )

    def _from_net(self, y: torch.Tensor, batch: int) -> torch.Tensor:
        if self.temporal_factor > 1:
            return rearrange(y, "b c l h w -> b l c h w")
        return rearrange(y, "(b l) c h w -> b l c h w", b=batch)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(B, L, 3, H, W)`` in [-1, 1] -> posterior mean and log-variance ``(B, L / tf, C, h, w)``."""
        moments = self._from_net(self.encoder(self._to_net(x)), x.shape[0])
        mean, logvar = moments.chunk(2, dim=2)
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, T, C, h, w)`` -> frames ``(B, T * tf, 3, H, W)`` (about [-1, 1], not clamped)."""
        return self._from_net(self.decoder(self._to_net(z)), z.shape[0])

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True):
        """Reconstruction of ``x`` through a posterior sample (or the mean); returns (recon, mean, logvar)."""
        mean, logvar = self.encode(x)
        z = mean
        if sample:
            where = generator.device if generator is not None else mean.device
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=where).to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mean, logvar


def _check_pos_int(field_name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{field_name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_arch(arch: Mapping[str, Any], prefix: str = "vae") -> dict[str, Any]:
    """Validated architecture dict (defaults filled in); bad values raise ConfigError naming ``prefix.key``."""
    unknown = sorted(set(arch) - set(ARCH_DEFAULTS))
    if unknown:
        raise ConfigError(f"{prefix}: unknown key {unknown[0]!r}; architecture keys are {', '.join(ARCH_DEFAULTS)}")
    out = {**ARCH_DEFAULTS, **{k: v for k, v in arch.items() if v is not None}}
    channels = out["channels"]
    if isinstance(channels, (str, bytes)) or not isinstance(channels, (list, tuple)) or not channels:
        raise ConfigError(
            f"{prefix}.channels: expected a non-empty list of widths like [32, 64, 128], got {channels!r}"
        )
    out["channels"] = [_check_pos_int(f"{prefix}.channels", c) for c in channels]
    out["latent_channels"] = _check_pos_int(f"{prefix}.latent_channels", out["latent_channels"])
    out["blocks"] = _check_pos_int(f"{prefix}.blocks", out["blocks"], minimum=0)
    if out["spatial_factor"] not in SPATIAL_FACTORS or isinstance(out["spatial_factor"], bool):
        raise ConfigError(
            f"{prefix}.spatial_factor: got {out['spatial_factor']!r}; expected one of {', '.join(map(str, SPATIAL_FACTORS))}"
        )
    if out["temporal_factor"] not in TEMPORAL_FACTORS or isinstance(out["temporal_factor"], bool):
        raise ConfigError(
            f"{prefix}.temporal_factor: got {out['temporal_factor']!r}; expected one of {', '.join(map(str, TEMPORAL_FACTORS))}"
        )
    if out["temporal_factor"] > out["spatial_factor"]:
        raise ConfigError(
            f"{prefix}.temporal_factor: {out['temporal_factor']} needs spatial_factor >= {out['temporal_factor']} "
            f"(time is halved at the spatial downsamplings), got {out['spatial_factor']}"
        )
    levels = int(math.log2(out["spatial_factor"]))
    if len(out["channels"]) > levels:
        raise ConfigError(
            f"{prefix}.channels: {len(out['channels'])} widths but spatial_factor {out['spatial_factor']} "
            f"has {levels} downsamplings; give at most {levels} (one width per downsampled level)"
        )
    out["spatial_factor"], out["temporal_factor"] = int(out["spatial_factor"]), int(out["temporal_factor"])
    return out


def build_vae(**arch: Any) -> VideoVAE:
    """A :class:`VideoVAE` from architecture keys (see ``ARCH_DEFAULTS``; missing or None = default)."""
    return VideoVAE(**check_arch(arch))


def check_frame_size(arch: Mapping[str, Any], height: int, width: int, field_name: str) -> None:
    """Frames must be divisible by the spatial factor; else a ConfigError naming ``field_name``."""
    f = int(arch["spatial_factor"])
    if height % f or width % f:
        raise ConfigError(f"{field_name}: frames of {height}x{width} are not divisible by spatial_factor {f}")


# -- the loss ----------------------------------------------------------------------------------------


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over all but the first dimension: (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): strided convs giving one real/fake logit per image patch; frames (N, 3, H, W)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1),
            nn.GroupNorm(math.gcd(32, 2 * c), 2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 3, 1, 1),
            nn.GroupNorm(math.gcd(32, 4 * c), 4 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(4 * c, 1, 3, 1, 1),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames)


@dataclass
class VAEOutput:
    loss: torch.Tensor  # scalar to minimize
    logs: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars: recon, kl, psnr (+ adversarial)
    recon: torch.Tensor | None = None  # (B, L, 3, H, W)


class VAELoss:
    """``loss_fn(vae, batch, generator) -> VAEOutput`` for :class:`worldsim.trainer.Trainer`.

    ``batch.x`` holds frames ``(B, L, 3, H, W)`` in [-1, 1] and ``batch.mask`` (B, L) the real frames.

    Adversarial training (``adversarial=True``): this object owns a :class:`PatchDiscriminator` and its own
    Adam optimizer (``disc_lr``, betas (0.5, 0.9)). Every call from ``adversarial_start`` on first updates the
    discriminator on the real frames and the detached reconstructions (hinge loss), then adds
    ``adversarial_weight * -D(recon)`` to the VAE's loss; the trainer's optimizer never sees the
    discriminator. Its weights, optimizer state and the call count are in :meth:`state_dict`, which the
    trainer stores in checkpoints (``loss_state``) so a resumed run continues where it stopped.
    """

    def __init__(self, **kwargs: Any):
        unknown = sorted(set(kwargs) - set(LOSS_DEFAULTS))
        if unknown:
            raise ConfigError(f"vae: unknown key {unknown[0]!r}; loss keys are {', '.join(LOSS_DEFAULTS)}")
        cfg = {**LOSS_DEFAULTS, **kwargs}
        for key in ("kl_weight", "adversarial_weight", "disc_lr"):
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"vae.{key}: expected a non-negative number, got {v!r}")
        if cfg["recon"] not in RECON_LOSSES:
            raise ConfigError(f"vae.recon: got {cfg['recon']!r}; expected one of {', '.join(RECON_LOSSES)}")
        if not isinstance(cfg["adversarial"], bool):
            raise ConfigError(f"vae.adversarial: expected true or false, got {cfg['adversarial']!r}")
        _check_pos_int("vae.adversarial_start", cfg["adversarial_start"], minimum=0)
        _check_pos_int("vae.disc_channels", cfg["disc_channels"])
        self.cfg = cfg
        self.calls = 0
        self.discriminator: nn.Module | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if cfg["adversarial"]:
            self.discriminator = PatchDiscriminator(cfg["disc_channels"])
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=cfg["disc_lr"], betas=(0.5, 0.9))

    def __call__(self, vae: nn.Module, batch: Any, generator: torch.Generator | None = None) -> VAEOutput:
        x = batch.x
        mask = batch.mask.to(x.dtype)
        recon, mean, logvar = vae(x, generator)
        per_frame = []
        if "l1" in self.cfg["recon"]:
            per_frame.append((recon - x).abs().flatten(2).mean(2))
        if "mse" in self.cfg["recon"]:
            per_frame.append((recon - x).pow(2).flatten(2).mean(2))
        frames = mask.sum().clamp_min(1.0)
        rec = sum(p * mask for p in per_frame).sum() / frames
        # KL summed over latent elements per pixel value (LDM's scale); the latents of padded frames still count
        kl = kl_divergence(mean, logvar).sum() / (x[0].numel() * x.shape[0])
        loss = rec + self.cfg["kl_weight"] * kl
        with torch.no_grad():
            mse = ((recon.float() - x.float()).pow(2).flatten(2).mean(2) * mask).sum() / frames
            # PSNR with the peak-to-peak range 2 of values in [-1, 1]
            logs = {"recon": rec.detach(), "kl": kl.detach(), "psnr": 10.0 * torch.log10(4.0 / mse.clamp_min(1e-12))}
        if self.discriminator is not None and self.calls >= self.cfg["adversarial_start"]:
            loss = loss + self._adversarial(x, recon, batch.mask, logs)
        self.calls += 1
        return VAEOutput(loss, logs, recon.detach())

    def _adversarial(self, x: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor, logs: dict) -> torch.Tensor:
        assert self.discriminator is not None and self.disc_optimizer is not None, "called only with a discriminator"
        disc = self.discriminator.to(x.device)
        real, fake = x[mask], recon[mask]  # (N, 3, H, W) real frames only
        d_loss = F.relu(1.0 - disc(real)).mean() + F.relu(1.0 + disc(fake.detach())).mean()  # hinge
        self.disc_optimizer.zero_grad(set_to_none=True)
        d_loss.backward()
        self.disc_optimizer.step()
        with frozen(disc):  # the generator step below must not accumulate into D
            g_loss = -disc(fake).mean()
        logs["disc_loss"], logs["gen_loss"] = d_loss.detach(), g_loss.detach()
        return self.cfg["adversarial_weight"] * g_loss

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"calls": self.calls}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
            assert self.disc_optimizer is not None, "created together with the discriminator"
            state["optimizer"] = self.disc_optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.calls = int(state["calls"])
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            assert self.disc_optimizer is not None, "created together with the discriminator"
            self.disc_optimizer.load_state_dict(state["optimizer"])


def split_vae_config(node: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``vae`` config section -> (validated architecture dict, loss kwargs)."""
    node = dict(node)
    unknown = sorted(set(node) - set(ARCH_DEFAULTS) - set(LOSS_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"vae: unknown key {unknown[0]!r}; expected keys {', '.join([*ARCH_DEFAULTS, *LOSS_DEFAULTS])}"
        )
    arch = check_arch({k: v for k, v in node.items() if k in ARCH_DEFAULTS})
    return arch, {k: v for k, v in node.items() if k in LOSS_DEFAULTS}
