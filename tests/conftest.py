"""Shared fixtures: a fresh plugin manager and registry per test, the registered backbones as a parameter,
and one tiny trained toy run per session (for the tests that only read a run)."""

import pytest

from worldsim.cli import main
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry

#: a toy run small enough to train in a second or two
TINY_TOY = [
    "experiment=toy",
    "trainer.steps=12",
    "trainer.batch_size=8",
    "trainer.warmup_steps=2",
    "trainer.log_every=4",
    "trainer.ckpt_every=6",
    "backbone.hidden=16",
    "backbone.embed=16",
    "backbone.layers=1",
    "dataset.num_episodes=20",
    "data.seq_len=8",
]


@pytest.fixture
def plugin_manager():
    """A new plugin manager with the built-in plugins only (no entry points): tests cannot leak registrations."""
    return get_plugin_manager(fresh=True, autoload=False)


@pytest.fixture
def registry(plugin_manager):
    return build_registry(plugin_manager)


def pytest_generate_tests(metafunc):
    """``backbone_name``: every backbone registered by the built-in plugins."""
    if "backbone_name" in metafunc.fixturenames:
        names = sorted(build_registry(get_plugin_manager(fresh=True, autoload=False)).backbones)
        metafunc.parametrize("backbone_name", names)


@pytest.fixture(scope="session")
def tiny_toy_run(tmp_path_factory):
    """A trained toy run folder (TINY_TOY); read it, do not write into it."""
    out = tmp_path_factory.mktemp("run") / "toy"
    assert main(["train", *TINY_TOY, f"run.dir={out}"]) == 0
    return out


#: a maze2d planner small enough to train in a second
TINY_MAZE = ["backbone.hidden=16", "backbone.embed=16", "backbone.noise_embed=8", "backbone.layers=1",
             "trainer.batch_size=4", "trainer.log_every=1", "trainer.ckpt_every=2", "trainer.warmup_steps=1"]  # fmt: skip


@pytest.fixture(scope="session")
def maze_run(tmp_path_factory):
    """A maze2d-umaze run trained for two steps on 3000 generated expert steps (TINY_MAZE); plans add TensorBoard events."""
    root = tmp_path_factory.mktemp("plan")
    data = root / "umaze.hdf5"
    # the data maze2d_umaze asks for (noisy, long holds), made small
    args = ["--steps", "3000", "--noisy", "--pause-prob", "0.5", "--pause-steps", "10", "300", "--out", str(data)]
    assert main(["data", "maze2d", "--maze", "umaze", *args]) == 0
    run = root / "run"
    assert main(["train", "experiment=maze2d_umaze", f"dataset.path={data}", "dataset.steps=3000", f"run.dir={run}",
                 "trainer.steps=2", *TINY_MAZE]) == 0  # fmt: skip
    return run
