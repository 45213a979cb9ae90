"""The worldsim command end to end: plugins, train, rollout, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from worldsim.cli import main


@pytest.fixture
def tiny_run(tiny_toy_run):
    return tiny_toy_run


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("worldsim: error: ")
    return err[0]


def test_plugins_lists_builtins(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "gru" in out and "state" in out and "worldsim_plugins" in out


def test_train_writes_resolved_config_checkpoint_and_logs(tiny_run):
    assert (tiny_run / "config.yaml").is_file()
    assert "seq_len: 8" in (tiny_run / "config.yaml").read_text()
    assert (tiny_run / "checkpoints" / "last.pt").is_file()
    assert any((tiny_run / "tb").iterdir())
    payload = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    assert payload["step"] == 12 and payload["config"]["backbone"]["hidden"] == 16


def test_rollout_reports_every_horizon_past_training_length(tiny_run, tmp_path, capsys):
    assert (
        main(
            ["rollout", str(tiny_run), "--frames", "256", "--episodes", "3", "--out", str(tmp_path), "sampling.steps=5"]
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "rollout.json").read_text())
    assert [r["horizon"] for r in report["horizons"]] == ["1x", "2x", "4x", "8x"]
    assert report["generated_tokens"] == 64 and report["frames_per_token"] == 4 and report["sampling"]["steps"] == 5
    assert all(np.isfinite(r["rmse"]) and r["rms_ratio"] > 0 for r in report["horizons"])
    assert (tmp_path / "rollout.png").stat().st_size > 1000
    assert "8x" in out


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "backbone=gur"], "unknown backbone 'gur'; did you mean 'gru'?"),
        (["train", "trainer.steps"], "malformed override"),
        (["train", "tokenizer=pixelz"], "unknown tokenizer 'pixelz'"),
        (["rollout", "/nonexistent/run"], "file not found"),
        (["train", "dataset=npz"], "dataset.path: a value is required"),
        (["train", "sampling.steps=many"], "sampling.steps"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, expected, capsys):
    assert main(argv) == 2
    assert expected in _error_line(capsys)


def test_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00garbage")
    assert main(["rollout", str(bad)]) == 2
    assert "corrupt.pt" in _error_line(capsys)
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    assert main(["rollout", str(empty_run)]) == 2
    assert "no checkpoints/last.pt" in _error_line(capsys)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert main(["rollout", str(foreign)]) == 2
    assert "foreign.pt" in _error_line(capsys)


def test_dataset_with_nan_exits_2(tmp_path, capsys):
    obs = np.random.default_rng(0).normal(size=(4, 16, 3))
    obs[2, 5, 1] = np.nan
    path = tmp_path / "seq.npz"
    np.savez(path, observations=obs)
    assert main(["train", "dataset=npz", f"dataset.path={path}", f"run.dir={tmp_path / 'run'}"]) == 2
    assert "NaN" in _error_line(capsys)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_console_script_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "worldsim.cli", "train", "backbone=nope"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_demo_seed_sets_the_training_seed_and_ends_with_the_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "--experiment", "demo_toy", "--steps", "3", "--frames", "16", "--seed", "7", "--out", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "plot: " in printed and "json: " in printed
    assert OmegaConf.load(out / "config.yaml").run.seed == 7


def test_demo_trains_its_experiment_then_runs_the_agent_of_its_task(tmp_path, capsys):
    """The default demo (configs/experiment/demo.yaml) end to end at a tiny size: the data made on first use, a few
    training steps, then the agent as `worldsim plan` runs it, ending with the score table."""
    out, data = tmp_path / "demo", tmp_path / "umaze.hdf5"
    args = ["demo", "--steps", "2", "--episodes", "2", "--out", str(out), f"dataset.path={data}", "dataset.steps=3000",
            "sampling.steps=2", "planning.open_loop=100"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "experiment=demo" in printed and "Maze2d-UMaze" in printed and "first reach" in printed
    assert data.exists() and (out / "plans" / "plan.json").exists()


def test_disk_full_at_a_checkpoint_exits_2_naming_the_file_and_the_last_good_step(tmp_path, monkeypatch, capsys):
    """The second checkpoint's write fails as torch's zip writer fails on a full disk: one line, exit 2, and
    the first checkpoint (step 6) is still last.pt."""
    from conftest import TINY_TOY

    from worldsim.checkpoint import load_checkpoint

    real_save, calls = torch.save, []

    def save_then_fill_the_disk(obj, f):
        calls.append(1)
        if len(calls) == 1:
            return real_save(obj, f)
        f.write(b"\0" * 4096)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8608064 vs 8607956")

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    run = tmp_path / "run"
    assert main(["train", *TINY_TOY, f"run.dir={run}"]) == 2
    line = _error_line(capsys)
    last = run / "checkpoints" / "last.pt"
    assert line.startswith(f"worldsim: error: checkpoint {last}: writing it failed (")
    assert line.endswith(f"; last good checkpoint: {last} (step 6)")
    assert load_checkpoint(last)["step"] == 6
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.pt", "step_00000006.pt"]  # no temp file


def _no_work(*args, **kwargs):
    raise AssertionError("the work started before the output folder was checked")


@pytest.mark.parametrize("command", ["train", "rollout", "plan", "data", "demo"])
def test_unwritable_output_fails_before_any_work(command, tiny_run, tmp_path, monkeypatch, capsys):
    import worldsim.planning
    import worldsim.rollout
    import worldsim.train
    import worldsim_plugins.maze2d_data

    for module, name in [(worldsim.train, "prepare_training"), (worldsim.rollout, "evaluate_rollouts"),
                         (worldsim.planning, "evaluate_planner"), (worldsim_plugins.maze2d_data, "generate_maze2d_file")]:  # fmt: skip
        monkeypatch.setattr(module, name, _no_work)
    (tmp_path / "file").write_text("not a folder")
    bad = tmp_path / "file" / "out"  # not creatable, whoever runs the test (root included)
    argv, option = {
        "train": (["train", "experiment=toy", f"run.dir={bad}"], "run.dir"),
        "rollout": (["rollout", str(tiny_run), "--out", str(bad)], "--out"),
        "plan": (["plan", "maze2d-umaze", "--episodes", "1", "--out", str(bad)], "--out"),
        "data": (["data", "maze2d", "--maze", "umaze", "--steps", "100", "--out", str(bad / "umaze.hdf5")], "--out"),
        "demo": (["demo", "--experiment", "demo_toy", "--out", str(bad)], "--out"),
    }[command]
    assert main(argv) == 2
    assert _error_line(capsys) == (
        f"worldsim: error: {option} {bad}: cannot be created (Not a directory); "
        "expected a folder that can be created and written"
    )
