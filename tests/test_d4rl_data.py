"""D4RL hdf5 and Minari readers, the expert data generator, the maze2d data source and `worldsim data maze2d`."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from worldsim.cli import main
from worldsim.data.d4rl import read_d4rl_hdf5, write_d4rl_hdf5
from worldsim.data.minari import read_minari
from worldsim.data.sources import load_dataset
from worldsim.errors import ConfigError, DataError
from worldsim_envs.generate import generate_maze2d
from worldsim_envs.maze2d import pointmaze_episode_to_d4rl, rowcol_to_xy, vec_to_xy
from worldsim_plugins.maze2d_data import STEP_LAYOUT, step_vectors


@pytest.fixture(scope="module")
def stream():
    return generate_maze2d("umaze", 3000, seed=0, progress=False)


def _arrays(n=10):
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(n, 4)).astype(np.float32),
        "actions": rng.normal(size=(n, 2)).astype(np.float32),
        "rewards": np.zeros(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
        "infos/goal": np.ones((n, 2), np.float32),
    }


def test_generator_layout_is_seeded_and_continuous(stream):
    d = stream
    assert d["observations"].shape == (3000, 4) and d["observations"].dtype == np.float32
    assert d["actions"].shape == (3000, 2) and np.abs(d["actions"]).max() <= 1
    assert d["rewards"].shape == (3000,) and set(np.unique(d["rewards"])) <= {0.0, 1.0}
    assert not d["terminals"].any() and np.flatnonzero(d["timeouts"]).tolist() == [299 + 300 * i for i in range(10)]
    np.testing.assert_array_equal(d["infos/qpos"], d["observations"][:, :2])
    dist = np.linalg.norm(d["observations"][:, :2] - [1, 1], axis=1)
    np.testing.assert_array_equal(d["rewards"], (dist <= 0.5).astype(np.float32))
    assert np.linalg.norm(np.diff(d["observations"][:, :2], axis=0), axis=1).max() < 0.1  # one stream, no resets
    assert len(np.unique(d["infos/goal"], axis=0)) >= 4  # it wanders between targets
    again = generate_maze2d("umaze", 500, seed=0, progress=False)
    for key, value in again.items():
        np.testing.assert_array_equal(value, d[key][:500])


def test_hdf5_round_trip(tmp_path, stream):
    path = write_d4rl_hdf5(tmp_path / "sub" / "d.hdf5", stream, attrs={"maze": "umaze"})
    back = read_d4rl_hdf5(path)
    assert set(back) == set(stream)
    for key in stream:
        np.testing.assert_array_equal(back[key], stream[key])
    assert list(path.parent.iterdir()) == [path]  # the temp file is gone


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda a: a.pop("actions"),
            "missing key 'actions' \\(found: infos/goal, observations, rewards, terminals, timeouts\\)",
        ),
        (lambda a: a.update(actions=a["actions"][:9]), "'actions' has 9 rows but 'observations' has 10"),
        (lambda a: a.update({"infos/goal": a["infos/goal"][:8]}), "'infos/goal' has 8 rows but 'observations' has 10"),
        (lambda a: a["observations"].__setitem__((3, 1), np.nan), "'observations' contains NaN"),
        (lambda a: a["actions"].__setitem__((0, 0), np.inf), "'actions' contains inf"),
        (lambda a: a.update(observations=a["observations"][:, 0]), "'observations' must be 2-D"),
    ],
)
def test_malformed_hdf5_errors(tmp_path, change, message):
    arrays = _arrays()
    change(arrays)
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f[key] = value
    with pytest.raises(DataError, match=f"bad.hdf5: {message}"):
        read_d4rl_hdf5(path)


def test_missing_or_not_hdf5(tmp_path):
    with pytest.raises(DataError, match="nope.hdf5: no such file"):
        read_d4rl_hdf5(tmp_path / "nope.hdf5")
    text = tmp_path / "text.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(DataError, match="text.hdf5: cannot read it as an hdf5 file"):
        read_d4rl_hdf5(text)


def test_step_vectors_split_only_where_discontinuous():
    a = _arrays(10)
    a["observations"][:, :2] = np.arange(10)[:, None] * 0.05
    a["observations"][6:, :2] += 3.0  # a jump between rows 5 and 6
    a["terminals"][2] = True  # row 2 -> 3 is not a transition
    a["timeouts"][4] = True  # bookkeeping only
    pieces = step_vectors(a)
    assert [len(p) for p in pieces] == [2, 2, 3]  # t = 0,1 | 3,4 | 6,7,8
    np.testing.assert_array_equal(pieces[2][0], np.r_[a["actions"][6], a["observations"][7]])


def test_maze2d_source_generates_on_first_use_and_is_a_then_next_obs(tmp_path, capsys):
    path = tmp_path / "maze2d-umaze.hdf5"
    node = {
        "name": "maze2d",
        "maze": "umaze",
        "path": str(path),
        "steps": 2000,
        "noisy": False,
        "pause_prob": 0.0,
        "seed": 0,
    }
    data = load_dataset(node)
    assert path.is_file() and "not found; generating 2,000 steps" in capsys.readouterr().out
    assert data.actions is None and len(data.observations) == 1 and data.obs_shape == (6,)
    steps = data.observations[0]
    assert len(steps) == 1799  # the first 90% of the rows, one vector per transition
    raw = read_d4rl_hdf5(path)
    lay = STEP_LAYOUT
    np.testing.assert_array_equal(steps[:, lay["action"]], raw["actions"][:1799])
    np.testing.assert_array_equal(
        steps[:, lay["position"]], raw["observations"][1:1800, :2]
    )  # o' of row t = obs of row t+1
    np.testing.assert_array_equal(steps[:, lay["velocity"]], raw["observations"][1:1800, 2:])
    ev = load_dataset(node, split="eval", length=50, count=3)
    assert [len(e) for e in ev.observations] == [50, 50, 50]
    np.testing.assert_array_equal(ev.observations[0][:, lay["action"]], raw["actions"][1800:1850])
    assert capsys.readouterr().out == ""  # the file is reused
    with pytest.raises(DataError, match="generated with noisy=False but dataset.noisy=True"):
        load_dataset({**node, "noisy": True})
    with pytest.raises(ConfigError, match="dataset.maze: unknown maze 'foo'; expected one of large, medium, umaze"):
        load_dataset({**node, "maze": "foo"})


def test_maze2d_config_path_follows_the_maze():
    from worldsim.config import compose_config, to_plain
    from worldsim_plugins.maze2d_data import maze2d_path

    node = to_plain(compose_config(["dataset=maze2d", "dataset.maze=large"]).dataset)
    assert node["path"] is None and node["steps"] is None
    assert maze2d_path(node) == Path("data/maze2d-large.hdf5")
    room = "#####\\#GOO#\\#O#O#\\#OOO#\\#####"  # a text map gets a file named by its hash
    assert maze2d_path({**node, "maze": room}).name.startswith("maze2d-custom-")
    assert maze2d_path({**node, "path": "x.hdf5"}) == Path("x.hdf5")


def test_cli_data_maze2d(tmp_path, capsys):
    out = tmp_path / "u.hdf5"
    assert main(["data", "maze2d", "--maze", "umaze", "--steps", "2000", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 2,000 steps" in printed and "steps/s" in printed
    assert read_d4rl_hdf5(out)["observations"].shape == (2000, 4)
    assert main(["data", "maze2d", "--maze", "foo", "--out", str(tmp_path / "f.hdf5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "worldsim: error: --maze: unknown maze 'foo'; expected one of large, medium, umaze or a text map "
        "('#' wall, 'O' open, 'G' goal, rows separated by '\\')"
    ]
    assert not (tmp_path / "f.hdf5").exists()


def test_cli_data_maze2d_pause_steps_set_how_long_the_expert_holds(tmp_path, capsys):
    """Long holds (a planner's "arrive, then stay") come from --pause-steps; the file records them and a dataset
    node that asks for other holds is refused rather than silently reusing the file."""
    out = tmp_path / "h.hdf5"
    args = ["data", "maze2d", "--maze", "umaze", "--steps", "4000", "--pause-prob", "1", "--out", str(out)]
    assert main([*args, "--pause-steps", "200", "200"]) == 0
    assert "holds of 200-200 steps" in capsys.readouterr().out
    speed = np.hypot(*read_d4rl_hdf5(out)["observations"][:, 2:].T)
    still = np.flatnonzero(speed < 0.05)  # a hold settles at the cell centre within a few dozen steps
    runs = np.split(still, np.flatnonzero(np.diff(still) > 1) + 1)
    assert max(len(r) for r in runs) >= 150  # the default 10-50 step holds never give such a run
    node = {"name": "maze2d", "maze": "umaze", "path": str(out), "steps": 4000, "pause_prob": 1.0}
    assert len(load_dataset({**node, "pause_steps": [200, 200]}).observations) >= 1
    with pytest.raises(DataError, match=r"generated with pause_steps=\[200, 200\] but dataset.pause_steps=\[10, 50\]"):
        load_dataset(node)
    with pytest.raises(ConfigError, match=r"dataset.pause_steps: got \[50, 10\]; expected \[lo, hi\]"):
        load_dataset({**node, "pause_steps": [50, 10]})
    assert main([*args, "--pause-steps", "9", "3"]) == 2
    assert "--pause-steps: got [9, 3]; expected [lo, hi]" in capsys.readouterr().err


def test_cli_data_maze2d_record_intended_keeps_the_noisy_states_and_stores_the_clean_actions(tmp_path, capsys):
    """DART-style data: the noisy rollout's states, the expert's actions before the noise. The same seed gives the
    same states as D4RL's recording; its executed (noisy) actions move to infos/executed_actions; the recorded
    actions are the smooth PD law's, not the noise's."""
    args = ["data", "maze2d", "--maze", "umaze", "--steps", "3000", "--noisy"]
    assert main([*args, "--out", str(tmp_path / "e.hdf5")]) == 0
    assert main([*args, "--record", "intended", "--out", str(tmp_path / "i.hdf5")]) == 0
    assert "intended actions recorded" in capsys.readouterr().out
    executed, intended = read_d4rl_hdf5(tmp_path / "e.hdf5"), read_d4rl_hdf5(tmp_path / "i.hdf5")
    np.testing.assert_array_equal(intended["observations"], executed["observations"])
    np.testing.assert_array_equal(intended["infos/executed_actions"], executed["actions"])
    assert "infos/executed_actions" not in executed
    jerk = {k: np.abs(np.diff(d["actions"], axis=0)).mean() for k, d in (("e", executed), ("i", intended))}
    assert jerk["i"] < 0.5 * jerk["e"]  # N(0, 0.5^2) noise makes consecutive executed actions jump
    node = {"name": "maze2d", "maze": "umaze", "path": str(tmp_path / "e.hdf5"), "steps": 3000, "noisy": True}
    with pytest.raises(DataError, match="generated with record='executed' but dataset.record='intended'"):
        load_dataset({**node, "record": "intended"})
    with pytest.raises(ConfigError, match="dataset.record: got 'clean'; expected one of executed, intended"):
        load_dataset({**node, "record": "clean"})


def _minari_file(root, steps=(5, 3)):
    """A tiny PointMaze dataset in Minari's layout, positions of the umaze cells in (x, y)."""
    folder = root / "D4RL" / "pointmaze" / "umaze-v2"
    (folder / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with h5py.File(folder / "data" / "main_data.hdf5", "w") as f:
        for i, n in enumerate(steps):
            ep = f.create_group(f"episode_{i}")
            rowcol = np.tile([[3.0, 1.0]], (n + 1, 1)) + rng.uniform(-0.1, 0.1, (n + 1, 2))
            vel = rng.normal(size=(n + 1, 2))
            obs = ep.create_group("observations")
            obs["observation"] = np.c_[rowcol_to_xy(rowcol, (5, 5)), vec_to_xy(vel)]
            obs["achieved_goal"] = rowcol_to_xy(rowcol, (5, 5))
            obs["desired_goal"] = np.tile(rowcol_to_xy([1.0, 1.0], (5, 5)), (n + 1, 1))
            ep["actions"] = vec_to_xy(rng.uniform(-1, 1, (n, 2)))
            ep["rewards"] = np.zeros(n)
            ep["terminations"] = np.zeros(n, bool)
            ep["truncations"] = np.r_[np.zeros(n - 1, bool), True]
    return folder


def test_read_minari(tmp_path, monkeypatch):
    folder = _minari_file(tmp_path)
    raw = read_minari(folder)
    assert [len(e["actions"]) for e in raw] == [5, 3] and raw[0]["observations"]["observation"].shape == (6, 4)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    by_id = read_minari("D4RL/pointmaze/umaze-v2")
    eps = [pointmaze_episode_to_d4rl(e, "umaze") for e in by_id]  # in D4RL's frame
    pos = eps[0]["observations"]["observation"][:, :2]
    assert np.abs(pos - [3, 1]).max() <= 0.1 + 1e-9
    np.testing.assert_allclose(eps[1]["observations"]["desired_goal"], 1.0)
    np.testing.assert_allclose(vec_to_xy(eps[0]["actions"]), raw[0]["actions"])
    with pytest.raises(DataError, match="minari dataset 'D4RL/pointmaze/nope-v0': not found .*~/.minari/datasets"):
        read_minari("D4RL/pointmaze/nope-v0")
    with h5py.File(folder / "data" / "main_data.hdf5", "a") as f:
        del f["episode_1/rewards"]
        f["episode_1/rewards"] = np.zeros(2)
    with pytest.raises(DataError, match="episode_1/rewards has 2 rows but actions has 3"):
        read_minari(folder)
