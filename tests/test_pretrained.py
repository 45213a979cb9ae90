"""Shipped models: the weights-only export, the short names `worldsim plan NAME` resolves, where their reports
go, and every shipped planner running a short batched episode."""

from __future__ import annotations

import json

import pytest
import torch

from worldsim import pretrained
from worldsim.cli import main
from worldsim.errors import CheckpointError


def test_export_keeps_weights_tokenizer_and_config_only(maze_run, tmp_path):
    out = pretrained.export(maze_run, tmp_path / "tiny.pt")
    payload = torch.load(out, map_location="cpu", weights_only=True)
    assert set(payload) == {"format", "kind", "config", "tokenizer", "obs_shape", "action_dim", "step", "model"}
    full = torch.load(maze_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    for key, value in full["ema"].items():  # the EMA weights, as load_run uses them
        assert torch.equal(payload["model"][key], value)
    assert out.stat().st_size < (maze_run / "checkpoints" / "last.pt").stat().st_size


def test_export_keeps_the_planning_settings_it_is_given(maze_run, tmp_path, capsys):
    out = tmp_path / "tuned.pt"
    assert main(["export", str(maze_run), "--out", str(out), "guidance=maze_goal", "planning.guidance_scale=0.7"]) == 0
    config = torch.load(out, map_location="cpu", weights_only=True)["config"]
    assert config["guidance"]["name"] == "maze_goal" and config["planning"]["guidance_scale"] == 0.7
    assert main(["export", str(maze_run), "--out", str(tmp_path / "bad.pt"), "trainer.steps=3"]) == 2
    assert "trainer.steps" in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()


def test_a_short_name_plans_and_reports_into_runs_of_the_working_directory(maze_run, tmp_path, monkeypatch, capsys):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    monkeypatch.setattr(pretrained, "folder", lambda: shelf)
    assert main(["export", str(maze_run), "--out", str(shelf / "tiny-umaze.pt")]) == 0
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["plugins"]) == 0 and "tiny-umaze" in capsys.readouterr().out
    code = main(["plan", "tiny-umaze", "--episodes", "2", "planning.batch=2", "sampling.steps=2",
                 "planning.open_loop=100", "planning.plots=1"])  # fmt: skip
    assert code == 0
    report = json.loads((work / "runs" / "tiny-umaze" / "plans" / "plan.json").read_text())
    assert report["episodes"] == 2 and not list(shelf.glob("plans"))  # nothing written next to the shipped file
    assert main(["plan", "tiny-umaz", "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "no shipped model of that name" in err and "tiny-umaze" in err and len(err.strip().splitlines()) == 1


def test_resolve_prefers_an_existing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="file not found"):
        pretrained.resolve("runs/none.pt")


def _shipped(video: bool) -> list:
    """The shipped models of one kind: video world models (frames as observations) or planners."""
    names = [n for n, path in sorted(pretrained.shipped().items())
             if (len(torch.load(path, map_location="cpu", weights_only=True)["obs_shape"]) == 3) == video]  # fmt: skip
    return names or [pytest.param("none", marks=pytest.mark.skip("nothing of this kind shipped"))]


@pytest.mark.parametrize("name", _shipped(video=False))
def test_every_shipped_planner_runs_a_short_batched_episode(name, tmp_path):
    """The shipped file loads with weights_only=True and plans two agents side by side for 20 steps in its task's
    env (a file saved before runs named their task gets the task of its data set)."""
    import gymnasium as gym

    from worldsim.experiment import load_run
    from worldsim.planning import Planner, build_objective, build_task, run_episodes
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry
    from worldsim.settings import PlanSettings

    assert pretrained.shipped()[name].stat().st_size <= 10 * 1024 * 1024
    registry = build_registry(get_plugin_manager())
    run = load_run(name, registry)
    settings, task = PlanSettings.from_config(run.cfg.planning), build_task(run, registry)
    planner = Planner(run, build_objective(run, registry), settings, task)
    spec = gym.spec(task.env_id)
    result = run_episodes(planner, None, 2, seed=0, progress=False, max_steps=20)
    assert result["paths"].shape == (2, 21, 2) and spec.max_episode_steps > 20


@pytest.mark.parametrize("name", _shipped(video=True))
def test_every_shipped_world_model_rolls_out_a_few_frames(name, tmp_path, monkeypatch, capsys):
    """The shipped file (world model and its VAE) loads with weights_only=True, rolls out 4 frames of 2 held-out
    episodes (generated in the working directory from the settings it keeps) and writes its report there."""
    assert pretrained.shipped()[name].stat().st_size <= 10 * 1024 * 1024
    monkeypatch.chdir(tmp_path)
    assert main(["rollout", name, "--frames", "4", "--episodes", "2", "sampling.steps=2"]) == 0
    report = json.loads((tmp_path / "runs" / name / "rollouts" / "rollout.json").read_text())
    assert report["generated_frames"] == 4 and report["episodes"] == 2
    assert (tmp_path / "runs" / name / "rollouts" / "rollout.mp4").is_file()


def test_export_of_a_run_older_than_a_setting_takes_the_base_value(maze_run, tmp_path):
    payload = torch.load(maze_run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    del payload["config"]["sampling"]["keyframe_stride"]  # as in a checkpoint written before the setting existed
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    out = tmp_path / "shipped.pt"
    assert main(["export", str(old), "--out", str(out), "sampling.steps=7", "rollout.horizons=[1,2]"]) == 0
    config = torch.load(out, map_location="cpu", weights_only=True)["config"]
    assert config["sampling"]["steps"] == 7 and config["sampling"]["keyframe_stride"] == 4
    assert config["rollout"]["horizons"] == [1, 2]
