"""Serve D4RL's original maze2d envs (gym 0.23, mujoco-py) to worldsim over a pipe: run by the Python of the separate
D4RL environment (``make d4rl``), never imported by worldsim, and importing nothing of it.

Protocol: one JSON object per line on stdin, one reply per line on stdout (every other output goes to stderr):

- ``{"op": "make", "name": "maze2d-umaze-v1"}`` -> ``{"handle": k}`` (the env without gym's time limit)
- ``{"op": "reset", "handle": k, "seed": s}`` -> ``{"obs": [...], "target": [...]}`` (``env.seed(s)`` first)
- ``{"op": "step", "handle": k, "action": [a0, a1]}`` -> ``{"obs", "reward", "target", "wall_contacts"}``
- ``{"op": "set_state", "handle": k, "qpos": [...], "qvel": [...]}`` -> ``{"obs": [...]}``
- ``{"op": "close", "handle": k}`` -> ``{}``

Errors come back as ``{"error": "..."}``. Observations, targets and states are D4RL's own (its qpos frame).
"""

import json
import os
import sys
from typing import Any


def _wall_contacts(env) -> int:
    """Contacts of the particle with a wall (D4RL names the wall geoms wall_<i>_<j>; the ground is not one)."""
    data, model = env.sim.data, env.sim.model
    names = [
        (model.geom_id2name(data.contact[k].geom1), model.geom_id2name(data.contact[k].geom2)) for k in range(data.ncon)
    ]
    return sum(1 for a, b in names if str(a).startswith("wall") or str(b).startswith("wall"))


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))  # run as a script, its folder is first on the path, and its
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # neighbour d4rl.py is not D4RL's d4rl
    proto = os.fdopen(os.dup(1), "w")  # replies; anything printed by gym, d4rl or MuJoCo goes to stderr
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import d4rl.pointmaze  # type: ignore[import-not-found]  # noqa: F401  (registers maze2d-*; plain `import d4rl` needs mjrl)
    import gym  # type: ignore[import-not-found]  # the D4RL environment's gym 0.23
    import numpy as np

    envs, next_handle = {}, 0
    for line in sys.stdin:
        try:
            msg = json.loads(line)
            op = msg["op"]
            if op == "make":
                envs[next_handle] = gym.make(msg["name"]).unwrapped  # worldsim adds its own time limit
                reply: dict[str, Any] = {"handle": next_handle}
                next_handle += 1
            else:
                env = envs[msg["handle"]]
                if op == "reset":
                    if msg.get("seed") is not None:
                        env.seed(int(msg["seed"]))
                    reply = {"obs": env.reset().tolist(), "target": np.asarray(env._target, dtype=float).tolist()}
                elif op == "step":
                    obs, reward, _, _ = env.step(np.asarray(msg["action"], dtype=np.float64))
                    reply = {"obs": obs.tolist(), "reward": float(reward), "target": np.asarray(env._target, dtype=float).tolist(),
                             "wall_contacts": _wall_contacts(env)}  # fmt: skip
                elif op == "set_state":
                    env.set_state(np.asarray(msg["qpos"], dtype=np.float64), np.asarray(msg["qvel"], dtype=np.float64))
                    reply = {"obs": env._get_obs().tolist()}
                elif op == "close":
                    envs.pop(msg["handle"]).close()
                    reply = {}
                else:
                    reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to worldsim, which raises it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()


if __name__ == "__main__":
    main()
