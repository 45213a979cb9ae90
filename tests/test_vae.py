"""The video VAE (worldsim.video.vae), its training through the Trainer, and the video_vae tokenizer."""

import numpy as np
import pytest
import torch
from helpers import base_config_section

from worldsim.checkpoint import save_checkpoint
from worldsim.cli import main
from worldsim.errors import CheckpointError, ConfigError, DataError
from worldsim.settings import TrainerSettings
from worldsim.testing import check_tokenizer
from worldsim.trainer import Trainer
from worldsim.video.training import FrameWindows, eval_clips, reconstruction_psnr
from worldsim.video.vae import VAELoss, build_vae, split_vae_config
from worldsim_plugins.pixels import build_pixels
from worldsim_plugins.video_vae import build_video_vae

TINY = {"channels": [8, 16], "latent_channels": 2}
SHAPE = (16, 16, 3)


def squares(episodes=4, length=8, size=16, seed=0) -> list[np.ndarray]:
    """Coloured squares moving over a grey background: uint8 (L, H, W, 3) per episode."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        ep = np.full((length, size, size, 3), 60, np.uint8)
        colour, (r, c), (dr, dc) = rng.integers(100, 255, 3), rng.integers(0, size - 5, 2), rng.choice([-1, 1], 2)
        for t in range(length):
            ep[t, r : r + 5, c : c + 5] = colour
            r, c = (r + dr) % (size - 5), (c + dc) % (size - 5)
        out.append(ep)
    return out


def trainer_cfg(**over):
    return {
        **base_config_section("trainer"),
        "steps": 6,
        "batch_size": 4,
        "lr": 3e-3,
        "warmup_steps": 0,
        "ema_decay": 0.5,
        "device": "cpu",
        "log_every": 2,
        "ckpt_every": 3,
        "objective": "vae",
        **over,
    }


def vae_trainer(run_dir, arch=TINY, seq_len=1, loss=None, **over):
    torch.manual_seed(0)
    windows = FrameWindows(squares(length=8), seq_len, build_pixels(SHAPE))
    extra = {"vae": {**build_vae(**arch).arch}, "frame_shape": list(SHAPE), "kind": "video_vae"}
    return Trainer(
        build_vae(**arch),
        windows,
        settings=TrainerSettings.from_config(trainer_cfg(**over)),
        run_dir=run_dir,
        seed=0,
        extra_state=extra,
        loss_fn=loss or VAELoss(),
    )


@pytest.mark.parametrize("spatial,temporal", [(8, 1), (4, 1), (4, 4), (8, 4)])
def test_shapes(spatial, temporal):
    vae = build_vae(**TINY, spatial_factor=spatial, temporal_factor=temporal)
    x = torch.rand(2, 8, 3, 16, 16) * 2 - 1
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 8 // temporal, 2, 16 // spatial, 16 // spatial)
    assert vae.decode(mean).shape == x.shape
    recon, _, _ = vae(x, torch.Generator().manual_seed(0))
    assert recon.shape == x.shape


def test_temporal_causality():
    """Latent t depends only on frames <= 4t + 3; decoded frame i only on latents <= i // 4."""
    torch.manual_seed(0)
    vae = build_vae(**TINY, spatial_factor=4, temporal_factor=4).double().eval()
    x = torch.rand(1, 12, 3, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x)[0]
        frames = vae.decode(z)
        for t in range(2):
            x2 = x.clone()
            x2[:, 4 * t + 4 :] = torch.rand_like(x2[:, 4 * t + 4 :])
            z2 = vae.encode(x2)[0]
            assert torch.allclose(z2[:, : t + 1], z[:, : t + 1], atol=1e-12), f"latent <= {t} saw a later frame"
            assert not torch.allclose(z2[:, t + 1], z[:, t + 1]), "the next latent ignores its frames"
            z3 = z.clone()
            z3[:, t + 1 :] += 1.0
            f3 = vae.decode(z3)
            assert torch.allclose(f3[:, : 4 * t + 4], frames[:, : 4 * t + 4], atol=1e-12), "decoder is not causal"
            assert not torch.allclose(f3[:, 4 * t + 4], frames[:, 4 * t + 4])


def test_bad_config():
    with pytest.raises(ConfigError, match=r"^vae\.spatial_factor: got 3"):
        build_vae(spatial_factor=3)
    with pytest.raises(ConfigError, match=r"^vae\.channels: 3 widths but spatial_factor 4"):
        build_vae(channels=[8, 8, 8], spatial_factor=4)
    with pytest.raises(ConfigError, match=r"^vae\.temporal_factor: 4 needs spatial_factor >= 4"):
        build_vae(spatial_factor=2, temporal_factor=4, channels=[8])
    with pytest.raises(ConfigError, match=r"^vae: unknown key 'colour'"):
        split_vae_config({"colour": 1})
    with pytest.raises(ConfigError, match=r"^vae\.recon: got 'l3'"):
        VAELoss(recon="l3")


def test_training_lowers_the_loss(tmp_path):
    trainer = vae_trainer(tmp_path, steps=40, lr=1e-2, log_every=40, ckpt_every=40)
    batch = trainer.data.sample(16, torch.Generator().manual_seed(123))
    loss = VAELoss()

    def value():
        with torch.no_grad():
            return float(loss(trainer.model, batch, torch.Generator().manual_seed(0)).loss)

    before = value()
    summary = trainer.fit()
    assert summary["steps"] == 40 and value() < 0.5 * before
    out = loss(trainer.model, batch, torch.Generator().manual_seed(0))
    assert set(out.logs) == {"recon", "kl", "psnr"} and out.loss.dim() == 0


def test_resume_is_exact_with_a_loss_fn(tmp_path):
    """2 + 2 steps resumed == 4 steps, also for the discriminator a loss_fn trains (saved as loss_state)."""
    adv = dict(adversarial=True, adversarial_start=1, disc_channels=4)
    a = vae_trainer(tmp_path / "a", loss=VAELoss(**adv), steps=4, ckpt_every=2)
    a.fit()
    b = vae_trainer(tmp_path / "b", loss=VAELoss(**adv), steps=2, ckpt_every=2)
    b.fit()
    b = vae_trainer(tmp_path / "b", loss=VAELoss(**adv), steps=4, ckpt_every=2)
    assert b.step == 2 and b.loss_fn.calls == 2
    b.fit()
    for name, p in a.model.state_dict().items():
        assert torch.equal(p, b.model.state_dict()[name]), name
    for name, p in a.loss_fn.discriminator.state_dict().items():
        assert torch.equal(p, b.loss_fn.discriminator.state_dict()[name]), name


def test_tokenizer_contract():
    frames = torch.from_numpy(np.concatenate(squares()))
    check_tokenizer(build_video_vae, SHAPE, roundtrip_atol=None, fit_data=frames, **TINY)
    # float64: the 3-D convs' float32 results differ by ~1e-5 between batch sizes (oneDNN kernels)
    check_tokenizer(
        lambda **kw: build_video_vae(**kw).double(),
        SHAPE,
        roundtrip_atol=None,
        fit_data=frames,
        tokens=2,
        spatial_factor=4,
        temporal_factor=4,
        **TINY,
    )


def test_tokenizer_from_a_vae_checkpoint(tmp_path):
    trainer = vae_trainer(tmp_path, steps=2)
    trainer.fit()
    tok = build_video_vae(SHAPE, checkpoint=str(tmp_path))
    assert tok.token_shape == (2, 2, 2) and tok.frames_per_token == 1
    assert not any(p.requires_grad for p in tok.parameters())
    tok.train()
    assert not tok.training
    ema = build_vae(**TINY)
    ema.load_state_dict(trainer.ema.state_dict())
    obs = torch.from_numpy(np.stack(squares(episodes=2, length=3)))
    with torch.no_grad():
        want = ema.encode(build_pixels(SHAPE).encode(obs))[0]
        assert torch.allclose(tok.encode(obs), want, atol=1e-6)  # EMA weights, unit statistics before fit
        back = tok.decode(tok.encode(obs))
    assert back.shape == obs.shape and float(back.min()) >= 0 and float(back.max()) <= 255
    assert reconstruction_psnr(ema, build_pixels(SHAPE), eval_clips(squares(), 1, frames=8), torch.device("cpu")) > 0

    # the world model keeps build_kwargs + the state dict: an equal tokenizer without the VAE's files
    tok.fit(torch.from_numpy(np.concatenate(squares())))
    assert tok.build_kwargs == {**TINY, "spatial_factor": 8, "temporal_factor": 1, "blocks": 1, "checkpoint": None}
    again = build_video_vae(SHAPE, **tok.build_kwargs)
    again.load_state_dict(tok.state_dict())
    assert torch.equal(again.encode(obs), tok.encode(obs))

    with pytest.raises(
        CheckpointError,
        match=r"trained on frames of shape \(16, 16, 3\) but the data has frames of shape \(32, 32, 3\)",
    ):
        build_video_vae((32, 32, 3), checkpoint=str(tmp_path))
    with pytest.raises(ConfigError, match=r"^tokenizer\.latent_channels: 3 differs from 2"):
        build_video_vae(SHAPE, checkpoint=str(tmp_path), latent_channels=3)
    with pytest.raises(DataError, match=r"expected frames \(B, L, 16, 16, 3\), got shape \(1, 2, 8, 8, 3\)"):
        tok.encode(torch.zeros(1, 2, 8, 8, 3))


def test_not_a_vae_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "wm.pt", {"step": 1, "model": {}, "ema": {}, "config": {}, "tokenizer": None})
    with pytest.raises(
        CheckpointError,
        match=r"^tokenizer\.checkpoint: .*wm\.pt is a world-model checkpoint, not a video_vae one; "
        r"train one with worldsim train experiment=vae_maze_pixels",
    ):
        build_video_vae(SHAPE, checkpoint=str(path))
    with pytest.raises(CheckpointError, match=r"^tokenizer\.checkpoint: .*no checkpoints/last\.pt"):
        build_video_vae(SHAPE, checkpoint=str(tmp_path))


def test_fit_normalizes_the_latents():
    tok = build_video_vae(SHAPE, **TINY)
    frames = torch.from_numpy(np.concatenate(squares(episodes=8)))
    tok.fit(frames)
    z = tok.encode(frames[None])
    per_channel = z.transpose(0, 2).reshape(2, -1)
    assert per_channel.mean(1).abs().max() < 1e-4 and (per_channel.std(1) - 1).abs().max() < 1e-3


def test_objective_is_checked(capsys):
    assert main(["train", "trainer.objective=gan"]) == 2
    err = capsys.readouterr().err  # a recipe's name (worldsim_add_recipes), checked when the config is composed
    assert "trainer.objective: unknown recipe 'gan'" in err and "registered: diffusion, vae" in err
