"""The benchmark scripts still run (a smoke test: no timing is asserted here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_benchmark_runs(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--steps", "1", "--batch-size", "4",
         "--out", str(out), "backbone.hidden=16", "backbone.embed=16", "dataset.num_episodes=8"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["tokens_per_s"] > 0 and result["matmul_fp32_gflops"] > 0 and result["flops_per_step"] > 0
    assert "train / matmul" in proc.stdout
