"""``run.seed`` fixes a run, and a training killed with SIGKILL at any moment resumes to the same weights.

Every run here is a real ``worldsim train`` process (``python -m worldsim.cli``), as a user starts it.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from worldsim.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TRAIN = [
    sys.executable,
    "-m",
    "worldsim.cli",
    "train",
    "experiment=toy",
    "backbone.hidden=48",
    "backbone.embed=48",
    "dataset.num_episodes=64",
    "trainer.batch_size=16",
    "trainer.warmup_steps=5",
    "trainer.log_every=5",
]

# A `worldsim train` whose checkpoint writer is slowed down: the file is written in small pieces with a pause
# after each, and a marker file appears when a write starts, so the test can kill the process mid-write.
SLOW_WRITER = """
import io, os, sys, time
from pathlib import Path
import torch
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    Path(os.environ["WRITE_MARKER"]).touch()
    data = buf.getvalue()
    for i in range(0, len(data), len(data) // 50 + 1):
        f.write(data[i : i + len(data) // 50 + 1])
        f.flush()
        time.sleep(0.02)
torch.save = slow_save
from worldsim.cli import main
sys.exit(main(sys.argv[1:]))
"""


def train(run_dir: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, f"run.dir={run_dir}", *extra], capture_output=True, text=True, timeout=timeout)


def trained_state(run_dir: Path) -> dict:
    payload = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return {key: payload[key] for key in ("step", "model", "ema", "optimizer", "rng")}


def assert_identical(a, b, where: str = "state") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def max_difference(a: dict, b: dict) -> float:
    return max((x.float() - b[k].float()).abs().max().item() for k, x in a.items())


def checkpoints_all_readable(run_dir: Path) -> list[str]:
    """Every checkpoint file in the run loads (a temp file of an interrupted write is not a checkpoint)."""
    names = []
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        load_checkpoint(path)  # raises CheckpointError on a partial file
        names.append(path.name)
    return names


def test_same_seed_gives_bitwise_identical_weights_ema_and_optimizer(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        proc = train(tmp_path / name, "trainer.steps=20", f"run.seed={seed}")
        assert proc.returncode == 0, proc.stderr
        runs[name] = trained_state(tmp_path / name)
    assert_identical(runs["a"], runs["b"])
    assert max_difference(runs["a"]["model"], runs["c"]["model"]) > 1e-3  # another seed: another model
    assert max_difference(runs["a"]["ema"], runs["c"]["ema"]) > 1e-3


STEPS = 60
RUN = [f"trainer.steps={STEPS}", "trainer.ckpt_every=3", "trainer.batch_size=32", "backbone.hidden=96"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same training run once from start to end, and how long it took."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    started = time.monotonic()
    proc = train(run_dir, *RUN)
    assert proc.returncode == 0, proc.stderr
    return trained_state(run_dir), time.monotonic() - started


def checkpoint_written(run_dir: Path, since: int | None, proc: subprocess.Popen, timeout: float = 240) -> bool:
    """Wait until last.pt changes from ``since`` (its mtime in ns, None: absent); False when the process ended first."""
    last, deadline = run_dir / "checkpoints" / "last.pt", time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if last.stat().st_mtime_ns != since:
                return True
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return False


def mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_weights(tmp_path, uninterrupted):
    """Each run is killed at a random moment a few checkpoints after it started: mid-step, or inside the next write.

    The moment is counted in checkpoints (0-2 more after the first, then 0-20 ms), not seconds, so a fast machine
    cannot finish the run before the kills: six attempts advance at most 6 x 3 checkpoints of the 20."""
    reference, _ = uninterrupted
    rng = random.Random(0)
    run_dir = tmp_path / "killed"
    kills = 0
    for attempt in range(12):
        before = mtime(run_dir / "checkpoints" / "last.pt")
        proc = subprocess.Popen(
            [*TRAIN, f"run.dir={run_dir}", *RUN], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if attempt < 6 and checkpoint_written(run_dir, before, proc):  # later attempts run to the end
            for _ in range(rng.randint(0, 2)):
                checkpoint_written(run_dir, mtime(run_dir / "checkpoints" / "last.pt"), proc)
            time.sleep(rng.uniform(0.0, 0.02))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=300)
        checkpoints_all_readable(run_dir)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
    assert proc.returncode == 0, err
    assert kills >= 4, f"only {kills} runs were killed before they ended: the test did not exercise resuming"
    assert_identical(trained_state(run_dir), reference)


def test_sigkill_during_a_checkpoint_write_leaves_no_partial_checkpoint(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    run_dir = tmp_path / "killed_writing"
    for kill_at_write in (1, 4):  # the first checkpoint ever (nothing to fall back on), then a later one
        marker = tmp_path / f"writing{kill_at_write}"
        env = {**os.environ, "WRITE_MARKER": str(marker)}
        proc = subprocess.Popen(
            [sys.executable, "-c", SLOW_WRITER, *TRAIN[3:], f"run.dir={run_dir}", *RUN],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        writes, deadline = 0, time.monotonic() + 240
        while writes < kill_at_write and proc.poll() is None and time.monotonic() < deadline:
            if marker.exists():
                marker.unlink()
                writes += 1
            time.sleep(0.005)
        time.sleep(0.1)  # well inside the write: it takes about 50 x 20 ms
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err
        partial = list((run_dir / "checkpoints").glob(".*.tmp"))
        assert partial, "the process was not killed during a write"
        checkpoints_all_readable(run_dir)  # the partial file never replaced a checkpoint
    proc = train(run_dir, *RUN)
    assert proc.returncode == 0, proc.stderr
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "the killed writer's temp file was not cleaned up"
    assert_identical(trained_state(run_dir), reference)
