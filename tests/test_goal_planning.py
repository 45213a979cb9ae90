"""Goal-conditioned, jumpy planning: strided data, hindsight relabelling with a hold at the goal, the upsampled plan
and the waypoint controller, the first-reach and time-at-goal report, and the seed-sweep protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_MAZE

from worldsim.cli import main
from worldsim.data.goals import GoalWindows, check_goal_dims, goal_condition
from worldsim.data.sequence import SequenceData, strided
from worldsim.errors import ConfigError
from worldsim.planning import Planner, run_episodes, upsample
from worldsim.settings import PlanSettings
from worldsim_plugins.maze2d import STEP_LAYOUT
from worldsim_plugins.state import build_state

ACTION, POSITION, VELOCITY = STEP_LAYOUT["action"], STEP_LAYOUT["position"], STEP_LAYOUT["velocity"]
JUMPY = ["data.stride=15", "data.goal_dims=[2,3]", "tokenizer.frame_stack=1", "data.seq_len=24",
         "diffusion.cond_dropout=0.1", "planning.controller=waypoint", "planning.open_loop=15"]  # fmt: skip


def _settings(**changes) -> PlanSettings:
    values = dict(episodes=4, batch=4, open_loop=15, horizon=None, context=1, controller="waypoint",
                  pd_gains=(10.0, 1.0), lookahead=None, guidance_scale=0.0, mc_samples=1, guidance_gradient="model", candidates=1,
                  warm_start=None, warm_schedule=None, seed=0, threads=None, plots=0)  # fmt: skip
    return PlanSettings(**{**values, **changes})


def test_strided_data_keeps_every_phase():
    obs = [np.arange(10, dtype=np.float32)[:, None], np.arange(2, dtype=np.float32)[:, None] + 100]
    acts = [o * 2 for o in obs]
    data = strided(SequenceData(obs, acts), 3)
    assert [ep[:, 0].tolist() for ep in data.observations] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8], [100], [101]]
    assert [ep[:, 0].tolist() for ep in data.actions] == [[0, 6, 12, 18], [2, 8, 14], [4, 10, 16], [200], [202]]
    assert strided(data, 1) is data


def _windows(seq_len=8, frame_stack=1):
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(40, 6)).astype(np.float32)
    tok = build_state((6,), frame_stack=frame_stack).fit(torch.from_numpy(steps))
    episode = tok.encode(torch.from_numpy(steps)[None])[0]
    return tok, GoalWindows([episode], seq_len, None, tokenizer=tok, goal_dims=(2, 3), obs_dim=6)


@pytest.mark.parametrize("frame_stack", [1, 2])
def test_relabelled_windows_end_at_rest_on_their_goal(frame_stack):
    """The goal is the position at a token of the window; every later token is the resting goal step, and the
    condition is that token and a 1 (the all-zero null condition stays apart)."""
    tok, windows = _windows(frame_stack=frame_stack)
    assert windows.cond_dim == tok.token_shape[0] + 1
    batch = windows.sample(16, torch.Generator().manual_seed(0))
    steps = tok.decode(batch.x)  # (B, T * f, 6)
    f = frame_stack
    assert batch.cond.shape == (16, 8, tok.token_shape[0] + 1) and (batch.cond[..., -1] == 1).all()
    assert batch.mask.all()
    holds = 0
    for b in range(16):
        goal = tok.decode(batch.cond[b : b + 1, :1, :-1])[0, -1]  # the resting goal step
        torch.testing.assert_close(goal[[0, 1, 4, 5]], torch.zeros(4), atol=1e-5, rtol=0)
        same = [torch.allclose(steps[b, t], goal, atol=1e-5) for t in range(steps.shape[1])]
        tau = next(t for t in range(steps.shape[1]) if all(same[t + 1 :]))  # the window holds after its goal
        assert tau % f == f - 1  # the goal is a token's last step
        torch.testing.assert_close(steps[b, tau, 2:4], goal[2:4], atol=1e-5, rtol=0)
        holds += steps.shape[1] - 1 - tau
    assert holds > 0


def test_goal_condition_is_the_encoded_resting_step():
    tok, _ = _windows()
    cond = goal_condition(tok, torch.tensor([[1.5, 2.5]]), (2, 3), 6)
    step = torch.tensor([[[0.0, 0.0, 1.5, 2.5, 0.0, 0.0]]])
    torch.testing.assert_close(cond, torch.cat([tok.encode(step)[0], torch.ones(1, 1)], dim=1))


@pytest.mark.parametrize("value", [[6], [2, 2], "2", [True], []])
def test_goal_dims_are_checked(value):
    with pytest.raises(ConfigError, match="data.goal_dims"):
        check_goal_dims(value, (6,))


def test_upsampled_plans_interpolate_between_sub_goals():
    now = np.zeros((1, 2))
    steps = np.array([[[3.0, 30.0], [6.0, 0.0]]])
    plan = upsample(now, steps, 3)
    np.testing.assert_allclose(plan[0, :, 0], [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(plan[0, :, 1], [10, 20, 30, 20, 10, 0])
    assert upsample(now, steps, 1) is steps


def test_the_waypoint_controller_steers_to_the_position_ahead():
    class Stub:
        settings = _settings(lookahead=2)
        action, position, velocity, frames, stride = ACTION, POSITION, VELOCITY, 1, 15

    plan = np.zeros((1, 4, 6))
    plan[0, :, POSITION] = [[1.0, 1.0], [1.02, 1.0], [1.05, 1.1], [2.0, 2.0]]
    step = np.array([[0.0, 0.0, 1.0, 1.0, 0.5, 0.0]])
    np.testing.assert_allclose(Planner.act(Stub, plan, 0, step), [[10 * 0.02 - 0.5, 0.0]], atol=1e-12)
    np.testing.assert_allclose(Planner.act(Stub, plan, 1, step), [[0.0, 1.0]], atol=1e-12)  # clip(0.5 - 0.5, 1)
    Stub.settings = _settings()  # lookahead: one token, 15 steps; past the plan's end its last position
    np.testing.assert_allclose(Planner.act(Stub, plan, 0, step), [[1.0, 1.0]])


class JumpyExpertPlanner:
    """Plans of sub-goals 15 steps apart taken from the waypoint expert simulated from each agent's state, upsampled
    as the planner upsamples a jumpy model's plan: the agent loop with the waypoint controller, apart from a model."""

    def __init__(self, settings, maze="umaze"):
        from worldsim_envs.maze2d import Maze2dEnv
        from worldsim_plugins.maze2d import Maze2dTask

        self.settings, self.frames, self.stride, self.maze = settings, 1, 15, maze
        self.task = Maze2dTask(maze)
        self.action, self.position, self.velocity = ACTION, POSITION, VELOCITY
        self.sim = Maze2dEnv(maze)

    def plan(self, history, goals, remaining_steps, generator, previous=None):
        from worldsim_envs.expert import WaypointExpert

        plans = []
        for b in range(history.shape[0]):
            state = tuple(history[b, -1, 2:6])
            self.sim.set_state(state[:2], state[2:])
            expert = WaypointExpert(self.maze, seed=b, pause_prob=1.0, pause_steps=(10**6, 10**6))
            expert.set_target(state[0], state[1], tuple(int(g) for g in goals[b]))
            steps = []
            for _ in range(150):
                action = expert.act(*state)
                state = self.sim.advance(*action)
                steps.append([*action, *state])
            plans.append(steps[self.stride - 1 :: self.stride])
        return upsample(history[:, -1], np.asarray(plans), self.stride)

    act = Planner.act


def test_the_agent_reaches_and_holds_the_goal_with_jumpy_plans():
    from worldsim_envs import normalized_score

    result = run_episodes(JumpyExpertPlanner(_settings()), "worldsim/Maze2d-UMaze-v1", 4, seed=0, progress=False)
    assert result["reached"].all() and result["final_success"].all()
    assert (result["first_reach"] > 0).all() and (result["at_goal"] > 150).all()
    assert normalized_score("worldsim/Maze2d-UMaze-v1", result["returns"]).mean() > 100


@pytest.mark.parametrize("gradient, scale", [("model", 0.3), ("x0", 3.0)])
def test_the_shipped_umaze_planner_reaches_and_holds_the_goal_with_either_guidance_gradient(gradient, scale):
    """The shipped jumpy umaze planner at its own schedule, guided through the model (DF's way) or at the prediction
    (no backward pass), takes two agents to the goal and keeps them there."""
    from worldsim.experiment import load_run
    from worldsim.planning import build_objective, build_task
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry
    from worldsim_envs import normalized_score

    registry = build_registry(get_plugin_manager())
    run = load_run("maze2d-umaze", registry)
    settings = PlanSettings.from_config(
        {**run.cfg.planning, "guidance_gradient": gradient, "guidance_scale": scale, "threads": 1}
    )
    task = build_task(run, registry)
    planner = Planner(run, build_objective(run, registry), settings, task)
    result = run_episodes(planner, None, 2, seed=0, progress=False)
    assert result["reached"].all() and result["final_success"].all()
    assert normalized_score(task.env_id, result["returns"]).mean() > 100


@pytest.fixture(scope="module")
def jumpy_data(tmp_path_factory):
    data = tmp_path_factory.mktemp("jumpy") / "umaze.hdf5"
    args = ["--steps", "3000", "--noisy", "--pause-prob", "0.5", "--pause-steps", "10", "300", "--out", str(data)]
    assert main(["data", "maze2d", "--maze", "umaze", *args]) == 0
    return data


def _recipe(data) -> list[str]:
    return ["experiment=maze2d_umaze_cpu", f"dataset.path={data}", "dataset.steps=3000", "trainer.steps=2",
            "trainer.threads=1", *TINY_MAZE, *JUMPY, "trainer.ckpt_every=1"]  # fmt: skip


def test_a_jumpy_goal_conditioned_run_plans_fixed_and_multi_goal(jumpy_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_recipe(jumpy_data), f"run.dir={run}"]) == 0
    from worldsim.experiment import load_run
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    loaded = load_run(run, build_registry(get_plugin_manager()))
    assert loaded.model.backbone.cond_dim == 6 + 1  # the goal token (one 6-number step) and its indicator
    for extra in ([], ["task.multi_goal=true", "sampling.cfg_scale=2", "planning.guidance_scale=0"]):
        out = tmp_path / f"plan{len(extra)}"
        assert main(["plan", str(run), "--episodes", "2", "--out", str(out), "planning.batch=2", "sampling.steps=2",
                     "planning.threads=1", *extra]) == 0  # fmt: skip
        report = json.loads((out / "plan.json").read_text())
        assert len(report["first_reach"]) == 2 and 0 <= report["at_goal_share"] <= 1
        assert report["replans"] == 300 // 15  # a plan every open_loop = 15 steps
    assert "first reach" in capsys.readouterr().out


def test_a_sweep_trains_seeds_evaluates_the_same_episodes_and_resumes(jumpy_data, tmp_path, capsys, monkeypatch):
    sweep = tmp_path / "a"
    plan = ["--plan", "planning.batch=1", "--plan", "sampling.steps=2", "--plan", "planning.open_loop=100"]
    args = ["sweep", str(sweep), "--seeds", "1", "--episodes", "2", *plan, *_recipe(jumpy_data)]
    assert main(args) == 0
    assert main([*args[:2], "--seeds", "2", *args[4:]]) == 0  # one more seed: seed 0 is neither trained nor planned
    text = capsys.readouterr().out
    assert text.count("training seed 0") == 1 and text.count("evaluating seed 0") == 1 and "training seed 1" in text
    assert "over 2 seeds: mean" in text
    summary = json.loads((sweep / "summary-default.json").read_text())
    assert [r["seed"] for r in summary["seeds"]] == [0, 1] and len(summary["per_episode"]) == 2
    first, second = (json.loads((sweep / f"seed{s}/eval-default/plan.json").read_text()) for s in (0, 1))
    assert first["goals"] == second["goals"] and first["settings"]["seed"] == second["settings"]["seed"] == 0

    import worldsim.train

    monkeypatch.setattr(worldsim.train, "train", lambda *a, **k: pytest.fail("a finished seed was trained again"))
    # a planning variant of the same seeds under its own label, paired with the default evaluation
    assert main(["sweep", str(sweep), "--seeds", "2", "--episodes", "2", "--label", "g0", *plan,
                 "--plan", "planning.guidance_scale=0", "--against", str(sweep), "--against-label", "default"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert f"against {sweep} (default" in text and "per episode" in text and "training seed" not in text
    assert "paired by seed: the same trained models" in text
    # a point of a learning curve: each seed's checkpoint of step 1 (the recipe trains 2), under its own summary
    assert main(["sweep", str(sweep), "--seeds", "2", "--episodes", "2", *plan, "--step", "1"]) == 0
    curve = json.loads((sweep / "summary-default-step1.json").read_text())
    assert [r["step"] for r in curve["seeds"]] == [1, 1] and curve["label"] == "default-step1"
    assert json.loads((sweep / "seed1/eval-default-step1/plan.json").read_text())["step"] == 1
    capsys.readouterr()
    assert main(["sweep", str(sweep), "--episodes", "2", *plan, "--step", "5"]) == 2
    assert "has no checkpoint of step 5" in capsys.readouterr().err


def test_a_planning_lever_on_the_same_trained_seeds_is_paired_seed_by_seed():
    """Two evaluations of one sweep's seeds: the standard error comes from the per-seed differences (each seed its
    own pair), not from the two spreads between seeds, which the models' own draw dominates; other sweeps stay
    unpaired."""
    from worldsim.sweep import paired

    def summary(sweep, means):
        return {"sweep": sweep, "env": "e", "episodes": 2, "eval_seed": 0, "mean": float(np.mean(means)),
                "seed_std": float(np.std(means, ddof=1)), "per_episode": [float(np.mean(means))] * 2,
                "seeds": [{"seed": i, "mean": m} for i, m in enumerate(means)]}  # fmt: skip

    lever, base = summary("sweeps/a", [161.0, 163.0, 109.2]), summary("sweeps/a", [138.8, 123.2, 79.5])
    same = paired(lever, base)
    diffs = np.array([22.2, 39.8, 29.7])
    assert same["paired_by_seed"] and same["seed_stderr"] == pytest.approx(diffs.std(ddof=1) / np.sqrt(3))
    other = paired(lever, {**base, "sweep": "sweeps/b"})
    assert not other["paired_by_seed"]
    assert other["seed_stderr"] == pytest.approx(np.sqrt((lever["seed_std"] ** 2 + base["seed_std"] ** 2) / 3))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "--seeds: got 0"),
        (["--step", "0"], "--step: got 0"),
        (["experiment=maze2d_umaze_cpu", "trainer.steps=3"], "give no overrides to resume it"),
        (["--against", "nowhere/at-all"], "nowhere/at-all/summary-default.json not found"),
    ],
)
def test_sweep_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"overrides": ["experiment=toy"], "evals": {}}))
    assert main(["sweep", str(sweep), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
