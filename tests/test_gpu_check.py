"""`make gpu-check` (benchmarks/gpu_check.py): its --cpu path runs here so the CUDA path's code cannot rot unseen;
the CUDA path itself runs where there is a GPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _run(args: list[str], timeout: int) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    out = Path(args[args.index("--out") + 1])
    return proc, json.loads(out.read_text()) if out.exists() else {}


def _check_items(result: dict, cuda: bool) -> None:
    items = {r["item"]: r for r in result["items"]}
    for name in build_registry(get_plugin_manager()).names("backbone"):  # every backbone trains on some shape
        assert any(i.startswith(f"train {name} ") for i in items), name
        assert any(i.startswith(f"cache {name} ") for i in items), name
    assert {"plan maze2d-umaze", "rollout maze-pixels-32"} <= set(items)
    assert result["failed"] == [] and all(r["ok"] for r in items.values())
    for row in items.values():
        assert row["peak_mib"] >= 0 and row["seconds"] > 0
        if row.get("throughput") is not None:
            assert row["throughput"] > 0
        if row["item"].startswith("train"):
            assert row["precision"] == ("bf16 autocast" if cuda else "fp32") and row["compile"] is cuda
    assert result["cuda"] is cuda


def test_cpu_path_runs_every_item(tmp_path):
    proc, result = _run(["--cpu", "--out", str(tmp_path / "gpu_check.json")], timeout=300)
    assert proc.returncode == 0, proc.stderr
    _check_items(result, cuda=False)
    assert "torch.compile off (--cpu: tiny shapes)" in proc.stdout and "peak MiB" in proc.stdout


def test_a_failing_item_is_named_and_the_exit_is_nonzero(tmp_path):
    proc, result = _run(["--cpu", "--backbones", "no_such_backbone", "--out", str(tmp_path / "r.json")], timeout=300)
    assert proc.returncode == 1
    assert result["failed"][0].startswith("train no_such_backbone")
    assert "gpu_check: FAILED train no_such_backbone" in proc.stderr and "FAIL" in proc.stdout


def test_without_cuda_the_gpu_path_says_so():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "--cpu" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path(tmp_path):
    proc, result = _run(["--out", str(tmp_path / "gpu_check.json")], timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check_items(result, cuda=True)
