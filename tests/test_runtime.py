"""The machine-facing settings of a run: threads, seeds, memory estimates that refuse what cannot fit."""

import os

import numpy as np
import pytest
import torch

from worldsim.checkpoint import remove_stale_temp_files, save_checkpoint
from worldsim.cli import main
from worldsim.errors import ConfigError
from worldsim.runtime import (
    ResourceError,
    activation_bytes,
    available_cores,
    check_fits,
    resolve_threads,
    seed_everything,
    set_threads,
)


def test_threads_default_to_the_cores_this_process_may_use_and_are_checked():
    assert resolve_threads(None, "trainer.threads") == available_cores() >= 1
    assert resolve_threads(3, "trainer.threads") == 3
    for bad in (0, -1, 1.5, True, "two"):
        with pytest.raises(ConfigError, match="trainer.threads: expected a positive number of threads"):
            resolve_threads(bad, "trainer.threads")
    before = torch.get_num_threads()
    try:
        assert set_threads(1, "planning.threads") == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_bad_threads_setting_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", "experiment=toy", "trainer.threads=0", f"run.dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trainer.threads" in err


def test_seed_everything_fixes_torch_numpy_and_python():
    import random

    seed_everything(7)
    a = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002 - the global generator is what is seeded
    seed_everything(7)
    b = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002 - the global generator is what is seeded
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_activation_bytes_counts_what_autograd_saves_per_token():
    """Linear(4 -> 8) then ReLU saves its input (4 floats) and the ReLU's output (8 floats) per token."""
    layer = torch.nn.Linear(4, 8)

    def step(n: int) -> None:
        torch.relu(layer(torch.randn(1, n, 4))).sum().backward()

    per_sequence = activation_bytes(step, [2, 4, 8], exclude=list(layer.parameters()))
    assert per_sequence(1000) == pytest.approx(1000 * (4 + 8) * 4)


def test_check_fits_names_the_settings_and_both_sizes():
    check_fits(["data.seq_len=16"], need=10, what="a step", available=100)
    with pytest.raises(
        ResourceError,
        match=r"data.seq_len=16, trainer.batch_size=8: a step needs about 2.0 GiB "
        r"of memory but 1.0 GiB is available",
    ):
        check_fits(["data.seq_len=16", "trainer.batch_size=8"], need=2 * 1024**3, what="a step", available=1024**3)


@pytest.mark.parametrize(
    "args, setting",
    [
        (
            ["train", "experiment=toy", "data.seq_len=10000000", "trainer.steps=1", "dataset.num_episodes=8"],
            "data.seq_len=10000000, trainer.batch_size=64",
        ),
        (
            ["train", "experiment=toy", "trainer.batch_size=100000000", "trainer.steps=1", "dataset.num_episodes=8"],
            "trainer.batch_size=100000000",
        ),
        (
            ["train", "experiment=toy", "dataset.num_episodes=100000000000", "trainer.steps=1"],
            "dataset.num_episodes=100000000000",
        ),
        (["data", "video", "--task", "shapes", "--resolution", "100000", "--episodes", "8"], "--resolution=100000"),
        (["data", "video", "--task", "maze-pixels", "--episodes", "100000000"], "--episodes=100000000"),
        (["data", "maze2d", "--maze", "umaze", "--steps", "100000000000"], "--steps=100000000000"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_they_are_allocated(args, setting, tmp_path, capsys):
    out = ["--out", str(tmp_path / "data.h5")] if args[0] == "data" else [f"run.dir={tmp_path}"]
    assert main(args + out) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and setting in err and "GiB of memory but" in err and "is available" in err
    assert not (tmp_path / "data.h5").exists() and not (tmp_path / "checkpoints").exists()


def test_a_killed_writers_temp_file_is_removed_and_a_live_ones_kept(tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"step": 1})
    dead = tmp_path / ".last.pt.999999999.tmp"  # no such process
    live = tmp_path / f".last.pt.{os.getpid()}.tmp"
    dead.write_bytes(b"partial")
    live.write_bytes(b"being written")
    assert remove_stale_temp_files(tmp_path) == [dead]
    assert live.exists() and (tmp_path / "last.pt").exists()
