"""Two trainings sharing the CPU: the throughput each keeps against one running alone.

Runs ``worldsim train experiment=toy trainer.steps=N`` once alone, then twice started side by side,
for each variant (environment variables and config overrides), and reports the tokens/s each run's
trainer measured. OpenMP threads that busy-wait between parallel regions take the cores from a
neighbouring process; this table is how worldsim's thread defaults were chosen (README, "Threads").
Run it on an otherwise quiet machine. Prints a table and writes benchmarks/results/sharing.json.

    python benchmarks/sharing.py [--steps 300] [--variant "name|ENV=VALUE ...|key=value ..."] ...
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sharing.json"
WORLDSIM = [sys.executable, "-m", "worldsim.cli"]
DEFAULT_VARIANTS = (
    "worldsim default|",
    "OpenMP active waiting (libgomp default)|OMP_WAIT_POLICY=ACTIVE",
    "trainer.threads=1|OMP_WAIT_POLICY=ACTIVE|trainer.threads=1",
)


def parse_variant(text: str) -> tuple[str, dict[str, str], list[str]]:
    """``"name|ENV=V ...|key=value ..."`` -> (name, env, overrides)."""
    name, _, rest = text.partition("|")
    env_part, _, overrides = rest.partition("|")
    env = dict(item.split("=", 1) for item in env_part.split())
    return name, env, overrides.split()


def start(steps: int, run_dir: Path, env: dict[str, str], overrides: list[str]) -> subprocess.Popen:
    cmd = WORLDSIM + [
        "train",
        "experiment=toy",
        f"trainer.steps={steps}",
        "trainer.resume=false",
        f"trainer.log_every={steps}",
        f"run.dir={run_dir}",
        *overrides,
    ]
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def tokens_per_s(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"sharing: a training exited with {proc.returncode}")
    match = re.search(r"tokens_per_s: ([0-9.]+)", out)
    if match is None:
        raise SystemExit("sharing: no tokens_per_s in the training's summary")
    return float(match.group(1))


def measure(steps: int, env: dict[str, str], overrides: list[str], work: Path) -> dict[str, float]:
    alone = tokens_per_s(start(steps, work / "alone", env, overrides))
    pair = [start(steps, work / f"pair{i}", env, overrides) for i in range(2)]
    shared = [tokens_per_s(p) for p in pair]
    return {"alone": alone, "side_by_side": shared, "kept": min(shared) / alone}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300, help="training steps of each run")
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        help='"name|ENV=VALUE ...|key=value ..." (repeatable; default: the three rows of the README)',
    )
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(args.variant or DEFAULT_VARIANTS):
            name, env, overrides = parse_variant(text)
            result = measure(args.steps, env, overrides, Path(tmp) / str(i))
            rows.append({"variant": name, "env": env, "overrides": overrides, **result})
    first = rows[0]["alone"]
    print(f"{'variant':<42} {'alone tok/s':>12} {'side by side tok/s':>20} {'kept':>6} {'vs first alone':>15}")
    for r in rows:
        pair = " / ".join(f"{v:.0f}" for v in r["side_by_side"])
        print(
            f"{r['variant']:<42} {r['alone']:>12.0f} {pair:>20} {r['kept']:>6.0%} {min(r['side_by_side']) / first:>15.0%}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"steps": args.steps, "cpus": len(os.sched_getaffinity(0)), "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
