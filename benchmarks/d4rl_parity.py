"""Parity of worldsim's maze2d envs (gymnasium-robotics PointMaze, modern MuJoCo) with D4RL's originals (MuJoCo 2.1
through mujoco-py): both start from the same state and run the same actions; the table gives the largest position
difference before the first wall contact (in either env), the median difference 10 steps after it, the largest after
it, and the largest after 1, 10 and 100 free steps.

    make d4rl                                           # once: D4RL's environment (.venv-d4rl)
    python benchmarks/d4rl_parity.py [--episodes 20] [--steps 300]

Actions: a smooth random walk (each step a <- 0.9 a + 0.1 u, u uniform in [-1, 1]^2, scaled to full force), which
runs into walls, from a random empty cell at rest. Positions in worldsim's frame (cell (i, j) centred at (i, j); the
D4RL env's are shifted by its 0.2 offset, see worldsim_envs.d4rl).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "d4rl_parity.json"


def actions(steps: int, rng: np.random.Generator) -> np.ndarray:
    a, out = np.zeros(2), np.empty((steps, 2))
    for t in range(steps):
        a = 0.9 * a + 0.1 * rng.uniform(-1, 1, 2)
        out[t] = np.clip(a * 4.0, -1, 1)
    return out


def episode(ours, theirs, maze: str, steps: int, rng: np.random.Generator) -> dict:
    import worldsim_envs as envs

    cells = envs.empty_cells(maze)
    start = np.array(cells[int(rng.integers(len(cells)))], dtype=np.float64)
    ours.set_state(start, (0.0, 0.0))
    theirs.set_state(start, (0.0, 0.0))
    diff, contact = np.empty(steps), None
    for t, a in enumerate(actions(steps, rng)):
        p = np.array(ours.advance(*a)[:2])
        q = theirs.step(a)[0][:2]
        diff[t] = np.linalg.norm(p - q)
        if contact is None and (ours.wall_contacts() or theirs.wall_contacts):
            contact = t
    before = diff[: contact if contact is not None else steps]
    return {
        "first_contact": contact,
        "max_before": float(before.max()) if len(before) else 0.0,
        "max_after": float(diff[contact:].max()) if contact is not None else None,
        "after_10": float(diff[contact + 9]) if contact is not None and contact + 9 < steps else None,
        "at": {str(k): float(diff[k - 1]) for k in (1, 10, 100) if k <= len(before)},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()

    from worldsim_envs import d4rl
    from worldsim_envs.maze2d import Maze2dEnv

    if not d4rl.available():
        print("d4rl_parity: D4RL's environment is missing; build it with `make d4rl`", file=sys.stderr)
        return 2
    rows = []
    for name, maze in d4rl.D4RL_MAZES.items():
        ours, theirs = Maze2dEnv(maze), d4rl.D4RLMaze2dEnv(name)
        rng = np.random.default_rng([args.seed, len(rows)])
        eps = [episode(ours, theirs, maze, args.steps, rng) for _ in range(args.episodes)]
        ours.close()
        theirs.close()
        hit = [e for e in eps if e["first_contact"] is not None]
        free = {k: [e["at"][k] for e in eps if k in e["at"]] for k in ("1", "10", "100")}
        rows.append({
            "maze": maze, "d4rl_env": name, "episodes": len(eps), "steps": args.steps, "with_contact": len(hit),
            "max_before_contact": max(e["max_before"] for e in eps),
            "max_after_contact": max(e["max_after"] for e in hit) if hit else None,
            "median_10_after_contact": float(np.median([e["after_10"] for e in hit if e["after_10"] is not None])) if hit else None,
            "median_first_contact": float(np.median([e["first_contact"] for e in hit])) if hit else None,
            "free_step_diff": {k: (float(np.max(v)) if v else None) for k, v in free.items()},
        })  # fmt: skip
    print(f"worldsim maze2d vs D4RL maze2d-*-v1: {args.episodes} episodes x {args.steps} steps each, same start, same "
          f"actions (seed {args.seed}); position differences in cells")  # fmt: skip
    head = (f"{'maze':<8} {'contact in':>11} {'1st contact':>12} {'max before':>11} {'10 after':>9} {'max after':>10} "
            f"{'step 1':>9} {'step 10':>9} {'step 100':>9}")  # fmt: skip
    print(head + "\n" + "-" * len(head))
    for r in rows:
        f = r["free_step_diff"]

        def num(v, spec=".4f"):
            return "-" if v is None else format(v, spec)

        print(f"{r['maze']:<8} {r['with_contact']:>5}/{r['episodes']:<5} {num(r['median_first_contact'], '.0f'):>12} "
              f"{num(r['max_before_contact'], '.2e'):>11} {num(r['median_10_after_contact']):>9} {num(r['max_after_contact']):>10} {num(f['1'], '.2e'):>9} "
              f"{num(f['10'], '.2e'):>9} {num(f['100'], '.2e'):>9}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"rows": rows, "episodes": args.episodes, "steps": args.steps, "seed": args.seed}, indent=1)
    )
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
