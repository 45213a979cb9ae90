"""Tasks: the planner knows an environment only through its task (the ``worldsim_add_tasks`` hook). maze2d passes the
conformance kit on D4RL's mazes and on a custom text map, which works end to end from the CLI (data, training,
planning, plot, a score against computed reference returns); a third-party task built on the public API alone
plans too."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_MAZE

import worldsim
from worldsim.cli import main
from worldsim.errors import ConfigError
from worldsim.testing import check_task

#: a 4 x 6 open room with a pillar, goal in the top right (D4RL's notation, rows split by backslashes)
ROOM = "######\\#OOOG#\\#O#OO#\\#OOOO#\\######"


def _maze_task(maze: str, multi_goal: bool = False):
    from worldsim_plugins.maze2d import build_maze2d

    return build_maze2d({"name": "maze2d", "maze": maze}, multi_goal=multi_goal)


@pytest.mark.parametrize("maze, multi_goal", [("umaze", False), ("medium", True), (ROOM, False), (ROOM, True)])
def test_maze2d_tasks_pass_the_conformance_kit(maze, multi_goal):
    check_task(_maze_task(maze, multi_goal))


def test_the_kit_names_what_a_broken_task_breaks():
    task = _maze_task("umaze")

    class Shifted:  # the position outside the observation
        def __getattr__(self, name):
            return getattr(task, name)

        step_layout = {**task.step_layout, "position": slice(5, 7)}

    with pytest.raises(AssertionError, match="step_layout"):
        check_task(Shifted())

    class Lenient:  # accepts any env id
        def __getattr__(self, name):
            return getattr(task, name)

        def make_env(self, env_id=None):
            return gym.make(task.env_id)

    with pytest.raises(AssertionError, match="make_env"):
        check_task(Lenient())


def test_a_text_map_is_a_maze():
    import worldsim_envs as envs

    assert envs.check_maze("#####\\#GOO#\\###O#\\#OOO#\\#####") == "umaze"  # D4RL's umaze, written out
    assert envs.check_maze("#####\n#GOO#\n###O#\n#OOO#\n#####") == "umaze"  # line breaks work too
    maze = envs.check_maze(ROOM)
    assert envs.is_custom(maze) and envs.maze_slug(maze).startswith("custom-")
    assert envs.goal_cell(maze) == (1, 4) and envs.maze_map(maze).shape == (5, 6)
    assert envs.max_episode_steps(maze) == 300  # 50 steps per cell of the farthest cell (5), at least 300
    spec = gym.spec(envs.env_id(maze))
    assert spec.max_episode_steps == 300 and envs.maze_of_env(spec.id) == (maze, False)
    for bad, message in [
        ("#####\\#OOO#\\#####", "exactly one goal cell"),
        ("#####\\#GOX#\\#####", "unknown map symbol(s) 'X'"),
        ("#G###\\#OOO#\\#####", "border must be walls"),
        ("#####\\#GO##\\###O#\\#####", "cannot reach the goal"),
        ("####\\#G#\\####", "rows of equal length"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            envs.check_maze(bad)


def test_reference_returns_of_a_custom_map_are_computed_random_below_expert():
    import worldsim_envs as envs

    assert envs.reference_returns("umaze") == (23.85, 161.86)  # D4RL's constants for its mazes
    random, expert = envs.reference_returns(ROOM)
    assert 0 <= random < expert <= envs.max_episode_steps(ROOM)
    assert envs.reference_returns(ROOM) == (random, expert)  # seeded: the same every time
    assert envs.normalized_score(envs.env_id(ROOM), expert) == pytest.approx(100.0)


def test_a_bad_map_is_refused_in_one_line(tmp_path, capsys):
    assert main(["data", "maze2d", "--maze", "#####\\#OOO#\\#####", "--steps", "10", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--maze: a text map needs exactly one goal cell 'G', got 0" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
    # an unquoted map is not a Hydra value: the error says how to write it
    assert main(["train", "experiment=maze2d_umaze", f"dataset.maze={ROOM}", f"run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"quote a value with '#' or '\\' in it: dataset.maze='{ROOM}'" in err and len(err.splitlines()) == 1


def test_a_custom_map_works_end_to_end(tmp_path, capsys):
    """data -> training -> planning -> plot and a normalized score against the map's computed references."""
    data, run, out = tmp_path / "room.hdf5", tmp_path / "run", tmp_path / "plans"
    assert (
        main(
            [
                "data",
                "maze2d",
                "--maze",
                ROOM,
                "--steps",
                "3000",
                "--noisy",
                "--pause-prob",
                "0.5",
                "--pause-steps",
                "10",
                "300",
                "--out",
                str(data),
            ]
        )
        == 0
    )  # the settings maze2d_umaze trains on
    assert main(["train", "experiment=maze2d_umaze", f"dataset.maze='{ROOM}'", f"dataset.path={data}",
                 "dataset.steps=3000", f"run.dir={run}", "trainer.steps=2", *TINY_MAZE]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["plan", str(run), "--episodes", "2", "--out", str(out), "sampling.steps=2",
                 "planning.open_loop=100"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    report = json.loads((out / "plan.json").read_text())
    assert report["env"].startswith("worldsim/Maze2d-Custom-") and report["env"] in text
    assert report["task"].startswith("maze2d-custom-")
    refs = report["reference_returns"]
    assert refs["expert"] > refs["random"]
    lo, hi = refs["random"], refs["expert"]
    np.testing.assert_allclose(report["scores"], 100 * (np.array(report["returns"]) - lo) / (hi - lo))
    assert (out / "plans.png").stat().st_size > 0


# -- a third-party task on the public API alone ----------------------------------------------------------------------


class PointEnv(gym.Env):
    """A point mass in the open square [0, 1]^2 (no walls): obs (x, y, vx, vy), action a force in [-1, 1]^2, the
    goal (0.8, 0.8), reward 1 within 0.1 of it."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.goal = np.array([0.8, 0.8])

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.s = np.concatenate([self.np_random.uniform(0.1, 0.4, 2), np.zeros(2)])
        return self.s.copy(), self._info()

    def step(self, action):
        v = 0.9 * self.s[2:] + 0.05 * np.clip(np.asarray(action, dtype=np.float64), -1, 1)
        self.s = np.concatenate([np.clip(self.s[:2] + v, 0, 1), v])
        near = bool(np.linalg.norm(self.s[:2] - self.goal) < 0.1)
        return self.s.copy(), float(near), False, False, self._info()

    def _info(self):
        return {"goal": self.goal.copy(), "success": bool(np.linalg.norm(self.s[:2] - self.goal) < 0.1)}


class PointTask:
    name, env_id = "point", "worldsim-test/Point-v0"
    step_layout = {"action": slice(0, 2), "observation": slice(2, 6), "position": slice(2, 4), "velocity": slice(4, 6)}

    def make_env(self, env_id=None):
        if env_id not in (None, self.env_id):
            raise ConfigError(f"--env: the point task plans in {self.env_id}, not {env_id}")
        if self.env_id not in gym.registry:
            gym.register(self.env_id, entry_point=PointEnv, max_episode_steps=40)
        return gym.make(self.env_id)

    def observe(self, obs):
        return np.asarray(obs)

    def goal(self, info):
        return np.asarray(info["goal"])

    def success(self, info):
        return np.asarray(info["success"], dtype=bool)

    def guidance_context(self):
        return {}

    def reference_returns(self, env_id=None):
        return None  # no references: the planner reports returns

    def draw(self, ax, env_id=None):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)

    def plot_xy(self, p):
        return np.asarray(p)


class PointPlugin:
    @worldsim.hookimpl
    def worldsim_add_tasks(self):
        return {"point": lambda dataset: PointTask()}


def test_a_third_party_task_passes_the_kit_and_plans(tmp_path, capsys):
    from worldsim.plugins import get_plugin_manager

    check_task(PointTask())
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(16):  # (a_t, o_{t+1}) steps of a noisy P controller toward the goal
        env, steps = PointEnv(), []
        obs, _ = env.reset(seed=int(rng.integers(1 << 30)))
        for _ in range(40):
            a = np.clip(5 * (env.goal - obs[:2]) - 2 * obs[2:] + rng.normal(0, 0.3, 2), -1, 1)
            obs, *_ = env.step(a)
            steps.append([*a, *obs])
        episodes.append(steps)
    data = tmp_path / "point.npz"
    np.savez(data, observations=np.asarray(episodes, dtype=np.float32))
    run = tmp_path / "run"
    assert main(["train", "dataset=npz", f"dataset.path={data}", "data.seq_len=8", f"run.dir={run}",
                 "trainer.steps=2", "guidance=goal", *TINY_MAZE]) == 0  # fmt: skip
    pm = get_plugin_manager()
    plugin = PointPlugin()
    pm.register(plugin, name="test-point-task")
    try:
        capsys.readouterr()
        out = tmp_path / "plans"
        assert main(["plan", str(run), "--episodes", "2", "--out", str(out), "task=point", "sampling.steps=2",
                     "planning.open_loop=20"]) == 0  # fmt: skip
        assert "return" in capsys.readouterr().out  # no reference returns: the table shows returns
        report = json.loads((out / "plan.json").read_text())
        assert report["task"] == "point" and report["env"] == PointTask.env_id and report["scores"] is None
        assert report["goals"] == [[0.8, 0.8], [0.8, 0.8]] and report["replans"] == 2
        assert main(["plan", str(run), "--episodes", "1", "task=point", "--env", "worldsim/Maze2d-UMaze-v1"]) == 2
        assert "the point task plans in" in capsys.readouterr().err
    finally:
        pm.unregister(plugin)


# -- reacher: a second domain with other dynamics -----------------------------------------------------------------------


def test_reacher_task_passes_the_kit_and_its_expert_reaches_every_target():
    from worldsim_envs import reacher
    from worldsim_plugins.reacher import ReacherTask

    check_task(ReacherTask())
    env = gym.make(reacher.REACHER_ID)
    for seed in range(5):
        obs, info = env.reset(seed=seed)
        expert, reached = reacher.ReacherExpert(), False
        for _ in range(reacher.EPISODE_STEPS):
            obs, _, _, _, info = env.step(expert.act(obs))
            reached |= info["success"]
        assert reached and info["success"], (
            f"seed {seed}: the expert ends {np.hypot(obs[8], obs[9]):.3f} from the target"
        )
    step = reacher.observe(obs)  # the fingertip is the target plus the observed difference
    np.testing.assert_allclose(step[:2], info["goal"] + obs[8:10])
    np.testing.assert_allclose(step[2:6], [obs[0], obs[2], obs[1], obs[3]])


def test_reacher_data_is_seeded_step_vectors_of_the_tasks_layout(tmp_path, capsys):
    from worldsim_envs.reacher import generate_reacher

    a, b = generate_reacher(3, seed=1, progress=False), generate_reacher(3, seed=1, progress=False)
    assert a.shape == (3, 50, 10) and np.array_equal(a, b) and not np.array_equal(a, generate_reacher(3, 2, False))
    assert np.abs(a[..., :2]).max() <= 1.0  # torques within the action space
    out = tmp_path / "r.npz"
    assert main(["data", "task", "reacher", "--episodes", "3", "--seed", "1", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out)["observations"], a)
    for args, message in [(["maze2d"], "its data set is maze2d (worldsim data maze2d)"),
                          (["reachr"], "did you mean 'reacher'"), (["reacher", "task.arm=3"], "no such key")]:  # fmt: skip
        capsys.readouterr()
        assert main(["data", "task", *args, "--episodes", "3", "--out", str(tmp_path / "x.npz")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.npz").exists()


def test_reacher_trains_and_plans_from_the_cli(tmp_path, capsys):
    data, run, out = tmp_path / "r.npz", tmp_path / "run", tmp_path / "plans"
    assert main(["data", "task", "reacher", "--episodes", "8", "--out", str(data)]) == 0
    assert main(["train", "experiment=reacher_cpu", f"dataset.path={data}", f"run.dir={run}", "trainer.steps=2",
                 *TINY_MAZE]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["plan", str(run), "--episodes", "2", "--out", str(out), "sampling.steps=2",
                 "planning.open_loop=25"]) == 0  # fmt: skip
    report = json.loads((out / "plan.json").read_text())
    assert report["env"] == "worldsim/Reacher-v5" and report["task"] == "reacher" and report["replans"] == 2
    refs = report["reference_returns"]
    assert refs["random"] < refs["expert"] < 0  # returns are -distance - |a|^2
    assert (out / "plans.png").stat().st_size > 0
    assert main(["plan", str(run), "--episodes", "1", "planning.controller=pd"]) == 2
    assert "pd damps the velocity; task reacher has none" in capsys.readouterr().err


# -- D4RL's original maze2d envs (optional: `make d4rl`) ----------------------------------------------------------------


def test_d4rl_envs_without_their_environment_are_refused_in_one_line(maze_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLDSIM_D4RL_PYTHON", str(tmp_path / "no-python"))
    assert main(["plan", str(maze_run), "--episodes", "1", "--env", "d4rl:maze2d-umaze-v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "build it with `make d4rl`" in err and len(err.splitlines()) == 1
    assert main(["plan", str(maze_run), "--episodes", "1", "--env", "d4rl:maze2d-large-v1"]) == 2
    assert "was trained on the maze2d-umaze maze, not large" in capsys.readouterr().err


def _d4rl_or_skip():
    from worldsim_envs import d4rl

    if not d4rl.available():
        pytest.skip("D4RL's environment is not built (make d4rl)")
    return d4rl


def test_d4rl_umaze_in_worldsims_frame():
    """D4RL's particle is 0.2 off the cell centres; reported in worldsim's frame a cell centre is (i, j), the goal is
    the goal cell's centre, a free particle keeps still, and the task's kit passes on the D4RL env."""
    d4rl = _d4rl_or_skip()
    from worldsim_plugins.maze2d import Maze2dTask

    check_task(Maze2dTask("umaze"), env_id="d4rl:maze2d-umaze-v1")
    env = gym.make(d4rl.check_env("d4rl:maze2d-umaze-v1"))
    obs, info = env.reset(seed=0)
    np.testing.assert_allclose(info["goal"], [1.2, 1.2])  # D4RL's target (1, 1) is its particle's frame
    assert env.spec.max_episode_steps == 300
    obs = env.unwrapped.set_state((3.0, 1.0), (0.0, 0.0))
    for _ in range(5):
        obs, reward, terminated, truncated, info = env.step(np.zeros(2))
    np.testing.assert_allclose(obs[:2], [3.0, 1.0], atol=1e-6)
    assert reward == 0.0 and not terminated and not info["success"]
    env.close()


def test_a_run_saved_before_tasks_gets_the_task_of_its_data_set():
    """Shipped files and old runs have no ``task`` section and may have ``planning.multi_goal``: a maze2d run gets
    the maze2d task with that setting; a run of other data gets none."""
    from omegaconf import OmegaConf

    from worldsim.config import base_config, from_plain, with_base_sections

    old = OmegaConf.to_container(base_config())
    old.pop("task", None)
    old["dataset"], old["planning"]["multi_goal"] = {"name": "maze2d", "maze": "umaze"}, True
    cfg = with_base_sections(from_plain(old))
    assert OmegaConf.to_container(cfg.task) == {"name": "maze2d", "multi_goal": True}
    assert "multi_goal" not in cfg.planning
    old["dataset"] = {"name": "oscillators"}
    assert with_base_sections(from_plain(old)).task is None
