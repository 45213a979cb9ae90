"""A world model of Atari Pong end to end at a tiny size: ale-py's data through `worldsim data video --task atari`,
a few training steps, a rollout whose report finds the paddle and the ball; and the task's own checks. Skipped, with
one line, only where ale-py cannot be imported."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("ale_py", reason="ale-py is not installed (pip install ale-py)")

from worldsim.cli import main
from worldsim.testing import check_video_task
from worldsim.video.data import read_video_file
from worldsim.video.tasks import build_video_task


def test_the_atari_task_passes_the_conformance_kit_and_its_paddle_is_found_where_it_is(registry):
    task = build_video_task({"task": "atari"}, 64, registry)
    check_video_task(task, episodes=2, length=12)
    assert task.settings["env_id"] == "ALE/Pong-v5" and task.settings["sticky"] == 0.25
    made = task.generate(2, 40, seed=3, progress=False)
    found = task.find(made["frames"])
    assert found["found"].all()
    error = np.linalg.norm(found["centroid_px"] - made["positions"], axis=-1)
    assert error.max() < task.tracked_within
    assert task.extra_metrics(made["frames"])["ball_found"].mean() > 0.5


def test_the_scripted_player_moves_its_paddle_over_the_field(registry):
    """Random play would leave the paddle near one edge; the scripted one follows the ball across the field."""
    task = build_video_task({"task": "atari"}, 64, registry)
    rows = task.generate(4, 144, seed=0, progress=False)["positions"][..., 0]
    assert rows.max() - rows.min() > 40 and np.std(rows) > 8


def test_unknown_game_and_bad_settings_are_one_line_errors(tmp_path, capsys):
    assert main(["data", "video", "--task", "atari", "--game", "tetris", "--out", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--game" in err and "tetris" in err and "pong" in err


def test_pong_data_training_and_rollout_end_to_end(tmp_path, capsys):
    data, run = tmp_path / "pong32.h5", tmp_path / "run"
    args = ["data", "video", "--task", "atari", "--game", "pong", "--resolution", "32", "--episodes", "6",
            "--length", "40", "--out", str(data)]  # fmt: skip
    assert main(args) == 0
    video = read_video_file(data)
    assert video.task == "atari" and video.settings["env_id"] == "ALE/Pong-v5"
    assert video.frames.shape == (6, 40, 32, 32, 3) and video.actions.shape == (6, 40, 3)
    tiny = ["experiment=video_maze_pixels", "dataset.task=atari", "dataset.resolution=32", "dataset.episodes=6",
            "dataset.length=40", "dataset.eval_episodes=2", f"dataset.path={data}", "data.seq_len=4",
            "backbone.hidden=16", "backbone.embed=16", "backbone.channels=8", "trainer.steps=3", "trainer.batch_size=4",
            "trainer.warmup_steps=1", "trainer.ckpt_every=3", f"run.dir={run}"]  # fmt: skip
    assert main(["train", *tiny]) == 0
    out = tmp_path / "rollout"
    rollout = ["rollout", str(run), "--frames", "16", "--context", "2", "--episodes", "2", "--out", str(out),
               "sampling.steps=2"]  # fmt: skip
    assert main(rollout) == 0
    report = json.loads((out / "rollout.json").read_text())
    assert report["task"] == "atari" and report["position_unit"] == "pixels"
    first = report["horizons"][0]
    assert {"agent_found", "agent_tracked", "ball_found", "psnr", "ssim"} <= set(first)
    assert set(report["baselines"]) == {"frozen", "random"} and "psnr" in report["baselines"]["frozen"]["all_frames"]
    assert 0.0 < report["truth_extra"]["all_frames"]["ball_found"] <= 1.0  # the true frames' ball, to compare with
    assert (out / "rollout.mp4").exists()

    # and it plays: the task's own keys, no true world (ALE cannot be put where a context left it)
    from worldsim.experiment import load_run
    from worldsim.play import PlaySession, PlayWorld
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry = build_registry(get_plugin_manager())
    world = PlayWorld(load_run(run, registry), registry, context=2, episodes=1)
    assert set(world.keys) == {"none", "up", "down"} and not world.has_world
    frames = PlaySession(world).step("up")
    assert frames[0].model.shape == (32, 32, 3) and frames[0].world is None
