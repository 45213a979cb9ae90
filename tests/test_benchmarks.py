"""The benchmark scripts still run (a smoke test: no timing is asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_throughput.py"),
            "--steps",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "backbone.hidden=16",
            "backbone.embed=16",
            "dataset.num_episodes=8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] > 0 and result["matmul_fp32_gflops"] > 0 and result["flops_per_step"] > 0
    assert "train / matmul" in proc.stdout


def test_backbones_benchmark_runs(tmp_path):
    out = tmp_path / "backbones.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "backbones.py"),
            "--backbones",
            "gru,not_a_backbone",
            "--shapes",
            "state",
            "--arg",
            "gru.hidden=16",
            "--arg",
            "gru.embed=16",
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "8",
            "--horizons",
            "4",
            "--sampling-steps",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    gru, missing = result["results"]
    assert gru["backbone"] == "gru" and gru["train"]["tokens_per_s"] > 0 and gru["train"]["flops_per_step"] > 0
    (row,) = gru["rollout"]["horizons"]
    assert row["cached_tokens_per_s"] > 0 and row["uncached_tokens_per_s"] > 0 and row["max_abs_diff"] < 1e-4
    assert missing["skipped"] == "not registered"
    assert "max |cached - uncached|" in proc.stdout and "skipped: not registered" in proc.stdout


def test_video_benchmark_runs(tmp_path):
    out = tmp_path / "video.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "video.py"),
            "--steps",
            "1",
            "--batch-size",
            "2",
            "--seq-len",
            "4",
            "--frames",
            "4",
            "--sampling-steps",
            "2",
            "--rollout-batch",
            "2",
            "--vae-batch",
            "4",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["threads"] >= 1 and result["memory_method"]
    assert set(result["spaces"]) == {"pixels", "latents"}
    assert result["spaces"]["pixels"]["token_shape"] == [3, 32, 32] and result["spaces"]["latents"]["token_shape"] == [
        4,
        8,
        8,
    ]
    for space in result["spaces"].values():
        roll = space["rollout"]
        timed = [
            space["train"],
            space["encode"],
            roll["uncached"],
            roll["cached"],
            roll["cached_unlimited"],
            roll["decode"],
        ]
        assert all(t["frames_per_s"] > 0 and t["peak_mib"] >= 0 for t in timed)
        assert space["train_with_encode_frames_per_s"] > 0 and space["parameters"] > 0
        assert roll["cached"]["window"] == 4 and roll["cached_unlimited"]["window"] is None
        assert roll["max_abs_diff"] < 1e-4 * max(1.0, roll["max_abs_output"])
    assert result["vae"]["encode"]["frames_per_s"] > 0 and result["vae"]["decode"]["frames_per_s"] > 0
    assert "rollout cached, window None" in proc.stdout and "max |cached - uncached|" in proc.stdout


def test_planning_benchmark_runs_with_the_official_row(tmp_path):
    out = tmp_path / "planning.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "planning.py"), "--runs", "untrained", "--batches", "1,2",
         "--repeats", "1", "--out", str(out), "sampling.steps=2", "backbone.hidden=16", "backbone.embed=16"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())["planners"][0]
    assert [r["batch"] for r in result["rows"]] == [1, 2] and all(r["latency_s"] > 0 for r in result["rows"])
    assert result["official"]["latency_s"] > 0 and result["official"]["ratio_to_worldsim_batch1"] > 0
    assert "official" in proc.stdout


def test_video_benchmark_times_the_32x32_latent_space_alone(tmp_path):
    out = tmp_path / "video32.json"
    args = ["--steps", "1", "--batch-size", "2", "--seq-len", "4", "--frames", "3", "--sampling-steps", "1",
            "--rollout-batch", "1", "--vae-batch", "2", "--spaces", "latents32", "--out", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "video.py"), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert list(result["spaces"]) == ["latents32"] and result["spaces"]["latents32"]["token_shape"] == [4, 8, 8]
    assert result["vae"]["frame_shape"][:2] == [32, 32]
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "video.py"), "--spaces", "voxels"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "--spaces: unknown space voxels" in bad.stderr


def test_video_benchmark_times_play_from_key_press_to_frame(tmp_path):
    """The play-latency rows: key presses through a real PlayServer, per sampling setting."""
    out = tmp_path / "play.json"
    args = ["--spaces", "none", "--play", "maze-pixels-32", "--play-presses", "2",
            "--play-settings", "sampling.steps=2,sampling.steps=1;sampling.cfg_scale=1", "--out", str(out)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "video.py"), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["play"]
    assert [r["sampling"]["steps"] for r in rows] == [2, 1] and rows[1]["sampling"]["cfg_scale"] == 1
    assert all(r["presses"] == 2 and r["latency_ms_p95"] >= r["latency_ms_median"] > 0 for r in rows)
    assert "key press -> frame" in proc.stdout
