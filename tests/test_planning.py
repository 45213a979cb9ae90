"""The planning agent end to end on a tiny maze2d run: the CLI's score table, plots and JSON, and its
one-line errors for a run of another env or another data set."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import pytest

from worldsim.cli import main
from worldsim.errors import ConfigError
from worldsim.planning import Planner, build_task
from worldsim.settings import PlanSettings
from worldsim_plugins.maze2d import STEP_LAYOUT, Maze2dTask

ACTION, POSITION, VELOCITY = STEP_LAYOUT["action"], STEP_LAYOUT["position"], STEP_LAYOUT["velocity"]

TINY = ["backbone.hidden=16", "backbone.embed=16", "backbone.noise_embed=8", "backbone.layers=1",
        "trainer.batch_size=4", "trainer.log_every=1", "trainer.ckpt_every=2", "trainer.warmup_steps=1"]  # fmt: skip


def test_plan_prints_the_score_table_and_writes_plots(maze_run, tmp_path, capsys):
    out = tmp_path / "plans"
    code = main(["plan", str(maze_run), "--episodes", "3", "--out", str(out), "planning.batch=2", "sampling.steps=2",
                 "planning.open_loop=100", "planning.plots=3"])  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0
    assert "worldsim/Maze2d-UMaze-v1" in text and "score" in text
    # not a terminal: progress comes as a line every tenth of the episode, not as a live bar
    assert "plan: episodes 0..1: step 30/300, " in text and "plan: episodes 2..2: step 270/300, " in text
    report = json.loads((out / "plan.json").read_text())
    assert report["episodes"] == 3 and len(report["scores"]) == 3
    assert report["replans"] == 2 * 3  # two batches (2 + 1 episodes) x 300 steps / 100 steps per plan
    assert (out / "plans.png").stat().st_size > 0
    assert list((maze_run / "tb").glob("events.*"))


def test_plan_pd_controller_and_guidance_switch(maze_run, tmp_path, capsys):
    code = main(["plan", str(maze_run), "--episodes", "1", "--out", str(tmp_path), "planning.controller=pd",
                 "sampling.steps=2", "planning.open_loop=100", "guidance=reward", "planning.mc_samples=2"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["guidance"]["name"] == "reward" and report["settings"]["controller"] == "pd"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "worldsim/Maze2d-Large-v1"], "was trained on the maze2d-umaze maze, not large"),
        (["--env", "worldsim/Nope-v1"], "is not an env of maze2d-umaze"),
        (["task=maze3d"], "did you mean 'maze2d'"),
        (["task.multi_goal=sometimes"], "task.multi_goal"),
        (["planning.controller=teleport"], "planning.controller"),
        (["planning.warm_schedule=spiral"], "planning.warm_schedule"),
        (["planning.guidance_gradient=jacobian"], "planning.guidance_gradient: expected one of model, x0"),
        (["planning.guidance_gradient=x0", "planning.mc_samples=2"], "planning.mc_samples: Monte Carlo guidance"),
        (["guidance=gaol"], "did you mean 'goal'"),
        (["trainer.steps=5"], "only planning.*"),
    ],
)
def test_plan_bad_input_is_one_line_and_exit_2(maze_run, capsys, args, message):
    assert main(["plan", str(maze_run), "--episodes", "1", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_plan_refuses_a_run_of_another_data_set(tmp_path, capsys):
    run = tmp_path / "toy"
    assert main(["train", "experiment=toy", f"run.dir={run}", "trainer.steps=1", "dataset.num_episodes=8", *TINY]) == 0
    capsys.readouterr()
    assert main(["plan", str(run), "--episodes", "1"]) == 2
    assert "names no task to plan in" in capsys.readouterr().err
    assert main(["plan", str(run), "--episodes", "1", "task=maze2d"]) == 2
    assert "task maze2d: its data set is maze2d (worldsim data maze2d), got 'oscillators'" in capsys.readouterr().err


def test_controllers_read_the_step_layout():
    """'actions' executes the plan's action; 'pd' tracks the planned next position and velocity."""

    class Stub:
        settings = PlanSettings(episodes=1, batch=1, open_loop=1, horizon=None, context=1, controller="actions",
                                pd_gains=(10.0, 1.0), lookahead=None, guidance_scale=0.0, mc_samples=1, guidance_gradient="model", candidates=1, warm_start=None, warm_schedule=None, seed=0, threads=None, plots=0)  # fmt: skip
        action, position, velocity = ACTION, POSITION, VELOCITY

    plan = np.zeros((1, 2, 6))
    plan[0, 0, ACTION] = [0.3, -2.0]
    plan[0, 0, POSITION] = [1.1, 1.0]
    plan[0, 0, VELOCITY] = [0.5, 0.0]
    step = np.array([[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]])  # the current (a, o): the agent at (1, 1), at rest
    np.testing.assert_allclose(Planner.act(Stub, plan, 0, step), [[0.3, -1.0]])
    Stub.settings = dataclasses.replace(Stub.settings, controller="pd")  # frozen settings: a changed copy
    np.testing.assert_allclose(Planner.act(Stub, plan, 0, step), [[1.0, 0.0]])  # clip(10 * 0.1 + 0.5) = 1
    with pytest.raises(ConfigError):
        PlanSettings.from_config({**dataclasses.asdict(Stub.settings), "controller": "x"})


class ExpertPlanner(Planner):
    """A planner whose plans come from the waypoint expert simulated from each agent's current state: it
    checks the agent loop (history, replanning, controllers, returns, scores) apart from any model."""

    def __init__(self, settings, maze="umaze", frames=10):
        from worldsim_envs.maze2d import Maze2dEnv

        self.settings, self.frames, self.maze = settings, frames, maze
        self.task = Maze2dTask(maze)
        self.action, self.position, self.velocity = ACTION, POSITION, VELOCITY
        self.sim = Maze2dEnv(maze)

    def plan(self, history, goals, remaining_steps, generator, previous=None):
        from worldsim_envs.expert import WaypointExpert

        plans = []
        for b in range(history.shape[0]):
            sim = self.sim
            state = tuple(history[b, -1, 2:6])
            sim.set_state(state[:2], state[2:])
            expert = WaypointExpert(self.maze, seed=b, pause_prob=1.0, pause_steps=(10**6, 10**6))
            expert.set_target(state[0], state[1], tuple(int(g) for g in goals[b]))
            steps = []
            for _ in range(min(remaining_steps, 150)):
                action = expert.act(*state)
                state = sim.advance(*action)
                steps.append([*action, *state])
            plans.append(steps)
        return np.asarray(plans)


@pytest.mark.parametrize("controller", ["actions", "pd"])
def test_the_agent_loop_reaches_the_goal_with_expert_plans(controller):
    from worldsim.planning import run_episodes
    from worldsim_envs import normalized_score

    settings = PlanSettings(episodes=4, batch=4, open_loop=10, horizon=None, context=1, controller=controller,
                            pd_gains=(10.0, 1.0), lookahead=None, guidance_scale=0.0, mc_samples=1, guidance_gradient="model", candidates=1, warm_start=None, warm_schedule=None, seed=0, threads=None, plots=0)  # fmt: skip
    result = run_episodes(ExpertPlanner(settings), "worldsim/Maze2d-UMaze-v1", 4, seed=0, progress=False)
    assert result["reached"].all() and result["final_success"].all()
    assert len(result["latencies"]) == 30  # 300 steps, a new plan every 10
    assert normalized_score("worldsim/Maze2d-UMaze-v1", result["returns"]).mean() > 100


def test_plans_cover_the_rest_of_the_episode_and_respect_a_window(maze_run):
    """The GRU has no window: it plans the whole rest of the episode, past its training length. A backbone
    with a window plans within it, after the context."""
    from worldsim.config import apply_overrides
    from worldsim.experiment import load_run
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry = build_registry(get_plugin_manager())
    run = load_run(maze_run, registry)
    settings, task = PlanSettings.from_config(run.cfg.planning), build_task(run, registry)
    planner = Planner(run, None, settings, task)
    assert planner.window is None and planner.horizon_tokens(1000) == 100 and planner.horizon_tokens(95) == 10
    run.model.backbone.max_tokens = 8  # as a windowed backbone would declare
    assert Planner(run, None, settings, task).horizon_tokens(1000) == 8 - settings.context
    run.cfg = apply_overrides(run.cfg, ["planning.horizon=40"], allowed=("planning",))
    run.model.backbone.max_tokens = None
    assert Planner(run, None, PlanSettings.from_config(run.cfg.planning), task).horizon_tokens(1000) == 4


def test_multi_goal_planning_gives_each_episode_its_goal(maze_run, tmp_path):
    code = main(["plan", str(maze_run), "--episodes", "3", "--out", str(tmp_path), "task.multi_goal=true",
                 "sampling.steps=2", "planning.open_loop=100"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / "plan.json").read_text())
    assert report["env"] == "worldsim/Maze2d-UMaze-MultiGoal-v1"
    assert len({tuple(g) for g in report["goals"]}) > 1


def test_candidate_plans_keep_the_one_the_objective_values_most(maze_run):
    """planning.candidates=N samples N plans per agent in one batch and executes, for every agent, the
    candidate with the highest guidance value; each agent keeps its own goal."""
    import torch

    from worldsim.config import apply_overrides
    from worldsim.experiment import load_run
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry = build_registry(get_plugin_manager())
    run = load_run(maze_run, registry)
    run.cfg = apply_overrides(run.cfg, ["planning.candidates=5", "sampling.steps=2"], allowed=("planning", "sampling"))
    objective, seen = registry.build("guidance", "goal"), []

    def spy(steps, ctx):
        value = objective(steps, ctx)
        seen.append((steps.detach().clone(), ctx["goal"].clone(), value.detach().clone()))
        return value

    planner = Planner(run, spy, PlanSettings.from_config(run.cfg.planning), build_task(run, registry))
    history = np.zeros((2, 10, 6))
    history[:, :, POSITION] = np.array([[1.0, 1.0], [3.0, 1.0]])[:, None]
    goals = np.array([[3.0, 3.0], [1.0, 3.0]])
    plan = planner.plan(history, goals, 40, torch.Generator().manual_seed(0))
    steps, goal, value = seen[-1]  # the selection call sees the decoded candidates
    assert steps.shape[0] == 10 and torch.equal(goal, torch.as_tensor(goals, dtype=goal.dtype).repeat_interleave(5, 0))
    best = value.reshape(2, 5).argmax(1)
    np.testing.assert_allclose(plan, steps.reshape(2, 5, *steps.shape[1:])[torch.arange(2), best].numpy())
    assert not torch.allclose(steps[0], steps[1])  # the candidates differ


@pytest.mark.parametrize("warm_schedule", [None, "full_sequence"])
def test_warm_started_replans_start_from_the_rest_of_the_previous_plan(maze_run, monkeypatch, warm_schedule):
    """planning.warm_start: every replan after the first hands the sampler the unexecuted rest of the last plan,
    as tokens of the new plan's length, and the level to noise it to; planning.warm_schedule sets those replans'
    scheduling matrix, while an episode's first plan keeps sampling.schedule."""
    import torch

    import worldsim.planning as planning
    from worldsim.config import apply_overrides
    from worldsim.experiment import load_run
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry = build_registry(get_plugin_manager())
    run = load_run(maze_run, registry)
    overrides = ["planning.warm_start=0.4", "planning.open_loop=10", "sampling.steps=4", "sampling.schedule=pyramid",
                 f"planning.warm_schedule={'null' if warm_schedule is None else warm_schedule}"]  # fmt: skip
    run.cfg = apply_overrides(run.cfg, overrides, allowed=("planning", "sampling"))
    calls, schedules, real = [], [], planning.sample

    def spy(model, settings, **kw):
        out = real(model, settings, **kw)
        calls.append((kw.get("init"), kw.get("init_level"), kw["horizon"], out))
        schedules.append(settings.schedule)
        return out

    monkeypatch.setattr(planning, "sample", spy)
    planner = Planner(run, registry.build("guidance", "goal"), PlanSettings.from_config(run.cfg.planning),
                      build_task(run, registry))  # fmt: skip
    planning.run_episodes(planner, "worldsim/Maze2d-UMaze-v1", 2, seed=0, progress=False, max_steps=30)
    assert len(calls) == 3 and calls[0][0] is None  # the first plan of an episode starts from noise
    assert schedules == ["pyramid", *[warm_schedule or "pyramid"] * 2]
    for (_, _, _, before), (init, level, horizon, _) in zip(calls[:-1], calls[1:], strict=True):
        assert level == 0.4 and init.shape == (2, horizon, *before.shape[2:])
        # the rest of the last plan: its tokens from the second on (10 steps executed = one token)
        torch.testing.assert_close(init, before[:, 1 : 1 + horizon], atol=1e-5, rtol=1e-5)


def test_a_replan_takes_no_weight_gradients_and_leaves_the_weights_as_it_found_them(maze_run, monkeypatch):
    """The guidance gradient is with respect to the noisy plan only: while the sampler runs, the weights need no
    gradient (the backward pass then skips them); the plan is the one trainable weights give, and every weight's
    requires_grad is restored afterwards (a user may go on training the model)."""
    import torch

    import worldsim.planning as planning
    from worldsim.config import apply_overrides
    from worldsim.experiment import load_run
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    registry = build_registry(get_plugin_manager())
    run = load_run(maze_run, registry)
    run.cfg = apply_overrides(run.cfg, ["sampling.steps=3"], allowed=("planning", "sampling"))
    planner = Planner(run, registry.build("guidance", "goal"), PlanSettings.from_config(run.cfg.planning),
                      build_task(run, registry))  # fmt: skip
    history = np.zeros((2, 10, 6))
    history[:, :, POSITION] = np.array([[1.0, 1.0], [3.0, 1.0]])[:, None]
    goals = np.array([[3.0, 3.0], [1.0, 3.0]])
    params = list(run.model.parameters())
    params[0].requires_grad_(False)  # a flag that is off stays off, the others stay on
    flags, during, real = [p.requires_grad for p in params], [], planning.sample

    def spy(model, settings, **kw):
        during.append(any(p.requires_grad for p in model.parameters()))
        return real(model, settings, **kw)

    monkeypatch.setattr(planning, "sample", spy)
    frozen = planner.plan(history, goals, 40, torch.Generator().manual_seed(0))
    assert during == [False] and [p.requires_grad for p in params] == flags
    monkeypatch.setattr(planning, "frozen", lambda model: contextlib.nullcontext())
    trainable = planner.plan(history, goals, 40, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(frozen, trainable, atol=1e-6)
