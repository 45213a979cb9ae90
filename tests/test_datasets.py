"""Data sets come in through the ``worldsim_add_datasets`` hook: the core's and the first-party ones pass the kit, and
a third-party data set built on the public API alone is listed, made by ``worldsim data NAME``, trained on and
rolled out, as ``docs/plugins-data.md`` shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import worldsim
from worldsim.cli import main
from worldsim.data import SequenceData
from worldsim.data.sources import build_dataset, dataset_modality, load_dataset
from worldsim.errors import ConfigError, DataError, PluginError, check_int
from worldsim.testing import check_dataset


class RandomWalks:
    """``walks``: 2-D random walks with momentum, written to an .npz file by ``worldsim data walks``; the last
    ``eval_episodes`` walks are held out. (The example of docs/plugins-data.md.)"""

    def __init__(self, path="data/walks.npz", episodes=32, length=48, momentum=0.9, eval_episodes=4, seed=0):
        self.path = Path(path)
        self.episodes = check_int("dataset.episodes", episodes)
        self.length = check_int("dataset.length", length, minimum=2)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ConfigError(f"dataset.momentum: got {momentum!r}; expected a number in [0, 1)")
        self.momentum = float(momentum)
        self.eval_episodes = check_int("dataset.eval_episodes", eval_episodes)
        if self.eval_episodes >= self.episodes:
            raise ConfigError(f"dataset.eval_episodes: {self.eval_episodes} leaves none of {self.episodes} to train on")
        self.seed = check_int("dataset.seed", seed, minimum=0)

    @staticmethod
    def cli_options(registry):
        return {"episodes": "walks to make", "momentum": "share of the velocity kept per step"}, {"--walks": "episodes"}

    def generate(self, progress=True) -> str:
        rng = np.random.default_rng(self.seed)
        velocity = np.zeros((self.episodes, 2))
        position = np.zeros((self.episodes, self.length, 2))
        actions = rng.uniform(-1, 1, (self.episodes, self.length, 2))
        for t in range(1, self.length):
            velocity = self.momentum * velocity + 0.1 * actions[:, t]
            position[:, t] = position[:, t - 1] + velocity
        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(self.path, observations=position.astype(np.float32), actions=actions.astype(np.float32))
        return f"{self.episodes} walks of {self.length} steps"

    def load(self, split="train", length=None, count=None) -> SequenceData:
        if not self.path.is_file():
            raise DataError(f"dataset.path: no such file {self.path}; make it with worldsim data walks --out FILE")
        with np.load(self.path) as f:
            obs, act = f["observations"], f["actions"]
        cut = len(obs) - self.eval_episodes
        if split == "eval":
            obs, act = obs[cut:][:count][:, :length], act[cut:][:count][:, :length]
        else:
            obs, act = obs[:cut], act[:cut]
        return SequenceData(list(obs), list(act))


class WalksPlugin:
    @worldsim.hookimpl
    def worldsim_add_datasets(self):
        return {"walks": RandomWalks}


@pytest.fixture
def walks_plugin():
    from worldsim.plugins import get_plugin_manager

    pm, plugin = get_plugin_manager(), WalksPlugin()
    pm.register(plugin, name="test-walks-data")
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


def test_the_core_and_first_party_data_sets_pass_the_kit(tmp_path, registry):
    check_dataset(build_dataset({"name": "oscillators", "num_episodes": 6, "episode_len": 12}, registry))
    np.savez(tmp_path / "a.npz", observations=np.zeros((5, 10, 3), np.float32))
    check_dataset(build_dataset({"name": "npz", "path": str(tmp_path / "a.npz")}, registry))
    video = {"name": "video", "task": "shapes", "resolution": 16, "episodes": 6, "length": 8, "eval_episodes": 2}
    check_dataset(build_dataset({**video, "path": str(tmp_path / "v.h5")}, registry))
    maze = {"name": "maze2d", "maze": "umaze", "steps": 1000, "path": str(tmp_path / "m.hdf5")}
    check_dataset(build_dataset(maze, registry), length=20)
    assert set(registry.datasets) >= {"oscillators", "npz", "video", "maze2d"}


def test_the_kit_names_what_a_broken_data_set_breaks(tmp_path):
    class Ragged(RandomWalks):
        def load(self, split="train", length=None, count=None):
            data = super().load(split, length, count)
            return SequenceData([o[: len(o) - i] for i, o in enumerate(data.observations)])

    check_dataset(RandomWalks(path=tmp_path / "w.npz"))
    with pytest.raises(AssertionError, match=r"eval: expected at most 2 episodes of 4 steps"):
        check_dataset(Ragged(path=tmp_path / "w.npz"))


def test_unknown_data_sets_fail_with_the_closest_names(capsys):
    with pytest.raises(ConfigError, match=r"dataset.name: unknown data set 'osillators'; did you mean 'oscillators'"):
        load_dataset({"name": "osillators"})
    assert main(["data", "mazze2d"]) == 2
    assert "did you mean 'maze2d'" in capsys.readouterr().err


def test_a_third_party_data_set_is_made_trained_on_and_rolled_out(walks_plugin, tmp_path, capsys):
    assert main(["plugins"]) == 0
    assert "walks" in capsys.readouterr().out  # with its defaults (the factory's: no config file)
    data, run = tmp_path / "walks.npz", tmp_path / "run"
    assert main(["data", "walks", "--walks", "12", "--momentum", "0.8", "--out", str(data)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {data}: 12 walks of 48 steps"
    assert main(["data", "walks", "--momentum", "1.5", "--out", str(data)]) == 2  # errors name the option
    assert capsys.readouterr().err.strip() == "worldsim: error: --momentum: got 1.5; expected a number in [0, 1)"
    tiny = ["backbone.hidden=16", "backbone.embed=16", "backbone.layers=1", "trainer.steps=2", "trainer.batch_size=4",
            "trainer.warmup_steps=1", "trainer.ckpt_every=2", "data.seq_len=8"]  # fmt: skip
    assert main(["train", "dataset=walks", f"dataset.path={data}", "dataset.episodes=12", f"run.dir={run}", *tiny]) == 0
    config = (run / "config.yaml").read_text()
    assert "name: walks" in config and "momentum: 0.9" in config  # the factory's defaults, written down
    assert main(["rollout", str(run), "--frames", "16", "--context", "2", "--episodes", "2", "sampling.steps=2",
                 "--out", str(tmp_path / "roll")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "roll" / "rollout.json").read_text())["episodes"] == 2


def test_a_data_set_says_what_its_episodes_are(walks_plugin, registry):
    """``worldsim rollout`` reports a run as a video or a state world model by its data set's ``modality``."""
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    assert dataset_modality("video", registry) == "video"
    assert dataset_modality("oscillators", registry) == dataset_modality("npz", registry) == "state"
    with_walks = build_registry(get_plugin_manager())
    assert dataset_modality("walks", with_walks) == "state"  # declares none
    RandomWalks.modality = "sound"
    try:
        with pytest.raises(PluginError, match="dataset 'walks': modality 'sound'; expected one of video, state"):
            dataset_modality("walks", with_walks)
    finally:
        del RandomWalks.modality


def test_the_guide_shows_the_tested_examples():
    """docs/plugins-data.md shows the example data set and video task as these tests run them."""
    import inspect

    import test_video_tasks

    text = (Path(__file__).resolve().parents[1] / "docs" / "plugins-data.md").read_text()
    for example in (RandomWalks, WalksPlugin, test_video_tasks.Dot, test_video_tasks.DotPlugin):
        assert inspect.getsource(example) in text, f"docs/plugins-data.md does not show {example.__name__} as tested"
