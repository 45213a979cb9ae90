"""The trainer: exact resume, checkpoints, divergence handling, logging, DDP on CPU."""

import math
import os
import shutil
import socket
import time

import pytest
import torch
from helpers import base_config_section
from torch import nn

from worldsim.checkpoint import load_checkpoint
from worldsim.data.windows import TokenWindows
from worldsim.diffusion.loss import LossSettings
from worldsim.diffusion.model import DiffusionModel
from worldsim.errors import CheckpointError, ConfigError, TrainingDiverged
from worldsim.settings import TrainerSettings
from worldsim.trainer import EMA, Trainer, lr_at

#: the base config's diffusion section (every loss key is required) with these tests' choices
DIFFUSION = {
    **base_config_section("diffusion"),
    "timesteps": 100,
    "mode": "diffusion_forcing",
    "weighting": "min_snr",
    "schedule": "linear",
    "prediction": "x0",
}


class TinyBackbone(nn.Module):
    """Per-token MLP of (x_t, k, cond): causal trivially. Dropout makes the run use the global RNG.
    ``nan_after``: forward calls after that many return NaN (a diverging model)."""

    causal = True
    max_tokens = None

    def __init__(self, dim=2, cond_dim=0, hidden=32, dropout=0.1, nan_after=None):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1 + cond_dim, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.nan_after, self.calls = nan_after, 0

    def forward(self, x, k, cond=None, cache=None):
        self.calls += 1
        parts = [x, k[..., None].to(x.dtype)] + ([] if cond is None else [cond])
        out = x + self.net(torch.cat(parts, -1))
        if self.nan_after is not None and self.calls > self.nan_after:
            out = out * float("nan")
        return out


def make_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return DiffusionModel(TinyBackbone(**kwargs), schedule="linear", prediction="x0")


def make_data(cond=False):
    g = torch.Generator().manual_seed(1)
    eps, conds = [], []
    for i in range(6):
        t = torch.arange(20 + 3 * i, dtype=torch.float32)[:, None] * 0.3
        phase = torch.rand(1, generator=g) * 6
        eps.append(torch.cat([torch.sin(t + phase), torch.cos(t + phase)], -1))
        conds.append(torch.randn(t.shape[0], 1, generator=g))
    return TokenWindows(eps, seq_len=8, conds=conds if cond else None)


def cfg(**over):
    """The base config's trainer section (configs/config.yaml: the one home of its defaults) with these values."""
    base = base_config_section("trainer")
    base.update(
        steps=6,
        batch_size=4,
        lr=3e-3,
        warmup_steps=2,
        grad_clip=1.0,
        ema_decay=0.9,
        weight_decay=0.01,
        betas=[0.9, 0.99],
        device="cpu",
        log_every=2,
        ckpt_every=3,
        lr_schedule="cosine",
    )
    base.update(over)
    return base


def train(run_dir, seed=0, model=None, extra_state=None, data=None, diffusion=None, **over):
    model = model if model is not None else make_model()
    trainer = Trainer(
        model,
        data or make_data(),
        settings=TrainerSettings.from_config(cfg(**over)),
        loss=LossSettings.from_config(diffusion or DIFFUSION),
        run_dir=run_dir,
        seed=seed,
        extra_state=extra_state,
    )
    return trainer, trainer.fit()


def assert_same_state(a: Trainer, b: Trainer):
    for (name, p), (_, q) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(p, q), f"weights differ at {name}"
    for name, p in a.ema.state_dict().items():
        assert torch.equal(p, b.ema.state_dict()[name]), f"EMA differs at {name}"
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for i in sa:
        for key in sa[i]:
            assert torch.equal(sa[i][key], sb[i][key]), f"optimizer state {key} of param {i} differs"


# -- resume -----------------------------------------------------------------------------------


def test_resume_from_mid_run_checkpoint_is_bitwise_identical(tmp_path):
    straight, _ = train(tmp_path / "a")
    assert (tmp_path / "a/checkpoints/step_00000003.pt").exists()
    # "Interrupted" run: only the step-3 checkpoint survives; a fresh, differently initialised model resumes it.
    (tmp_path / "b/checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "a/checkpoints/step_00000003.pt", tmp_path / "b/checkpoints/last.pt")
    resumed, summary = train(tmp_path / "b", model=make_model(seed=123))
    assert summary["resumed_from"].endswith("last.pt") and summary["steps"] == 6
    assert_same_state(straight, resumed)


def test_three_plus_three_steps_equal_six(tmp_path):
    straight, _ = train(tmp_path / "a", lr_schedule="constant", ckpt_every=10)
    first, s1 = train(tmp_path / "b", lr_schedule="constant", ckpt_every=10, steps=3)
    assert s1["steps"] == 3
    resumed, s2 = train(tmp_path / "b", model=make_model(seed=5), lr_schedule="constant", ckpt_every=10)
    assert s2["steps"] == 6
    assert_same_state(straight, resumed)
    # And without resume the same folder starts over from step 0.
    fresh, s3 = train(tmp_path / "b", lr_schedule="constant", ckpt_every=10, steps=2, resume=False)
    assert s3["resumed_from"] is None and fresh.step == 2


def test_resume_into_a_different_model_is_a_checkpoint_error(tmp_path):
    train(tmp_path, steps=1)
    with pytest.raises(CheckpointError, match="does not match"):
        train(tmp_path, model=make_model(hidden=16), steps=2)


# -- checkpoints ------------------------------------------------------------------------------


def test_checkpoint_payload(tmp_path):
    extra = {
        "config": {"run": {"name": "x"}, "trainer": {"steps": 6}},
        "tokenizer": {"mean": torch.ones(2)},
        "note": "hi",
    }
    trainer, summary = train(tmp_path, steps=7, extra_state=extra)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["last.pt", "step_00000003.pt", "step_00000006.pt"]  # no temp files
    assert summary["checkpoint"] == str(tmp_path / "checkpoints/last.pt")
    ckpt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)
    assert set(ckpt) == {"format", "step", "model", "ema", "optimizer", "rng", "config", "tokenizer", "note"}
    assert ckpt["format"] == "worldsim-checkpoint-v1" and ckpt["step"] == 7
    assert ckpt["config"] == extra["config"] and ckpt["note"] == "hi"
    assert torch.equal(ckpt["tokenizer"]["mean"], torch.ones(2))
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)
    for name, p in trainer.model.state_dict().items():
        assert torch.equal(ckpt["model"][name], p)
    # The EMA is a state_dict of the same model: loadable for sampling, and not the raw weights.
    ema_model = make_model(seed=9)
    ema_model.load_state_dict(ckpt["ema"])
    assert not torch.equal(ckpt["ema"]["backbone.net.0.weight"], ckpt["model"]["backbone.net.0.weight"])
    assert load_checkpoint(tmp_path / "checkpoints/step_00000003.pt")["step"] == 3


def test_default_config_in_checkpoint_and_extra_state_cannot_clobber(tmp_path):
    train(tmp_path, steps=1)
    ckpt = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert ckpt["config"]["trainer"]["steps"] == 1 and ckpt["config"]["diffusion"]["weighting"] == "min_snr"
    assert ckpt["tokenizer"] is None
    with pytest.raises(ValueError, match="model"):
        train(tmp_path / "b", extra_state={"model": {}})


# -- divergence -------------------------------------------------------------------------------


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    model = make_model(nan_after=4)  # forward call 5 = step 5 returns NaN
    last = tmp_path / "checkpoints/last.pt"
    with pytest.raises(TrainingDiverged) as err:
        train(tmp_path, model=model, steps=10, ckpt_every=2)
    assert str(err.value) == f"training diverged at step 5: loss is nan; last good checkpoint: {last}"
    ckpt = load_checkpoint(last)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step was not applied
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt", "step_00000002.pt", "step_00000004.pt"]


def test_nan_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"at step 1: loss is nan; last good checkpoint: none"):
        train(tmp_path, model=make_model(nan_after=0))


# -- schedule, EMA, logging, config ----------------------------------------------------------


def test_lr_schedule_against_formula():
    kw = dict(lr=1.0, warmup_steps=4, total_steps=14)
    assert [lr_at(s, schedule="constant", **kw) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    for s in range(4, 14):
        ref = 0.5 * (1 + math.cos(math.pi * (s - 4) / 10))
        assert lr_at(s, schedule="cosine", **kw) == pytest.approx(ref, abs=1e-12)
    assert lr_at(0, lr=2.0, warmup_steps=0, total_steps=10, schedule="cosine") == 2.0
    with pytest.raises(ConfigError, match="lr_schedule"):
        lr_at(5, schedule="linear", **kw)


def test_ema_matches_float64_recurrence():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    ema = EMA(lin, decay=0.95)
    ref = lin.weight.detach().clone()
    for n in range(1, 30):
        with torch.no_grad():
            lin.weight.add_(torch.randn_like(lin.weight))
        ema.update(lin)
        d = min(0.95, (1 + n) / (10 + n))
        ref = d * ref + (1 - d) * lin.weight.detach()
    torch.testing.assert_close(ema.state_dict()["weight"], ref, rtol=1e-12, atol=1e-12)


def test_training_reduces_loss_and_logs_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, summary = train(
        tmp_path,
        steps=100,
        log_every=10,
        ckpt_every=1000,
        lr=1e-2,
        warmup_steps=10,
        lr_schedule="constant",
        data=make_data(cond=True),
        model=make_model(cond_dim=1, dropout=0.0),
        diffusion={**DIFFUSION, "weighting": "none"},
    )
    assert summary["steps"] == 100 and summary["tokens_per_s"] > 0
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= tags
    assert {f"train/loss_by_level/{b / 5:.1f}-{(b + 1) / 5:.1f}" for b in range(5)} <= tags
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(10, 101, 10))
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0]
    assert [e.value for e in acc.Scalars("train/lr")][-1] == pytest.approx(1e-2)
    assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-2)  # step 10 is the last warmup step
    # Noisier tokens are harder: the loss grows with the noise level.
    level = {b: sum(e.value for e in acc.Scalars(f"train/loss_by_level/{b}")[-5:]) for b in ("0.0-0.2", "0.8-1.0")}
    assert level["0.8-1.0"] > level["0.0-0.2"]


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(stepz=3), "trainer: unknown key 'stepz'"),
        (dict(steps=0), "trainer.steps"),
        (dict(precision="fp16"), "trainer.precision"),
        (dict(precision="bf16"), "bf16 needs a CUDA device"),
        (dict(betas=[0.9]), "trainer.betas"),
        (dict(device="tpu"), "trainer.device"),
    ],
)
def test_bad_trainer_config(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(
            make_model(),
            make_data(),
            settings=TrainerSettings.from_config(cfg(**over)),
            loss=LossSettings.from_config(DIFFUSION),
            run_dir=tmp_path,
        )


# -- DDP --------------------------------------------------------------------------------------


def _ddp_worker(rank, world, port, run_dir, out_dir):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    model = make_model(
        seed=100 + rank, dropout=0.0
    )  # different init per rank: DDP must start every rank from rank 0's weights
    trainer = Trainer(
        model,
        make_data(),
        settings=TrainerSettings.from_config(cfg(steps=4, ckpt_every=2)),
        loss=LossSettings.from_config(DIFFUSION),
        run_dir=run_dir,
        seed=0,
    )
    summary = trainer.fit()
    torch.save(
        {"model": model.state_dict(), "ema": trainer.ema.state_dict(), "steps": summary["steps"]},
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_end_identical(tmp_path):
    import torch.multiprocessing as mp

    run_dir = tmp_path / "run"
    # spawn, not fork: this process has run other tests and holds threads (OpenMP, writers) that a forked
    # child can deadlock on. A bounded join turns a stuck rendezvous into a failure, not a stalled suite.
    ctx = mp.start_processes(
        _ddp_worker, args=(2, _free_port(), str(run_dir), str(tmp_path)), nprocs=2, start_method="spawn", join=False
    )
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the two gloo ranks did not finish within 240 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 4
    for name in r0["model"]:
        assert torch.equal(r0["model"][name], r1["model"][name]), f"ranks disagree on {name}"
        assert torch.equal(r0["ema"][name], r1["ema"][name]), f"ranks disagree on EMA {name}"
    init = make_model(seed=100).state_dict()
    assert not torch.equal(init["backbone.net.0.weight"], r0["model"]["backbone.net.0.weight"])  # it trained
    last = load_checkpoint(run_dir / "checkpoints/last.pt")  # rank 0 saved
    assert last["step"] == 4 and torch.equal(
        last["model"]["backbone.net.0.weight"], r0["model"]["backbone.net.0.weight"]
    )
    # Rank 1's batches mattered: one process with rank 0's data alone ends elsewhere.
    single = make_model(seed=100, dropout=0.0)
    Trainer(
        single,
        make_data(),
        settings=TrainerSettings.from_config(cfg(steps=4, ckpt_every=2)),
        loss=LossSettings.from_config(DIFFUSION),
        run_dir=tmp_path / "single",
        seed=0,
    ).fit()
    assert not torch.equal(single.state_dict()["backbone.net.0.weight"], r0["model"]["backbone.net.0.weight"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_compiled_training_and_resume(tmp_path):
    on_gpu = dict(steps=40, device="cuda", precision="auto", compile=True, lr_schedule="constant", ckpt_every=20,
                  log_every=10)  # fmt: skip
    model = make_model(dropout=0.0)
    trainer, summary = train(tmp_path, model=model, **on_gpu)
    assert trainer.autocast_dtype == torch.bfloat16 and math.isfinite(summary["final_loss"])
    ckpt = load_checkpoint(tmp_path / "checkpoints/last.pt")
    assert not any(k.startswith(("_orig_mod", "module")) or "._orig_mod" in k for k in ckpt["model"])
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())
    # Resume on the GPU continues bitwise like the uninterrupted run.
    (tmp_path / "b/checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "checkpoints/step_00000020.pt", tmp_path / "b/checkpoints/last.pt")
    resumed, _ = train(tmp_path / "b", model=make_model(seed=3, dropout=0.0), **on_gpu)
    assert_same_state(trainer, resumed)
