"""worldsim's gymnasium environments and data generators (import name ``worldsim_envs``).

Importing this package registers the maze2d ids (D4RL maze2d-v1 protocol on gymnasium-robotics PointMaze):
``worldsim/Maze2d-{UMaze,Medium,Large}-v1`` (fixed goal; time limits 300 / 600 / 800) and
``worldsim/Maze2d-{UMaze,Medium,Large}-MultiGoal-v1`` (a random goal cell per episode). A maze given as a text
map gets its ids when :func:`env_id` is first asked for them. ``worldsim/Reacher-v5`` is gymnasium's Reacher-v5 with
the goal and success in ``info`` (``worldsim_envs.reacher``).
"""

import gymnasium

from .mazes import (
    DATASET_STEPS,
    MAZES,
    MULTI_GOAL_MAZES,
    check_maze,
    dataset_steps,
    draw_maze,
    empty_cells,
    env_id,
    goal_cell,
    is_custom,
    max_episode_steps,
    maze_map,
    maze_of_env,
    maze_slug,
)
from .scores import REF_SCORES, compute_reference_returns, normalized_score, reference_returns

__all__ = [
    "MAZES",
    "MULTI_GOAL_MAZES",
    "DATASET_STEPS",
    "REF_SCORES",
    "normalized_score",
    "reference_returns",
    "compute_reference_returns",
    "maze_map",
    "goal_cell",
    "env_id",
    "empty_cells",
    "max_episode_steps",
    "check_maze",
    "dataset_steps",
    "is_custom",
    "maze_of_env",
    "maze_slug",
    "draw_maze",
]


def _register() -> None:
    from .reacher import EPISODE_STEPS, REACHER_ID

    if REACHER_ID not in gymnasium.registry:
        gymnasium.register(
            id=REACHER_ID, entry_point="worldsim_envs.reacher:make_reacher", max_episode_steps=EPISODE_STEPS
        )
    for name in MAZES:
        for multi_goal, ids in ((False, MAZES), (True, MULTI_GOAL_MAZES)):
            if ids[name] not in gymnasium.registry:
                gymnasium.register(
                    id=ids[name],
                    entry_point="worldsim_envs.maze2d:Maze2dEnv",
                    max_episode_steps=max_episode_steps(name),
                    kwargs={"maze": name, "multi_goal": multi_goal},
                )


_register()
