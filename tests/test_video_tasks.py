"""Video tasks come in through the ``worldsim_add_video_tasks`` hook: maze-pixels and shapes pass the kit and measure
what they draw, and a third-party video task built on the public API alone makes data (``worldsim data video --task
NAME``), trains and is measured in rollouts, as ``docs/plugins-data.md`` shows."""

from __future__ import annotations

import json

import numpy as np
import pytest

import worldsim
from worldsim.cli import main
from worldsim.errors import ConfigError
from worldsim.testing import check_video_task
from worldsim.video import find_agents
from worldsim.video.data import read_video_file
from worldsim.video.rollout import per_frame_metrics
from worldsim_plugins.maze_pixels import MazePixels
from worldsim_plugins.shapes import Shapes


@pytest.mark.parametrize("task", [MazePixels(16, "umaze", 4, 0.5), MazePixels(32, "medium", 2, 0.0), Shapes(32, 3),
                                  Shapes(16, 1)])  # fmt: skip
def test_first_party_video_tasks_pass_the_kit(task):
    check_video_task(task)


def test_the_kit_names_what_a_broken_video_task_breaks():
    class Blind(Shapes):
        def find(self, frames):
            out = super().find(frames)
            return {**out, "found": np.zeros_like(out["found"])}

    with pytest.raises(AssertionError, match="find: the object is not found in 18 of its own 18 frames"):
        check_video_task(Blind(16, 2))


def test_maze_pixels_finds_the_agent_of_the_renderer():
    from worldsim_envs.render import render_topdown

    walls = np.zeros((4, 4), dtype=np.int64)
    walls[0, :] = 1
    img = render_topdown(walls, pos=(2.0, 1.0), goal=(1.0, 3.0), cell_px=16)
    out = MazePixels(32, "umaze", 4, 0.5).find(img[None])
    assert out["found"][0]
    np.testing.assert_allclose(out["centroid_px"][0], [(2.0 + 0.5) * 16, (1.0 + 0.5) * 16], atol=0.5)


def test_maze_pixels_tracked_means_found_within_half_a_cell():
    from worldsim_envs.video import maze_background, render_maze_frames

    true_pos = np.array([[[1.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 3.0]]])  # (1 episode, 4 frames) in cells
    shown = true_pos.copy()
    shown[0, 1] = [1.0, 2.3]  # 0.3 cells off: tracked
    shown[0, 2] = [3.0, 3.0]  # 1 cell off: found, not tracked
    generated = render_maze_frames(shown[0], "umaze", 32)[None]
    truth = render_maze_frames(true_pos[0], "umaze", 32)[None]
    generated[0, 3] = maze_background("umaze", 32)  # no agent at all
    m = per_frame_metrics(generated, truth, true_pos.astype(np.float32), MazePixels(32, "umaze", 4, 0.5))
    assert m["found"].tolist() == [[True, True, True, False]]
    assert m["agent_tracked"].tolist() == [[True, True, False, False]]
    np.testing.assert_allclose(m["position_error"][0, :3], [0.0, 0.3, 1.0], atol=0.1)
    assert m["agent_found_tol60"].shape == (1, 4)  # the stricter colour rule, reported beside


def test_shapes_tracked_means_shape_0_found_within_half_its_radius():
    from worldsim_envs.video import SHAPE_BACKGROUND, render_shapes

    centres = np.array([[[8.0, 8.0], [20.0, 20.0], [8.0, 24.0]]] * 4)  # 4 frames of 3 shapes (row, col) in pixels
    shown = centres.copy()
    shown[1, 0] = [9.5, 8.0]  # 1.5 px off: tracked (radius 4 px at 32x32)
    shown[2, 0] = [14.0, 8.0]  # 6 px off: found, not tracked
    generated = render_shapes(shown, 32)[None]
    generated[0, 3] = SHAPE_BACKGROUND  # an empty frame
    m = per_frame_metrics(generated, render_shapes(centres, 32)[None], centres[None, :, 0].astype(np.float32),
                          Shapes(32, 3))  # fmt: skip
    assert m["found"].tolist() == [[True, True, True, False]]
    assert m["agent_tracked"].tolist() == [[True, True, False, False]]
    np.testing.assert_allclose(m["position_error"][0, :3], [0.0, 1.5, 6.0], atol=0.3)


# -- a third party's video task --------------------------------------------------------------------------------------

BLACK, WHITE = (0, 0, 0), (255, 255, 255)


class Dot:
    """``dot``: a white dot on black, moved by the actions (``speed`` pixels per frame at action 1) and stopped by the
    borders; ``positions`` are its centre in pixels. (The example of docs/plugins-data.md.)"""

    position_unit = "pixels"
    fps = 10
    tracked_within = 1.0
    cli_help = {"speed": "dot: pixels per frame at action 1"}

    def __init__(self, resolution, speed=1.5):
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0:
            raise ConfigError(f"dataset.speed: got {speed!r}; expected a number > 0")
        self.resolution, self.settings = resolution, {"speed": float(speed)}

    def generate(self, episodes, length, seed, only=None, progress=True):
        r, keep = self.resolution, range(episodes) if only is None else only
        frames = np.zeros((len(keep), length, r, r, 3), np.uint8)
        actions = np.zeros((len(keep), length, 2), np.float32)
        positions = np.zeros((len(keep), length, 2), np.float32)
        centres = np.arange(r) + 0.5
        for i, e in enumerate(keep):
            rng = np.random.default_rng([seed, e])  # each episode its own seeds: `only` and longer lengths agree
            p = rng.uniform(3, r - 3, 2)
            for t in range(length):
                if t:
                    actions[i, t] = rng.uniform(-1, 1, 2)
                    p = np.clip(p + self.settings["speed"] * actions[i, t], 2, r - 2)
                positions[i, t] = p
                inside = (centres[:, None] - p[0]) ** 2 + (centres[None, :] - p[1]) ** 2 <= 1.5**2
                frames[i, t][inside] = WHITE
        return {"frames": frames, "actions": actions, "positions": positions}

    def find(self, frames):
        return find_agents(frames, WHITE, palette=(BLACK, WHITE), max_spread_px=5)

    def to_position(self, centroid_px):
        return np.asarray(centroid_px, dtype=np.float64)


class DotPlugin:
    @worldsim.hookimpl
    def worldsim_add_video_tasks(self):
        return {"dot": Dot}


TINY_VIDEO = ["experiment=video_maze_pixels", "dataset.task=dot", "dataset.resolution=16", "dataset.episodes=6",
              "dataset.length=24", "dataset.eval_episodes=2", "data.seq_len=4", "backbone.hidden=8",
              "backbone.embed=16", "backbone.channels=8", "trainer.steps=2", "trainer.batch_size=2",
              "trainer.warmup_steps=1", "trainer.ckpt_every=2"]  # fmt: skip


def test_a_third_party_video_task_makes_data_trains_and_is_measured(tmp_path, capsys):
    from worldsim.plugins import get_plugin_manager

    check_video_task(Dot(16))
    pm, plugin = get_plugin_manager(), DotPlugin()
    pm.register(plugin, name="test-dot-video-task")
    try:
        data, run, out = tmp_path / "dot.h5", tmp_path / "run", tmp_path / "roll"
        args = ["--task", "dot", "--speed", "2", "--resolution", "16", "--episodes", "6", "--length", "24"]
        assert main(["data", "video", *args, "--out", str(data)]) == 0
        assert f"wrote {data}: 6 dot episodes x 24 frames x 16x16" in capsys.readouterr().out
        video = read_video_file(data)
        assert video.task == "dot" and video.settings["speed"] == 2.0 and video.fps == 10
        assert main(["data", "video", "--task", "dot", "--speed", "-1", "--out", str(tmp_path / "x.h5")]) == 2
        assert capsys.readouterr().err.strip() == "worldsim: error: --speed: got -1; expected a number > 0"
        # the task's own setting is not in configs/dataset/video.yaml: +dataset.speed adds it (else the default,
        # 1.5, which the file's recorded 2.0 refuses)
        assert main(["train", *TINY_VIDEO, f"dataset.path={data}", f"run.dir={run}"]) == 2
        assert "generated with other settings: speed=2.0 (dataset.speed=1.5)" in capsys.readouterr().err
        assert main(["train", *TINY_VIDEO, "+dataset.speed=2", f"dataset.path={data}", f"run.dir={run}"]) == 0
        assert main(["rollout", str(run), "--frames", "8", "--context", "2", "--episodes", "2", "sampling.steps=2",
                     "--out", str(out)]) == 0  # fmt: skip
        report = json.loads((out / "rollout.json").read_text())
        assert report["task"] == "dot" and report["position_unit"] == "pixels" and report["truth_agent_found"] == 1.0
        assert {"agent_found", "position_error", "agent_tracked"} <= set(report["horizons"][0])
        assert set(report["baselines"]) == {"frozen", "random"}
    finally:
        pm.unregister(plugin)
