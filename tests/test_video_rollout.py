"""Video world models end to end from the CLI: data, training, a long rollout with metrics, the video
files and the TensorBoard video, and one-line errors (exit 2) for bad frames, actions and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from worldsim.cli import main
from worldsim.video.data import read_video_file, write_video_file

TINY_MODEL = [
    "experiment=video_maze_pixels",
    "dataset.resolution=16",
    "dataset.episodes=6",
    "dataset.length=40",
    "dataset.eval_episodes=2",
    "data.seq_len=4",
    "backbone.hidden=16",
    "backbone.embed=16",
    "backbone.channels=8",
    "backbone.layers=1",
    "trainer.steps=3",
    "trainer.batch_size=4",
    "trainer.warmup_steps=1",
    "trainer.log_every=1",
    "trainer.ckpt_every=3",
]
ROLLOUT = ["--frames", "16", "--context", "2", "--episodes", "2", "sampling.steps=2"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    data = root / "maze16.h5"
    assert (
        main(
            [
                "data",
                "video",
                "--task",
                "maze-pixels",
                "--resolution",
                "16",
                "--episodes",
                "6",
                "--length",
                "40",
                "--out",
                str(data),
            ]
        )
        == 0
    )
    run = root / "run"
    assert main(["train", *TINY_MODEL, f"dataset.path={data}", f"run.dir={run}"]) == 0
    return run, data


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("worldsim: error: "), err
    return err[0]


def test_rollout_writes_metrics_videos_and_tensorboard(video_run, tmp_path, capsys):
    run, _ = video_run
    out = tmp_path / "roll"
    assert main(["rollout", str(run), *ROLLOUT, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "psnr dB" in printed and "found" in printed and "tracked" in printed and "4x" in printed
    )  # 16 frames = 4x a 4-frame window
    report = json.loads((out / "rollout.json").read_text())
    assert [r["horizon"] for r in report["horizons"]] == ["1x", "2x", "4x"]
    for row in report["horizons"]:
        assert {"psnr", "ssim", "position_error", "agent_found", "agent_tracked"} <= set(row)
    assert report["truth_agent_found"] == 1.0  # the detector finds the agent in every true frame
    assert report["position_unit"] == "cells" and set(report["baselines"]) == {"frozen", "random"}
    assert "baseline, the last context frame copied: tracked" in printed
    frozen = report["baselines"]["frozen"]["horizons"][0]
    assert frozen["frames"] == [1, 4] and 0.0 <= frozen["agent_tracked"] <= 1.0 and frozen["psnr"] > 0
    assert 0.0 < report["baselines"]["random"]["all_frames"]["ssim"] <= 1.0
    import imageio.v3 as iio

    mp4, gif = iio.imread(out / "rollout.mp4"), iio.imread(out / "rollout.gif")
    assert mp4.shape[0] == 2 + 16 and mp4.ndim == 4  # context + generated frames
    assert gif.ndim == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"images": 0}).Reload()
    assert "rollout/video" in acc.Tags()["images"]


def test_rollout_with_an_actions_file(video_run, tmp_path, capsys):
    run, _ = video_run
    actions = tmp_path / "a.npy"
    np.save(actions, np.zeros((2 + 16, 2), dtype=np.float32))
    assert main(["rollout", str(run), *ROLLOUT, "--actions", str(actions), "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r/rollout.json").read_text())
    assert "psnr" not in report["horizons"][0] and "agent_found" in report["horizons"][0]  # no truth for these actions
    assert (tmp_path / "r/rollout.mp4").is_file()


def test_actions_shorter_than_the_rollout_exit_2(video_run, tmp_path, capsys):
    run, _ = video_run
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((10, 2), dtype=np.float32))
    assert main(["rollout", str(run), *ROLLOUT, "--actions", str(short)]) == 2
    assert "needs 18 actions, got 10" in _error_line(capsys)


def test_frames_of_the_wrong_shape_exit_2(video_run, tmp_path, capsys):
    run, data = video_run
    other = tmp_path / "big.h5"
    v = read_video_file(data)
    write_video_file(
        other, np.repeat(np.repeat(v.frames, 2, axis=2), 2, axis=3), v.actions, task="maze-pixels", fps=v.fps
    )
    assert main(["rollout", str(run), *ROLLOUT, "--data", str(other)]) == 2
    line = _error_line(capsys)
    assert "frames of" in line and "32x32x3" in line and "16x16x3" in line


def test_rollout_on_a_users_file_of_the_right_shape(video_run, tmp_path, capsys):
    run, data = video_run
    v = read_video_file(data)
    mine = tmp_path / "mine.h5"
    write_video_file(mine, v.frames[:1], v.actions[:1], task="my-robot", fps=10)
    assert main(["rollout", str(run), *ROLLOUT, "--data", str(mine), "--out", str(tmp_path / "m")]) == 0
    report = json.loads((tmp_path / "m/rollout.json").read_text())
    assert report["episodes"] == 1 and "psnr" in report["horizons"][0] and "agent_found" not in report["horizons"][0]
    capsys.readouterr()
    longer = ["--frames", "50", "--context", "2", "--episodes", "1", "sampling.steps=1"]  # the file has 40 frames
    assert main(["rollout", str(run), *longer, "--data", str(mine), "--out", str(tmp_path / "m2")]) == 2
    assert "--data: the rollout needs episodes of 52 frames" in _error_line(capsys)
    # a generated file (its settings recorded) is continued from its episodes' own seeds instead
    assert main(["rollout", str(run), *longer, "--data", str(data), "--out", str(tmp_path / "m3")]) == 0
    assert json.loads((tmp_path / "m3/rollout.json").read_text())["generated_frames"] == 50


def test_vector_runs_refuse_video_options(tmp_path, capsys):
    run = tmp_path / "toy"
    assert (
        main(
            [
                "train",
                "experiment=toy",
                "trainer.steps=2",
                "trainer.batch_size=4",
                "trainer.warmup_steps=1",
                "backbone.hidden=8",
                "backbone.embed=8",
                "backbone.layers=1",
                "dataset.num_episodes=8",
                "data.seq_len=4",
                f"run.dir={run}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["rollout", str(run), "--actions", "x.npy"]) == 2
    assert "only video world models" in _error_line(capsys)


@pytest.fixture(scope="module")
def vae_run(video_run, tmp_path_factory):
    _, data = video_run
    run = tmp_path_factory.mktemp("vae") / "vae"
    assert (
        main(
            [
                "train",
                "experiment=vae_maze_pixels32",
                f"dataset.path={data}",
                "dataset.resolution=16",
                "dataset.episodes=6",
                "dataset.length=40",
                "dataset.eval_episodes=2",
                "vae.channels=[4,8]",
                "trainer.steps=2",
                "trainer.batch_size=4",
                "trainer.warmup_steps=1",
                "trainer.log_every=1",
                f"run.dir={run}",
            ]
        )
        == 0
    )
    return run


def test_latent_world_model_trains_and_rolls_out(video_run, vae_run, tmp_path, capsys):
    _, data = video_run
    run = tmp_path / "latent"
    tiny = [o for o in TINY_MODEL if not o.startswith("experiment=")]
    assert (
        main(
            [
                "train",
                "experiment=video_maze_latent32",
                *tiny,
                f"dataset.path={data}",
                f"tokenizer.checkpoint={vae_run}",
                f"data.token_cache={tmp_path / 'cache'}",
                f"run.dir={run}",
            ]
        )
        == 0
    )
    assert list((tmp_path / "cache").glob("tokens-*.pt"))  # the latents were cached
    config = (run / "config.yaml").read_text()
    assert "checkpoint: null" in config and "latent_channels: 4" in config  # the tokenizer stands on its own
    assert main(["rollout", str(run), *ROLLOUT, "--out", str(tmp_path / "r")]) == 0
    report = json.loads((tmp_path / "r/rollout.json").read_text())
    assert report["horizons"][0]["psnr"] > 0 and (tmp_path / "r/rollout.gif").is_file()


def test_checkpoints_of_the_wrong_kind_exit_2(video_run, vae_run, tmp_path, capsys):
    run, data = video_run
    tiny = [o for o in TINY_MODEL if not o.startswith("experiment=")]
    assert (
        main(
            [
                "train",
                "experiment=video_maze_latent",
                *tiny,
                f"dataset.path={data}",
                f"tokenizer.checkpoint={run}",
                f"run.dir={tmp_path / 'x'}",
            ]
        )
        == 2
    )
    assert "not a video_vae one" in _error_line(capsys)
    assert main(["rollout", str(vae_run)]) == 2
    assert "is a VAE checkpoint" in _error_line(capsys)


def test_a_missing_or_wrong_vae_checkpoint_fails_before_any_data_is_made(video_run, tmp_path, capsys):
    world_model, _ = video_run
    data = tmp_path / "never-made.h5"
    tiny = [o for o in TINY_MODEL if not o.startswith("experiment=")]
    for checkpoint, expected in ((tmp_path / "no-vae", "file not found"), (world_model, "not a video_vae one")):
        assert (
            main(
                [
                    "train",
                    "experiment=video_maze_latent32",
                    *tiny,
                    f"dataset.path={data}",
                    f"tokenizer.checkpoint={checkpoint}",
                    f"run.dir={tmp_path / 'x'}",
                ]
            )
            == 2
        )
        line = _error_line(capsys)
        assert line.startswith("worldsim: error: tokenizer.checkpoint:") and expected in line
    assert not data.exists()  # checked before the data set is generated


def test_horizons_in_a_unit_of_frames_and_an_all_frames_row(video_run, tmp_path):
    run, _ = video_run
    out = tmp_path / "unit"
    assert main(["rollout", str(run), *ROLLOUT, "--out", str(out), "rollout.horizon_unit=2"]) == 0
    report = json.loads((out / "rollout.json").read_text())
    assert [r["frames"] for r in report["horizons"]] == [[1, 2], [3, 4], [7, 8], [15, 16]]
    assert report["horizon_unit_frames"] == 2 and report["all_frames"]["frames"] == [1, 16]
    assert 0.0 <= report["all_frames"]["agent_found"] <= 1.0


def test_position_baselines_freeze_the_last_context_position_and_draw_from_the_data():
    from worldsim.video.tasks import position_baselines

    context = np.array([[[1.0, 1.0], [1.0, 2.0]]])
    truth = np.array([[[1.0, 2.0], [2.0, 3.0], [3.0, 3.0]]])
    guesses = position_baselines(context, truth, seed=0)
    assert guesses["frozen"].tolist() == [[[1.0, 2.0]] * 3]
    pool = {tuple(p) for p in np.concatenate([context[0], truth[0]]).tolist()}
    assert {tuple(p) for p in guesses["random"][0].tolist()} <= pool
    assert np.array_equal(guesses["random"], position_baselines(context, truth, seed=0)["random"])


def test_frame_baselines_copy_the_last_frame_and_draw_the_random_positions_frames():
    from worldsim.video.tasks import no_dynamics_baselines, position_baselines

    rng = np.random.default_rng(0)
    context_pos, true_pos = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 5, 2))
    # frames that show their position: the random frame must be the one whose position is the random position
    to_frames = lambda pos: np.broadcast_to(pos[..., None, None, :1], (*pos.shape[:2], 4, 4, 1))  # noqa: E731
    frames = no_dynamics_baselines(to_frames(context_pos), to_frames(true_pos), seed=3)
    positions = position_baselines(context_pos, true_pos, seed=3)
    assert np.array_equal(frames["frozen"], to_frames(positions["frozen"]))
    assert np.array_equal(frames["random"], to_frames(positions["random"]))


def test_keyframe_rollouts_of_a_non_causal_model_and_the_refusal_for_a_causal_one(video_run, tmp_path, capsys):
    run, data = video_run
    dit = tmp_path / "dit"
    # the tiny video model of TINY_MODEL with a bidirectional dit instead of the convgru (the experiment sets
    # convgru arguments, so the pieces are named here)
    overrides = ["dataset=video", "tokenizer=pixels", "backbone=dit", "backbone.causal=false", "backbone.width=16",
                 "backbone.depth=1", "backbone.heads=2", "backbone.patch=4", "diffusion.prediction=v",
                 "diffusion.cond_dropout=0.1"]  # fmt: skip
    overrides += [o for o in TINY_MODEL if o.startswith(("dataset.", "data.", "trainer."))]
    assert main(["train", *overrides, f"dataset.path={data}", f"run.dir={dit}"]) == 0
    out = tmp_path / "kf"
    keyframes = ["sampling.schedule=keyframes", "sampling.keyframe_stride=2", "sampling.chunk_size=2"]
    assert main(["rollout", str(dit), *ROLLOUT, "--out", str(out), *keyframes]) == 0
    report = json.loads((out / "rollout.json").read_text())
    assert report["sampling"]["schedule"] == "keyframes" and report["generated_frames"] == 16
    assert report["all_frames"]["frames"] == [1, 16]
    capsys.readouterr()
    assert main(["rollout", str(run), *ROLLOUT, "--out", str(tmp_path / "no"), *keyframes]) == 2
    assert "keyframes needs a backbone that is not causal" in _error_line(capsys)
