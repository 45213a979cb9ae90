"""D4RL's original maze2d envs as gymnasium envs, run in the separate D4RL environment that ``make d4rl`` builds.

``worldsim/D4RL-maze2d-{umaze,medium,large}-v1`` (``--env d4rl:maze2d-umaze-v1`` on the command line) are D4RL 1.1's
``maze2d-*-v1`` (MuJoCo 2.1 through mujoco-py, gym 0.23): one server process (``d4rl_server.py``, started by the
first env and shared by all) steps them and answers over a pipe; gym 0.23's API becomes gymnasium's here (``reset``
returns ``(obs, info)``, ``step`` five values, D4RL's time limit is gymnasium's ``TimeLimit``).

Frame. D4RL's particle sits 0.2 off the cell centres: its qpos ``(i, j)`` is at world ``(i + 1.2, j + 1.2)`` while the
walls of cell ``(i, j)`` are centred at ``(i + 1, j + 1)``. worldsim's frame centres cell ``(i, j)`` at ``(i, j)``, so
positions (and the target) are reported as qpos + 0.2; velocities and actions are the same in both (qpos 0 is the
row, qpos 1 the column). The reward is D4RL's (the distance of particle and target, the same in either frame).

The server's Python: ``$WORLDSIM_D4RL_PYTHON`` when it is set, else ``.venv-d4rl/bin/python`` in the working
directory or the source tree. Without it, making an env raises a ConfigError saying to run ``make d4rl``.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from worldsim.errors import ConfigError

from .mazes import max_episode_steps  # D4RL's time limits: 300 / 600 / 800

PREFIX = "d4rl:"
#: D4RL env name -> worldsim maze name
D4RL_MAZES = {"maze2d-umaze-v1": "umaze", "maze2d-medium-v1": "medium", "maze2d-large-v1": "large"}
#: D4RL's particle offset from the cell centres (its body pos 1.2 against walls at cell + 1.0)
OFFSET = 0.2
SUCCESS_RADIUS = 0.5
SERVER = Path(__file__).with_name("d4rl_server.py")


def gym_id(name: str) -> str:
    """The gymnasium id of a D4RL maze2d env name, e.g. ``worldsim/D4RL-maze2d-umaze-v1``."""
    return f"worldsim/D4RL-{name}"


def d4rl_python() -> Path:
    """The Python of the D4RL environment; a ConfigError if there is none."""
    given = os.environ.get("WORLDSIM_D4RL_PYTHON")
    candidates = [Path(given)] if given else [Path.cwd() / ".venv-d4rl/bin/python",
                                              Path(__file__).resolve().parents[1] / ".venv-d4rl/bin/python"]  # fmt: skip
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        "--env d4rl:...: the original D4RL envs need their own environment; build it with `make d4rl` "
        "(or set WORLDSIM_D4RL_PYTHON to its python)"
    )


def available() -> bool:
    try:
        d4rl_python()
    except ConfigError:
        return False
    return True


class _Server:
    """The one server process of this process, started on first use."""

    proc: subprocess.Popen | None = None
    log: IO[str]

    @classmethod
    def call(cls, **msg) -> dict:
        if cls.proc is None or cls.proc.poll() is not None:
            cls.log = tempfile.TemporaryFile("w+")  # gym's and D4RL's import notices; shown if the server dies
            cls.proc = subprocess.Popen(
                [str(d4rl_python()), str(SERVER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=cls.log,
                text=True, bufsize=1,
            )  # fmt: skip
            atexit.register(cls.stop)
        assert cls.proc.stdin is not None and cls.proc.stdout is not None, "pipes were asked for"
        cls.proc.stdin.write(json.dumps(msg) + "\n")
        cls.proc.stdin.flush()
        line = cls.proc.stdout.readline()
        if not line:
            code = cls.proc.wait()
            cls.log.seek(0)
            tail = cls.log.read()[-2000:]
            raise RuntimeError(f"the D4RL server ({d4rl_python()}) exited with code {code}:\n{tail}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"D4RL server: {reply['error']}")
        return reply

    @classmethod
    def stop(cls) -> None:
        if cls.proc is not None and cls.proc.poll() is None:
            assert cls.proc.stdin is not None, "a pipe was asked for"
            cls.proc.stdin.close()
            cls.proc.wait(timeout=10)
        cls.proc = None


class D4RLMaze2dEnv(gym.Env):
    """D4RL's maze2d-*-v1 in worldsim's frame: observation ``(row, col, v_row, v_col)``, action ``(a_row, a_col)``,
    D4RL's sparse reward, ``info`` ``goal`` and ``success`` (within 0.5). Never terminates (the id adds the limit)."""

    metadata = {"render_modes": []}

    def __init__(self, name: str = "maze2d-umaze-v1"):
        if name not in D4RL_MAZES:
            raise ConfigError(f"--env d4rl:{name}: expected one of {', '.join(PREFIX + n for n in D4RL_MAZES)}")
        self.name, self.maze = name, D4RL_MAZES[name]
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(4,), dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        made = _Server.call(op="make", name=name)
        self.handle = made["handle"]
        self.goal = np.zeros(2)
        self.wall_contacts = 0  # of the last step (the parity report reads it)

    def _observe(self, reply: dict) -> tuple[np.ndarray, dict]:
        obs = np.asarray(reply["obs"], dtype=np.float64)
        obs[:2] += OFFSET
        if "target" in reply:
            self.goal = np.asarray(reply["target"], dtype=np.float64) + OFFSET
        self.wall_contacts = int(reply.get("wall_contacts", 0))
        success = math.hypot(obs[0] - self.goal[0], obs[1] - self.goal[1]) <= SUCCESS_RADIUS
        return obs, {"goal": self.goal.copy(), "success": bool(success)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # D4RL seeds its own generator: a given seed is passed on; otherwise one is drawn from ours
        s = seed if seed is not None else int(self.np_random.integers(1 << 31))
        return self._observe(_Server.call(op="reset", handle=self.handle, seed=s))

    def step(self, action):
        a = np.asarray(action, dtype=np.float64).tolist()
        reply = _Server.call(op="step", handle=self.handle, action=a)
        obs, info = self._observe(reply)
        return obs, float(reply["reward"]), False, False, info

    def set_state(self, pos, vel=(0.0, 0.0)) -> np.ndarray:
        """Place the particle at worldsim-frame ``pos`` with velocity ``vel``; returns the observation."""
        qpos = (np.asarray(pos, dtype=np.float64) - OFFSET).tolist()
        reply = _Server.call(op="set_state", handle=self.handle, qpos=qpos, qvel=np.asarray(vel, dtype=float).tolist())
        return self._observe(reply)[0]

    def close(self):
        if self.handle is not None and _Server.proc is not None and _Server.proc.poll() is None:
            _Server.call(op="close", handle=self.handle)
        self.handle = None


def register() -> None:
    """The gymnasium ids (making one starts the server; registering does not)."""
    for name, maze in D4RL_MAZES.items():
        if gym_id(name) not in gym.registry:
            gym.register(id=gym_id(name), entry_point="worldsim_envs.d4rl:D4RLMaze2dEnv",
                         max_episode_steps=max_episode_steps(maze), kwargs={"name": name})  # fmt: skip


def check_env(env: str) -> str:
    """The gymnasium id of ``--env d4rl:NAME``; a ConfigError naming what is expected."""
    name = env[len(PREFIX) :] if env.startswith(PREFIX) else env
    if name not in D4RL_MAZES:
        raise ConfigError(f"--env {env}: expected one of {', '.join(PREFIX + n for n in D4RL_MAZES)}")
    d4rl_python()
    register()
    return gym_id(name)
