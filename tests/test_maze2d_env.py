"""maze2d envs (D4RL protocol on PointMaze), the waypoint expert, normalized scores."""

import os
import warnings

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import worldsim_envs
from worldsim.errors import ConfigError
from worldsim_envs import MAZES, REF_SCORES, empty_cells, env_id, goal_cell, maze_map, normalized_score
from worldsim_envs.expert import WaypointExpert, shortest_path
from worldsim_envs.maze2d import Maze2dEnv, rowcol_to_xy, vec_from_xy, vec_to_xy, xy_to_rowcol


@pytest.mark.parametrize("eid", [*MAZES.values(), "worldsim/Maze2d-Medium-MultiGoal-v1"])
def test_check_env_passes(eid):
    env = gym.make(eid)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*infinity.*")  # positions and velocities are unbounded
        check_env(env.unwrapped)
    env.close()


def test_ids_limits_and_goals():
    assert MAZES == {
        "umaze": "worldsim/Maze2d-UMaze-v1",
        "medium": "worldsim/Maze2d-Medium-v1",
        "large": "worldsim/Maze2d-Large-v1",
    }
    for name, steps, goal in (("umaze", 300, (1, 1)), ("medium", 600, (6, 6)), ("large", 800, (7, 9))):
        assert gym.spec(env_id(name)).max_episode_steps == steps
        assert gym.spec(env_id(name, multi_goal=True)).max_episode_steps == steps
        assert goal_cell(name) == goal and maze_map(name)[goal] == 0
    assert maze_map("umaze").tolist() == [
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 0, 1],
        [1, 0, 0, 0, 1],
        [1, 1, 1, 1, 1],
    ]
    with pytest.raises(ConfigError, match="unknown maze 'foo'; expected one of large, medium, umaze"):
        maze_map("foo")


def test_frame_round_trip_and_orientation():
    shape = maze_map("large").shape  # 9 rows, 12 cols
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 8, (100, 2))
    np.testing.assert_allclose(xy_to_rowcol(rowcol_to_xy(p, shape), shape), p, atol=1e-12)
    v = rng.normal(size=(100, 2))
    np.testing.assert_array_equal(vec_from_xy(vec_to_xy(v)), v)
    # gymnasium-robotics' own cell centres, and its y axis pointing against the rows
    env = Maze2dEnv("large")
    for cell in [(1, 1), (7, 9), (3, 4)]:
        np.testing.assert_allclose(rowcol_to_xy(cell, shape), env._point_maze.maze.cell_rowcol_to_xy(np.array(cell)))
    np.testing.assert_allclose(vec_to_xy([1.0, 0.0]), [0.0, -1.0])  # down the rows = -y


def test_dynamics_are_pointmaze_bit_for_bit():
    from gymnasium_robotics.envs.maze.point_maze import PointMazeEnv

    env = Maze2dEnv("umaze")
    env.reset(seed=3)
    ref_maze = PointMazeEnv(maze_map=env.walls.tolist())
    os.remove(ref_maze.tmp_xml_file_path)  # loaded already; PointMazeEnv leaves it behind
    ref = ref_maze.point_env
    mujoco.mj_resetData(ref.model, ref.data)
    ref.set_state(env._data.qpos.copy(), env._data.qvel.copy())
    rng = np.random.default_rng(0)
    for a in rng.uniform(-1.5, 1.5, (600, 2)) + [0.6, 0.0]:  # pushes into walls too
        obs = env.step(a)[0]
        ref.step(vec_to_xy(a))  # the same force in PointMaze's frame
        np.testing.assert_array_equal(env._data.qpos, ref.data.qpos)
        np.testing.assert_array_equal(env._data.qvel, ref.data.qvel)
    np.testing.assert_allclose(obs, np.r_[xy_to_rowcol(ref.data.qpos, env.walls.shape), vec_from_xy(ref.data.qvel)])


def test_reset_is_near_an_empty_cell_centre_and_seeded():
    env = gym.make("worldsim/Maze2d-Medium-v1")
    cells = np.array(empty_cells("medium"))
    seen = set()
    for seed in range(40):
        obs, info = env.reset(seed=seed)
        offset = np.abs(cells - obs[:2]).max(axis=1)
        assert offset.min() <= 0.1
        seen.add(tuple(cells[offset.argmin()]))
        np.testing.assert_array_equal(info["goal"], [6, 6])
        assert obs.shape == (4,) and obs.dtype == np.float64
    assert len(seen) > 10  # uniform over empty cells
    np.testing.assert_array_equal(env.reset(seed=7)[0], env.reset(seed=7)[0])
    obs, _ = env.reset(seed=1, options={"start_cell": (1, 1)})
    assert np.abs(obs[:2] - 1).max() <= 0.1
    with pytest.raises(ConfigError, match="start_cell"):
        env.reset(options={"start_cell": (0, 0)})


def test_sparse_reward_only_within_half_a_cell_no_termination_time_limit():
    env = gym.make("worldsim/Maze2d-UMaze-v1")
    env.reset(seed=0, options={"start_cell": (1, 3)})
    raw = env.unwrapped
    for pos, inside in [((1.0, 1.45), True), ((1.3, 1.3), True), ((1.0, 1.55), False), ((1.4, 1.4), False)]:
        raw.set_state(pos)
        obs, reward, terminated, truncated, info = env.step(np.zeros(2))
        dist = np.linalg.norm(obs[:2] - [1, 1])
        assert (reward == 1.0) == (dist <= 0.5) == info["success"] == inside
        assert not terminated and not truncated
    env.reset(seed=0, options={"start_cell": (1, 1)})
    steps, total = 0, 0.0
    while True:
        obs, reward, terminated, truncated, _ = env.step(np.zeros(2))
        steps, total = steps + 1, total + reward
        assert not terminated
        if truncated:
            break
    assert steps == 300 and total == 300.0  # sits on the goal the whole episode
    dense = gym.make("worldsim/Maze2d-UMaze-v1", reward_type="dense")
    dense.reset(seed=0)
    obs, reward, *_ = dense.step(np.zeros(2))
    assert reward == pytest.approx(np.exp(-np.linalg.norm(obs[:2] - [1, 1])))


def test_multi_goal_draws_a_goal_cell_other_than_the_start():
    env = gym.make("worldsim/Maze2d-UMaze-MultiGoal-v1")
    goals = set()
    for seed in range(30):
        obs, info = env.reset(seed=seed)
        goal = tuple(info["goal"].astype(int))
        np.testing.assert_array_equal(env.unwrapped.goal, info["goal"])
        assert goal in empty_cells("umaze") and np.abs(obs[:2] - goal).max() > 0.5
        goals.add(goal)
    assert len(goals) >= 5


def test_expert_reaches_any_target_from_every_start_cell():
    env = Maze2dEnv("umaze")
    cells = empty_cells("umaze")
    for start in cells:
        for target in (c for c in cells if c != start):
            env.reset(seed=0, options={"start_cell": start})
            expert = WaypointExpert("umaze", seed=1)
            state = env.state()
            expert.set_target(state[0], state[1], target)
            for _ in range(200):
                state = env.advance(*expert.act(*state))
                if expert.targets_reached:
                    break
            assert expert.targets_reached == 1, (start, target)
            assert np.hypot(state[0] - target[0], state[1] - target[1]) <= 0.25


def test_shortest_path_and_noisy_expert_stay_in_bounds():
    walls = maze_map("umaze")
    assert shortest_path(walls, (3, 1), (1, 1)) == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    env = Maze2dEnv("medium")
    env.reset(seed=0)
    expert = WaypointExpert("medium", seed=0, action_noise=0.5, pause_prob=0.5)
    state = env.state()
    for _ in range(3000):
        a = expert.act(*state)
        assert -1 <= a[0] <= 1 and -1 <= a[1] <= 1
        state = env.advance(*a)
    assert expert.targets_reached >= 5
    with pytest.raises(ConfigError, match="pause_prob"):
        WaypointExpert("umaze", pause_prob=2.0)


def test_normalized_score():
    for name, (lo, hi) in REF_SCORES.items():
        assert normalized_score(name, lo) == pytest.approx(0.0)
        assert normalized_score(env_id(name), hi) == pytest.approx(100.0)
        assert normalized_score(env_id(name, multi_goal=True), hi) == pytest.approx(100.0)
    np.testing.assert_allclose(normalized_score("worldsim/Maze2d-UMaze-v1", [23.85, 161.86]), [0.0, 100.0])
    with pytest.raises(ConfigError, match="unknown env 'maze2d-umaze-v9'; expected a worldsim maze2d id"):
        normalized_score("maze2d-umaze-v9", 10.0)


def test_draw_maze_and_render():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    worldsim_envs.draw_maze(ax, "medium")
    assert ax.get_ylim() == (7.5, -0.5) and len(ax.patches) == int(maze_map("medium").sum())
    plt.close(fig)
    env = gym.make("worldsim/Maze2d-UMaze-v1", render_mode="rgb_array")
    env.reset(seed=0, options={"start_cell": (3, 1)})
    frame = env.render()
    assert frame.shape == (160, 160, 3) and frame.dtype == np.uint8
    assert (frame[3 * 32 + 16, 1 * 32 + 16] == (40, 90, 220)).all()  # the agent, at row 3, col 1
