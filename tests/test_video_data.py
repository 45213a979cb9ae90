"""Video data: generators (maze-pixels, shapes), the worldsim-video-v1 file layout, the ``video`` data set, the CLI."""

import h5py
import numpy as np
import pytest

from worldsim.cli import main
from worldsim.data.sources import load_dataset
from worldsim.errors import DataError
from worldsim.video.data import generate_video_file, read_video_file, video_settings, write_video_file
from worldsim_envs import goal_cell, maze_map
from worldsim_envs.render import AGENT, WALL
from worldsim_envs.video import (
    SHAPE_COLORS,
    cell_to_pixel,
    generate_maze_pixels,
    generate_shapes,
    maze_background,
    maze_pixel_geometry,
    pixel_to_cell,
    shape_radius,
)


def _arrays(e=3, length=5, h=16):
    rng = np.random.default_rng(0)
    return (
        rng.integers(0, 256, size=(e, length, h, h, 3), dtype=np.uint8),
        rng.standard_normal((e, length, 2)).astype(np.float32),
        rng.standard_normal((e, length, 2)).astype(np.float32),
    )


def test_round_trip(tmp_path):
    frames, actions, positions = _arrays()
    path = write_video_file(tmp_path / "v.h5", frames, actions, positions, task="mine", fps=12, settings={"a": 1})
    v = read_video_file(path)
    assert v.frames.dtype == np.uint8 and np.array_equal(v.frames, frames)
    assert np.array_equal(v.actions, actions) and np.array_equal(v.positions, positions)
    assert (v.task, v.fps, v.settings) == ("mine", 12, {"a": 1})
    with h5py.File(path) as f:
        assert f.attrs["format"] == "worldsim-video-v1" and f["frames"].chunks == (1, 5, 16, 16, 3)
    assert read_video_file(write_video_file(tmp_path / "w.h5", frames, actions)).positions is None


def _write_raw(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "no such file"),
        ("not_hdf5", "cannot read .* as HDF5"),
        ("no_frames", "no 'frames'"),
        ("no_actions", "no 'actions'"),
        ("float_frames", "uint8 .*found float32"),
        ("rank", r"found uint8 \(3, 5, 16, 16\)"),
        ("mismatch", r"'actions' must be .*found shape \(2, 5, 2\)"),
        ("nan_actions", "'actions' contains NaN"),
        ("inf_positions", "'positions' contains NaN or inf"),
    ],
)
def test_bad_files(tmp_path, case, match):
    frames, actions, positions = _arrays()
    path = tmp_path / "bad.h5"
    if case == "not_hdf5":
        path.write_text("hello")
    elif case == "no_frames":
        _write_raw(path, actions=actions)
    elif case == "no_actions":
        _write_raw(path, frames=frames)
    elif case == "float_frames":
        _write_raw(path, frames=frames.astype(np.float32), actions=actions)
    elif case == "rank":
        _write_raw(path, frames=frames[..., 0], actions=actions)
    elif case == "mismatch":
        _write_raw(path, frames=frames, actions=actions[:2])
    elif case == "nan_actions":
        actions[1, 2, 0] = np.nan
        _write_raw(path, frames=frames, actions=actions)
    elif case == "inf_positions":
        positions[0, 0, 1] = np.inf
        _write_raw(path, frames=frames, actions=actions, positions=positions)
    with pytest.raises(DataError, match=match) as info:
        read_video_file(path)
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def maze_data():
    return generate_maze_pixels("umaze", 32, episodes=3, length=24, seed=1)


def test_maze_pixels_agent_centroid_maps_back(maze_data):
    frames, positions = maze_data["frames"], maze_data["positions"]
    assert frames.shape == (3, 24, 32, 32, 3) and frames.dtype == np.uint8
    for e in range(3):
        for t in range(0, 24, 5):
            ys, xs = np.nonzero(np.all(frames[e, t] == AGENT, axis=-1))
            assert len(ys) >= 8  # clearly visible at 32x32
            cell = pixel_to_cell([ys.mean() + 0.5, xs.mean() + 0.5], "umaze", 32)
            assert np.abs(cell - positions[e, t]).max() < 0.2


@pytest.mark.parametrize("maze, resolution", [("umaze", 32), ("medium", 64), ("large", 48)])
def test_maze_pixels_walls_where_the_map_says(maze, resolution):
    walls, img = maze_map(maze), maze_background(maze, resolution)
    for (i, j), wall in np.ndenumerate(walls):
        py, px = np.floor(cell_to_pixel([i, j], maze, resolution)).astype(int)  # the pixel at the cell centre
        assert np.array_equal(img[py, px], WALL) == bool(wall) or (i, j) == goal_cell(maze)  # the goal disk covers it
    g = maze_pixel_geometry(maze, resolution)
    if g["offset_px"][0] >= 1:  # a maze wider than high is centred; the margin is wall
        assert np.all(img[0] == WALL) and np.all(img[-1] == WALL)


def test_actions_matter(maze_data):
    quiet = generate_maze_pixels("umaze", 32, episodes=3, length=24, action_noise=0.0, seed=1)
    assert np.array_equal(maze_data["positions"][:, 0], quiet["positions"][:, 0])  # same resets
    assert not np.allclose(maze_data["positions"][:, 1:], quiet["positions"][:, 1:])
    assert np.all(maze_data["actions"][:, 0] == 0) and np.abs(maze_data["actions"]).max() <= 1


def test_shapes_inside_counted_and_seeded():
    a = generate_shapes(32, episodes=6, length=40, n_shapes=3, seed=2, return_all=True)
    r = shape_radius(32)
    assert a["centres"].min() >= r - 1e-4 and a["centres"].max() <= 32 - r + 1e-4
    assert np.array_equal(a["positions"], a["centres"][:, :, 0])
    for k in range(3):  # every shape visible in every frame: no tunnelling out, no swallowing
        assert np.all(np.any(np.all(a["frames"] == SHAPE_COLORS[k], axis=-1), axis=(2, 3)))
    b = generate_shapes(32, episodes=6, length=40, n_shapes=3, seed=2)
    assert np.array_equal(a["frames"], b["frames"]) and np.array_equal(a["actions"], b["actions"])
    assert not np.array_equal(a["frames"], generate_shapes(32, episodes=6, length=40, seed=3)["frames"])


def test_dataset_splits_generation_and_refusal(tmp_path, capsys):
    node = {
        "name": "video",
        "task": "shapes",
        "resolution": 16,
        "episodes": 10,
        "length": 12,
        "seed": 0,
        "eval_episodes": 3,
        "path": str(tmp_path / "s.h5"),
    }
    train = load_dataset(node, "train")
    assert "not found; generating" in capsys.readouterr().out
    assert len(train.observations) == 7 and train.observations[0].shape == (12, 16, 16, 3)
    assert train.observations[0].dtype == np.uint8 and train.positions[0].shape == (12, 2)
    assert train.meta["task"] == "shapes" and train.meta["settings"]["episodes"] == 10
    ev = load_dataset(node, "eval", length=8, count=2)
    assert len(ev.observations) == 2 and ev.observations[0].shape == (8, 16, 16, 3) and ev.actions[0].shape == (8, 2)
    assert len(load_dataset(node, "eval", length=8).observations) == 3
    longer = load_dataset(node, "eval", length=20, count=2)  # a generated file: its episodes continue
    assert "generating them again to 20 frames" in capsys.readouterr().out
    assert longer.observations[0].shape == (20, 16, 16, 3)
    for short, long in ((ev.observations, longer.observations), (ev.actions, longer.actions)):
        assert all(np.array_equal(a, b[:8]) for a, b in zip(short, long, strict=True))
    with pytest.raises(DataError, match=r"other settings: episodes=10 \(dataset.episodes=11\), seed=0"):
        load_dataset({**node, "episodes": 11, "seed": 4}, "train")
    frames, actions, _ = _arrays(e=5)  # a user file without settings is read as it is
    write_video_file(tmp_path / "user.h5", frames, actions, task="robot")
    user = load_dataset({"name": "video", "path": str(tmp_path / "user.h5"), "eval_episodes": 1}, "train")
    assert len(user.observations) == 4 and user.positions is None and user.meta["task"] == "robot"
    with pytest.raises(DataError, match="episodes of 99 frames"):  # a user's recording cannot be continued
        load_dataset({"name": "video", "path": str(tmp_path / "user.h5"), "eval_episodes": 1}, "eval", length=99)


def test_held_out_maze_episodes_continue_the_stored_ones(tmp_path):
    node = {"name": "video", "task": "maze-pixels", "episodes": 5, "length": 10, "eval_episodes": 2,
            "path": str(tmp_path / "m.h5")}  # fmt: skip
    stored = load_dataset(node, "eval")
    longer = load_dataset(node, "eval", length=30)
    assert longer.observations[1].shape == (30, 32, 32, 3)
    for name in ("observations", "actions", "positions"):
        pairs = zip(getattr(stored, name), getattr(longer, name), strict=True)
        assert all(np.array_equal(a, b[:10]) for a, b in pairs), name


def test_generate_video_file_maze(tmp_path):
    s = generate_video_file(tmp_path / "m.h5", video_settings({"episodes": 2, "length": 8}), progress=False)
    v = read_video_file(tmp_path / "m.h5")
    assert v.frames.shape == (2, 8, 32, 32, 3) and v.task == "maze-pixels" and v.fps == 25
    assert v.settings["maze"] == "umaze" and s["frames"] == 16


def test_cli(tmp_path, capsys):
    out = tmp_path / "c.h5"
    assert (
        main(
            [
                "data",
                "video",
                "--task",
                "shapes",
                "--episodes",
                "2",
                "--length",
                "6",
                "--resolution",
                "16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "2 shapes episodes x 6 frames x 16x16" in capsys.readouterr().out
    assert read_video_file(out).frames.shape == (2, 6, 16, 16, 3)
    assert main(["data", "video", "--task", "cubes", "--out", str(out)]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["data", "video", "--task", "shapes", "--resolution", "8", "--out", str(out)]) == 2


def test_held_out_episodes_of_a_missing_file_are_made_in_memory(tmp_path, capsys):
    node = {"name": "video", "task": "shapes", "resolution": 16, "episodes": 6, "length": 10, "eval_episodes": 2,
            "path": str(tmp_path / "s.h5")}  # fmt: skip
    ev = load_dataset(node, "eval", length=14)
    assert "generating its 2 held-out shapes episodes" in capsys.readouterr().out
    assert not (tmp_path / "s.h5").exists() and ev.observations[0].shape == (14, 16, 16, 3)
    load_dataset(node, "train")  # now the file is written; its held-out episodes are the same
    stored = load_dataset(node, "eval")
    assert all(np.array_equal(a, b[:10]) for a, b in zip(stored.observations, ev.observations, strict=True))
    with pytest.raises(DataError, match="eval_episodes=6 leaves none to train on"):
        load_dataset({**node, "eval_episodes": 6}, "eval")
