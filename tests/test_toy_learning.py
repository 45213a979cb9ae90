"""End to end: a Diffusion Forcing model trained briefly from the CLI predicts the toy dynamics
better than holding the last observation, and its long rollout neither fades nor blows up."""

import json

import numpy as np
import pytest
import torch

from worldsim.cli import main
from worldsim.config import to_plain
from worldsim.data.sources import load_dataset
from worldsim.experiment import load_run
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry


@pytest.mark.slow
def test_trained_model_beats_holding_the_last_observation(tmp_path):
    torch.manual_seed(0)
    run_dir = tmp_path / "toy"
    assert (
        main(
            [
                "train",
                "experiment=toy",
                "trainer.steps=1500",
                "trainer.warmup_steps=20",
                "backbone.hidden=64",
                "backbone.embed=64",
                "backbone.layers=1",
                "dataset.num_episodes=500",
                f"run.dir={run_dir}",
            ]
        )
        == 0
    )
    out = tmp_path / "rollout"
    assert main(["rollout", str(run_dir), "--episodes", "16", "--out", str(out), "sampling.steps=10"]) == 0
    report = json.loads((out / "rollout.json").read_text())

    # the naive predictor: hold the last context observation for the first generated tokens
    run = load_run(run_dir, build_registry(get_plugin_manager()))
    f, ctx = report["frames_per_token"], report["context_tokens"]
    data = load_dataset(to_plain(run.cfg.dataset), split="eval", length=ctx * f + 2 * f, count=16)
    obs = np.stack(data.observations)
    future = obs[:, ctx * f :].reshape(16, 2, f, -1)
    hold = obs[:, ctx * f - 1][:, None, None, :]
    naive = np.sqrt(((future - hold) ** 2).mean(axis=(0, 2, 3)))

    model = np.array(report["rmse_per_token"][:2])
    assert (model < 0.6 * naive).all(), (model, naive)
    ratios = [r["rms_ratio"] for r in report["horizons"]]
    assert all(0.5 < r < 1.5 for r in ratios), ratios
