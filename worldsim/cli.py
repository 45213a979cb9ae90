"""The ``worldsim`` command: plugins, data, train, rollout, plan, play, sweep, export, demo.

Bad input (a config, a file, a plugin name) prints one line ``worldsim: error: ...`` and exits with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from worldsim import __version__
from worldsim.errors import ConfigError, WorldsimError

EXIT_BAD_INPUT = 2


def _check_out(folder) -> None:
    """Before any work: the ``--out`` folder can be created and written (:func:`worldsim.runs.check_writable`)."""
    from worldsim.runs import check_writable

    check_writable(folder, "--out")


def _registry():
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    pm = get_plugin_manager()
    return pm, build_registry(pm)


def cmd_plugins(args: argparse.Namespace) -> int:
    import warnings

    from worldsim.plugins import PluginLoadWarning

    with warnings.catch_warnings():  # load failures are listed below, once
        warnings.simplefilter("ignore", PluginLoadWarning)
        pm, registry = _registry()
    rows = sorted(registry.entries())
    width = max([len(n) for _, n, _ in rows] + [4])
    print(f"{'kind':<10} {'name':<{width}} plugin")
    for kind, name, source in rows:
        print(f"{kind:<10} {name:<{width}} {source}")
        # the arguments a config may set (kind.KEY=VALUE) with their defaults: the factory's signature is their one home
        defaults = registry.factory_defaults(kind, name) if kind != "dataset" else _dataset_defaults(name, registry)
        if defaults:
            print(f"{'':<10} {'':<{width}}   " + " ".join(f"{k}={v!r}" for k, v in defaults.items()))
    print(f"shipped models (worldsim plan NAME / worldsim rollout NAME): {_shipped_names()}")
    for name, message in getattr(pm, "worldsim_load_errors", []):
        print(f"failed to load plugin {name!r}: {message}", file=sys.stderr)
    return 0


def _dataset_defaults(name: str, registry) -> dict:
    """A data set's settings as ``dataset=NAME`` composes them (configs/dataset/NAME.yaml or its factory's)."""
    from worldsim.data.sources import dataset_settings

    return {k: v for k, v in dataset_settings({"name": name}, registry).items() if k != "name"}


def _train(overrides: Sequence[str]) -> dict:
    """Compose the config from ``overrides`` and train it (:func:`worldsim.train.train`)."""
    from worldsim.config import compose_run
    from worldsim.train import train

    registry = _registry()[1]
    cfg, settings = compose_run(overrides, registry)
    return train(cfg, registry, settings)


def cmd_train(args: argparse.Namespace) -> int:
    from worldsim.train import is_main_process

    summary = _train(args.overrides)
    if is_main_process():
        print(_format_summary(summary))
    return 0


def _format_summary(summary: dict) -> str:
    keys = ["run_dir", "checkpoint", "steps", "final_loss", "tokens_per_s", "eval_psnr", "tensorboard"]
    return "\n".join(f"{k:>13}: {summary[k]}" for k in keys if k in summary)


def cmd_rollout(args: argparse.Namespace) -> int:
    from worldsim.config import apply_overrides, validate
    from worldsim.data.sources import dataset_modality
    from worldsim.experiment import load_run
    from worldsim.rollout import evaluate_rollouts, format_table
    from worldsim.runtime import set_threads
    from worldsim.settings import RolloutSettings

    _, registry = _registry()
    run = load_run(args.run, registry)
    if args.overrides:
        run.cfg = apply_overrides(run.cfg, args.overrides, allowed=("sampling", "rollout"))
    settings = validate(run.cfg, registry).rollout if args.overrides else RolloutSettings.from_config(run.cfg.rollout)
    set_threads(settings.threads, "rollout.threads")
    out = Path(args.out) if args.out else None
    run.folder.check_report_folders("rollout", out)  # before the work, not after it
    if dataset_modality(str(run.cfg.dataset.name), registry) == "video":  # the run's data set says what it models
        from worldsim.video.rollout import evaluate_video_rollouts, format_video_table

        report = evaluate_video_rollouts(
            run,
            frames=args.frames,
            context=args.context,
            episodes=args.episodes,
            seed=args.seed,
            out_dir=out,
            actions_file=args.actions,
            data_file=args.data,
        )
        print(
            f"rollout of {report['checkpoint']} (step {report['step']}): {report['episodes']} episodes, "
            f"{report['context_frames']} context frames, {report['generated_frames']} generated "
            f"(training length {report['train_frames']} frames), actions: {report['actions']}"
        )
        print(format_video_table(report))
        print(
            f"video: {report['mp4']}  {report['gif']}\njson: {report['json']}\n"
            f"TensorBoard: tensorboard --logdir {report['tensorboard']}"
        )
        return 0
    for flag, value in (("--actions", args.actions), ("--data", args.data)):
        if value:
            raise ConfigError(
                f"{flag}: only video world models take it; {run.checkpoint} models {run.obs_shape} vectors"
            )
    report = evaluate_rollouts(
        run, frames=args.frames, context=args.context, episodes=args.episodes, seed=args.seed, out_dir=out
    )
    print(
        f"rollout of {report['checkpoint']} (step {report['step']}): {report['episodes']} episodes, "
        f"{report['context_tokens']} context tokens, {report['generated_tokens']} generated "
        f"(training length {report['train_tokens']} tokens)"
    )
    print(format_table(report))
    print(f"plot: {report['plot']}\njson: {report['json']}")
    return 0


#: what `export` may change: the planning sections (worldsim.planning.PLANNING_GROUPS) and the rollout's
EXPORT_GROUPS = ("planning", "sampling", "guidance", "task", "rollout")


def cmd_plan(args: argparse.Namespace) -> int:
    from worldsim.planning import plan_run

    overrides = list(args.overrides)
    if args.episodes is not None:
        overrides.append(f"planning.episodes={args.episodes}")
    if args.seed is not None:
        overrides.append(f"planning.seed={args.seed}")
    out = Path(args.out) if args.out else None
    _print_plan_report(plan_run(args.run, overrides, _registry()[1], env=args.env, out_dir=out))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from worldsim.sweep import format_summary, read_summary, run_sweep, sweep_folder

    for flag, value, least in (("--seeds", args.seeds, 1), ("--episodes", args.episodes, 1),
                               ("--first-seed", args.first_seed, 0), ("--eval-seed", args.eval_seed, 0),
                               ("--step", 1 if args.step is None else args.step, 1)):  # fmt: skip
        if value < least:
            raise ConfigError(f"{flag}: got {value}; expected an integer >= {least}")
    against = read_summary(args.against, args.against_label or args.label) if args.against else None
    summary = run_sweep(
        sweep_folder(args.name), args.overrides, seeds=range(args.first_seed, args.first_seed + args.seeds),
        episodes=args.episodes, eval_seed=args.eval_seed, label=args.label, plan_overrides=args.plan,
        registry=_registry()[1], step=args.step,
    )  # fmt: skip
    print(format_summary(summary, against))
    return 0


def _print_plan_report(report: dict) -> None:
    from worldsim.planning import format_plan_table

    s = report["settings"]
    print(
        f"planning with {report['checkpoint']} (step {report['step']}): {report['episodes']} episodes, "
        f"{s['controller']} controller, replanning every {s['open_loop']} steps, guidance scale {s['guidance_scale']}"
    )
    print(format_plan_table(report))
    print(f"plots: {report['plot']}\njson: {report['json']}")


def _shipped_names() -> str:
    from worldsim.pretrained import shipped

    return ", ".join(shipped()) or "none"


def cmd_export(args: argparse.Namespace) -> int:
    from worldsim.config import from_plain, to_plain, with_base_sections
    from worldsim.planning import planning_config
    from worldsim.pretrained import export

    def settings(config: dict) -> dict:  # the planning settings the file is shipped with
        _, registry = _registry()
        cfg = with_base_sections(from_plain(config))  # a run older than a setting gets the base config's value
        return to_plain(planning_config(cfg, args.overrides, registry, EXPORT_GROUPS)[0])

    _check_out(Path(args.out).parent)
    out = export(args.run, args.out, settings if args.overrides else None)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB; weights only)")
    return 0


def cmd_play(args: argparse.Namespace) -> int:
    """``worldsim play``: serve the video model's page (:mod:`worldsim.play`) until interrupted."""
    from worldsim.config import apply_overrides, validate
    from worldsim.experiment import load_run
    from worldsim.play import PlayServer, PlayWorld, host_warning, serve_forever
    from worldsim.runtime import set_threads

    _, registry = _registry()
    run = load_run(args.run, registry)
    if args.overrides:
        run.cfg = apply_overrides(run.cfg, args.overrides, allowed=("sampling",))
        validate(run.cfg, registry)
    out = Path(args.out) if args.out else run.folder.root / "play"
    _check_out(out)
    set_threads(args.threads, "--threads")
    world = PlayWorld(run, registry, context=args.context, episodes=args.episodes)
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr)

    def ready(port: int) -> None:
        shown = f"[{args.host}]" if ":" in args.host else args.host
        print(
            f"worldsim play: {run.checkpoint} at http://{shown}:{port}/ (videos go to {out}; Ctrl-C stops)", flush=True
        )

    serve_forever(PlayServer(world, out, seed=args.seed), args.host, args.port, ready)
    return 0


def _seed_override(args: argparse.Namespace) -> list[str]:
    return [f"run.seed={args.seed}"] if args.seed is not None else []


def cmd_demo(args: argparse.Namespace) -> int:
    """An experiment trained into ``--out``, then what its config asks for: the agent of its ``task`` as
    ``worldsim plan`` runs it, or (no task) rollouts as ``worldsim rollout`` makes them."""
    from worldsim.experiment import load_run
    from worldsim.planning import plan_run
    from worldsim.runs import RunFolder

    _check_out(args.out)
    out = Path(args.out)
    steps = [f"trainer.steps={args.steps}"] if args.steps is not None else []
    print(f"worldsim demo: experiment={args.experiment} (configs/experiment/{args.experiment}.yaml), in {out}")
    summary = _train([f"experiment={args.experiment}", f"run.dir={out}", "trainer.resume=false", *steps,
                      *_seed_override(args), *args.overrides])  # fmt: skip
    print(_format_summary(summary))
    _, registry = _registry()
    if load_run(out, registry).cfg.get("task"):
        episodes = [f"planning.episodes={args.episodes}"] if args.episodes is not None else []
        report = plan_run(out, episodes, registry)  # as `worldsim plan` does
        print()
        _print_plan_report(report)
    else:
        _demo_rollout(out, registry, args.frames)
    print(f"TensorBoard: tensorboard --logdir {RunFolder(out).tensorboard}")
    return 0


def _demo_rollout(out: Path, registry, frames: int | None) -> None:
    from worldsim.experiment import load_run
    from worldsim.rollout import evaluate_rollouts, format_table

    report = evaluate_rollouts(load_run(out, registry), frames=frames)
    print(
        f"\nrollout: {report['context_tokens']} context tokens, then {report['generated_tokens']} generated tokens "
        f"({report['generated_tokens'] / report['train_tokens']:.0f}x the training length), {report['episodes']} held-out episodes"
    )
    print(format_table(report))
    print(f"\nplot: {report['plot']}\njson: {report['json']}")


def cmd_data(args: argparse.Namespace) -> int:
    """``worldsim data NAME ...``: a registered data set's file (:mod:`worldsim.data.command`), or ``task NAME``."""
    if args.name == "task":
        return cmd_data_task(_parse_data_task(args.args))
    from worldsim.data.command import build_for_cli, generate

    _, registry = _registry()
    dataset, names = build_for_cli(args.name, args.args, registry)
    _check_out(Path(dataset.path).parent)
    made = generate(dataset, names)
    print(f"wrote {dataset.path}: {made}")
    return 0


def cmd_data_task(args: argparse.Namespace) -> int:
    """A task's offline data (its ``make_data``) as an npz data set: ``observations`` (episodes, steps, step_dim)."""
    import time

    from worldsim.config import apply_overrides, component_kwargs, from_plain
    from worldsim.data.sources import write_npz

    _, registry = _registry()
    node = apply_overrides(from_plain({"task": {"name": args.name, **registry.factory_defaults("task", args.name)}}),
                           args.overrides, allowed=("task",))  # fmt: skip
    out = Path(args.out)
    _check_out(out.parent)
    task = registry.build(
        "task", args.name, {"dataset": {"name": "npz", "path": str(out)}}, component_kwargs(node.task)
    )
    if not callable(getattr(task, "make_data", None)):
        raise ConfigError(
            f"task {args.name}: it does not make its own data (a data set's file: worldsim data NAME, see worldsim plugins)"
        )
    if args.episodes < 1:
        raise ConfigError(f"--episodes: expected a positive number of episodes, got {args.episodes}")
    start = time.perf_counter()
    arrays = task.make_data(args.episodes, seed=args.seed, progress=True)
    write_npz(out, arrays)
    obs = arrays["observations"]
    print(f"wrote {out}: {obs.shape[0]} {task.name} episodes x {obs.shape[1]} steps of {obs.shape[2]} numbers "
          f"(seed {args.seed}) in {time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


def _parse_data_task(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="worldsim data task",
        description="A task's own offline data (e.g. an expert's) as an npz data set: train on it with dataset=npz.",
    )
    p.add_argument("name", help="a registered task that makes its data (worldsim plugins lists the tasks)")
    p.add_argument("--episodes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("overrides", nargs="*", help="task.KEY=VALUE arguments of the task")
    args, extra = p.parse_known_args(list(argv))  # key=value overrides may follow options
    if any(a.startswith("-") for a in extra):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = list(args.overrides) + extra
    return args


def _add_info_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The plugins and data subcommands."""
    p = sub.add_parser("plugins", help="list registered backbones, tokenizers and guidance objectives")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(
        "data",
        help="make a data set's file: worldsim data NAME [--KEY VALUE ...] [--out FILE] (NAME: a registered data set; "
        "worldsim data NAME --help lists its options), or a task's own data: worldsim data task NAME --episodes N --out F",
        description="worldsim data NAME [--KEY VALUE ...] [--out FILE]: make the file of the data set NAME (worldsim "
        "plugins lists the data sets; worldsim data NAME --help, its options); worldsim data task NAME --episodes N "
        "--out F [task.KEY=VALUE ...]: a task's own offline data as an npz data set.",
    )
    p.add_argument("name", help="a registered data set, or task")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the data set's options (or the task's)")
    p.set_defaults(func=cmd_data)


def _add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The train subcommand."""
    p = sub.add_parser("train", help="train a model: worldsim train experiment=toy [key=value ...]")
    p.add_argument(
        "overrides", nargs="*", help="Hydra-style overrides, e.g. experiment=toy backbone=gru trainer.steps=500"
    )
    p.set_defaults(func=cmd_train)


def _add_rollout_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The rollout subcommand."""
    p = sub.add_parser("rollout", help="long rollout of a trained run, error per horizon against the truth")
    p.add_argument("run", help="a run folder (runs/NAME), a checkpoint file, or a shipped model's name")
    p.add_argument("--frames", type=int, default=None, help="steps to generate (default: 4x the training length)")
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help="context tokens taken from the true sequence (default: rollout.context)",
    )
    p.add_argument(
        "--episodes", type=int, default=None, help="held-out episodes to roll out (default: rollout.episodes)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", default=None, help="folder for rollout.json and rollout.png / rollout.mp4 (default: RUN/rollouts)"
    )
    p.add_argument(
        "--actions", default=None, help="video models: .npy actions (L, A) or (episodes, L, A) to drive the rollout"
    )
    p.add_argument("--data", default=None, help="video models: roll out on this video file (worldsim-video-v1 layout)")
    p.add_argument("overrides", nargs="*", help="sampling.* or rollout.* overrides, e.g. sampling.steps=20")
    p.set_defaults(func=cmd_rollout)


def _add_play_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The play subcommand."""
    p = sub.add_parser(
        "play",
        help="play a video world model in the browser: keys choose the actions, the model draws the next frames",
    )
    p.add_argument("run", help="a video run folder (runs/NAME), a checkpoint file, or a shipped video model's name")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--out", default=None, help="folder for the downloaded videos (default: RUN/play)")
    p.add_argument(
        "--context", type=int, default=None, help="context tokens a game starts from (default: rollout.context)"
    )
    p.add_argument(
        "--episodes", type=int, default=None, help="held-out episodes games start from (default: rollout.episodes)"
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the games' noise")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("overrides", nargs="*", help="sampling.* overrides, e.g. sampling.steps=10 for a faster model")
    p.set_defaults(func=cmd_play)


def _add_plan_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The plan subcommand."""
    p = sub.add_parser(
        "plan",
        help="run the planning agent of a run in its task's env: normalized score table and plan plots",
        epilog=f"shipped planners (RUN may be one of these names): {_shipped_names()}",
    )
    p.add_argument("run", help="a run folder (runs/NAME), a checkpoint file, or a shipped planner's name")
    p.add_argument("--episodes", type=int, default=None, help="episodes to run (default: planning.episodes)")
    p.add_argument("--env", default=None, help="gymnasium id (default: the task's env)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first episode (default: planning.seed)")
    p.add_argument("--out", default=None, help="folder for plan.json and plans.png (default: RUN/plans)")
    p.add_argument(
        "overrides", nargs="*", help="planning.*, sampling.*, guidance.*, task.* overrides or guidance=NAME, task=NAME"
    )
    p.set_defaults(func=cmd_plan)


def _add_sweep_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The sweep subcommand."""
    p = sub.add_parser(
        "sweep",
        help="train a recipe at several seeds and evaluate each on the same episodes (the protocol for planning levers)",
        description="Train the recipe (config overrides) at --seeds seeds into sweeps/NAME/seed<S>, evaluate each on "
        "the same --episodes episodes, print each seed's mean +- standard error, the mean and spread over seeds and, "
        "with --against, the paired difference to another sweep. A killed sweep resumes: run the same command "
        "(or `worldsim sweep NAME` alone). --plan overrides evaluate the trained seeds with other planning settings "
        "under another --label.",
    )
    p.add_argument("name", help="the sweep: sweeps/NAME, or a folder path")
    p.add_argument("--seeds", type=int, default=3, help="how many seeds (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="run.seed of the first (default 0)")
    p.add_argument("--episodes", type=int, default=100, help="episodes per seed (default 100)")
    p.add_argument("--eval-seed", type=int, default=0, help="planning.seed: the first episode's seed (default 0)")
    p.add_argument("--label", default="default", help="the evaluation's name (default: default)")
    p.add_argument("--plan", action="append", default=[], metavar="KEY=VALUE",
                   help="a planning.*, sampling.*, guidance.* override of the evaluation (repeatable)")  # fmt: skip
    p.add_argument("--step", type=int, default=None, metavar="N",
                   help="evaluate each seed's checkpoint of step N, not its last (a learning curve; label-stepN)")  # fmt: skip
    p.add_argument("--against", default=None, metavar="SWEEP", help="a finished sweep to compare with, pair by pair")
    p.add_argument("--against-label", default=None, help="its evaluation label (default: --label)")
    p.add_argument("overrides", nargs="*", help="the recipe: experiment=NAME and key=value overrides of training")
    p.set_defaults(func=cmd_sweep)


def _add_export_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The export subcommand."""
    p = sub.add_parser(
        "export", help="write a run's weights-only file (EMA weights, tokenizer, config), as the shipped models are"
    )
    p.add_argument("run", help="a run folder (runs/NAME) or a checkpoint file")
    p.add_argument("--out", required=True, help="the file to write, e.g. pretrained/NAME.pt")
    p.add_argument(
        "overrides",
        nargs="*",
        help="planning.*, sampling.*, rollout.* overrides or guidance=NAME: the settings the file keeps",
    )
    p.set_defaults(func=cmd_export)


def _add_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The demo subcommand."""
    p = sub.add_parser(
        "demo",
        help="the main job on a small default: train an experiment (default: demo, a planner) and run its agent "
        "(or, without a task, its rollouts)",
    )
    p.add_argument("--experiment", default="demo", help="the experiment (default: demo; demo_toy: damped oscillators)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the experiment's)")
    p.add_argument("--episodes", type=int, default=None, help="planning episodes (default: the experiment's)")
    p.add_argument("--frames", type=int, default=None, help="without a task: steps to roll out")
    p.add_argument("--seed", type=int, default=None, help="run.seed of the training (default: the config's)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the experiment")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldsim", description="World models and planning with Diffusion Forcing.")
    parser.add_argument("--version", action="version", version=f"worldsim {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_info_parsers(sub)
    _add_train_parser(sub)
    _add_rollout_parser(sub)
    _add_plan_parser(sub)
    _add_play_parser(sub)
    _add_sweep_parser(sub)
    _add_export_parser(sub)
    _add_demo_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from worldsim.runtime import limit_openmp_spinning

    limit_openmp_spinning()  # before torch is imported: jobs sharing the cores do not spin against each other
    parser = build_parser()
    # key=value overrides may follow options (rollout RUN --frames 64 sampling.steps=20)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except WorldsimError as exc:
        print(f"worldsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        print(f"worldsim: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("worldsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
