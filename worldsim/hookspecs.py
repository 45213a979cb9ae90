"""Every hook a worldsim plugin can implement (pluggy project ``"worldsim"``).

A plugin is any module or object with functions marked ``@worldsim.hookimpl`` whose names are
listed here. Third-party plugins are found through the entry-point group ``worldsim``::

    [project.entry-points.worldsim]
    my_models = "my_package.worldsim_plugin"

Plugins may implement any subset of the hooks. The docstrings below are the reference docs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

#: Marker for hook specifications (only used by worldsim itself).
hookspec = pluggy.HookspecMarker("worldsim")


@hookspec
def worldsim_add_backbones() -> Mapping[str, Callable[..., Any]]:
    """Return ``{name: factory}`` of denoising backbones.

    ``factory(token_shape: tuple, cond_dim: int, max_tokens: int | None, **kwargs) -> torch.nn.Module``.
    The first three arguments are derived by worldsim from the data (token shape, condition size,
    training window length); the keyword arguments come from the ``backbone`` config section, and the
    factory's own keyword defaults are the defaults shown to users (``backbone=NAME`` works without a
    config file).

    The module implements ``forward(x, k, cond=None, cache=None) -> out`` with ``x`` of shape
    ``(B, T, *token_shape)``, per-token noise levels ``k`` of shape ``(B, T)`` in [0, 1] (0 = clean),
    ``cond`` ``(B, T, cond_dim)`` or None, and ``out`` shaped like ``x`` (an eps, v or x0 prediction, as
    configured). Attributes: ``causal: bool`` (True: the output at token t depends only on tokens <= t)
    and ``max_tokens: int | None`` (longest sequence it accepts; None = unlimited).

    A causal backbone may support a cache for fast rollouts: ``init_cache(batch_size)`` returns an
    empty prefix, ``forward(..., cache=c)`` runs the given tokens after that prefix without changing
    it, and ``append(c, x_done, k_done, cond_done)`` returns a new cache with finished tokens added.
    Check a backbone with :func:`worldsim.testing.check_backbone`. Names must be unique across plugins.
    """
    raise NotImplementedError  # a specification: pluggy reads its signature, plugins implement it


@hookspec
def worldsim_add_tokenizers() -> Mapping[str, Callable[..., Any]]:
    """Return ``{name: factory}`` of tokenizers (observations <-> diffusion tokens).

    ``factory(obs_shape: tuple, **kwargs) -> torch.nn.Module`` where ``obs_shape`` is the shape of one
    environment observation (derived from the data) and the keyword arguments come from the
    ``tokenizer`` config section. The module provides ``encode(obs (B, L, *obs_shape)) -> x (B, T,
    *token_shape)``, ``decode(x) -> obs``, ``token_shape: tuple``, ``frames_per_token: int`` (L = T *
    frames_per_token) and optionally ``fit(obs)`` to learn statistics from data. Its state lives in its
    ``state_dict`` (buffers/parameters), which is saved in checkpoints. Check it with
    :func:`worldsim.testing.check_tokenizer`.
    """
    raise NotImplementedError  # a specification: pluggy reads its signature, plugins implement it


@hookspec
def worldsim_add_guidance() -> Mapping[str, Callable[..., Any]]:
    """Return ``{name: factory}`` of guidance objectives.

    ``factory(**kwargs) -> objective`` with ``objective(x0_obs, ctx) -> value (B,)``: a differentiable
    score to MAXIMIZE of the predicted clean observations ``x0_obs (B, H, *obs_shape)``; ``ctx`` is a
    dict from the planner (e.g. the goal, the current observation). Its gradient steers sampling at
    every row of the scheduling matrix, scaled by ``guidance.scale``. The value of sample b must depend
    only on ``x0_obs[b]``. Check it with :func:`worldsim.testing.check_objective`.
    """
    raise NotImplementedError  # a specification: pluggy reads its signature, plugins implement it


@hookspec
def worldsim_add_tasks() -> Mapping[str, Callable[..., Any]]:
    """Return ``{name: factory}`` of planning tasks: what the planner needs to know about an environment.

    ``factory(dataset: dict, **kwargs) -> task``: ``dataset`` is the run's resolved ``dataset`` node (derived by
    worldsim: a task reads what it needs from it, e.g. the maze, and refuses data that is not its own with a
    :class:`worldsim.errors.ConfigError` naming the field); the keyword arguments come from the ``task`` config
    section (``worldsim plan RUN task=NAME task.KEY=VALUE``). The task object provides:

    - ``name: str`` and ``env_id: str``, the gymnasium id planned in by default;
    - ``step_layout: Mapping[str, slice]``: where the parts of one data step ``(a_t, o_{t+1})`` live in the
      model's step vector: ``"action"`` and ``"observation"`` (required, ``observation`` ending the vector),
      ``"position"`` (what goal objectives and plots read; required), ``"velocity"`` (optional; the ``pd``
      controller needs it), each a ``slice``;
    - ``make_env(env_id: str | None = None) -> gymnasium.Env``: one environment (``None``: ``env_id``); an id
      the task cannot plan in raises a ConfigError naming ``--env``;
    - ``observe(obs (B, obs_dim)) -> (B, observation width)``: the step's observation part of the vector env's
      observations (the identity when the env observes what the data stores);
    - ``goal(info) -> (B, G)`` and ``success(info) -> (B,) bool``, read from the vector env's ``info`` (G = the
      width of ``position``);
    - ``guidance_context() -> dict``: what the task adds to the objectives' ``ctx`` (e.g. ``walls`` of a maze);
    - ``reference_returns(env_id) -> (random, expert) | None``: the returns of the normalized score
      ``100 * (R - random) / (expert - random)``, None when the task has none;
    - ``draw(ax, env_id)``: the background of the plan plots (a matplotlib axis), and ``plot_xy(p (..., P)) ->
      (..., 2)``: where a position is drawn on it.
    - optionally ``make_data(episodes, seed=0, progress=True) -> {"observations": (episodes, steps, D)}``: the
      task's own offline data as step vectors, which ``worldsim data task NAME --out F.npz`` writes for
      ``dataset=npz``.

    Check a task with :func:`worldsim.testing.check_task`. Names must be unique across plugins.
    """
    raise NotImplementedError  # a specification: pluggy reads its signature, plugins implement it


@hookspec
def worldsim_add_datasets() -> Mapping[str, Callable[..., Any]]:
    """Return ``{name: factory}`` of data sets: where the episodes of ``dataset=NAME`` come from.

    ``factory(**settings) -> data set``: the settings are the run's ``dataset`` node without its ``name``, completed
    by ``configs/dataset/NAME.yaml`` when worldsim ships one, else by the factory's own keyword defaults (so
    ``dataset=NAME dataset.KEY=VALUE`` works without a config file). The factory checks them and raises a
    :class:`worldsim.errors.ConfigError` naming the field (``dataset.KEY: ...``). A factory with a ``registry``
    parameter also gets the run's registry (to build other components by name, as the ``video`` data set builds
    its video task). The data set object provides:

    - ``load(split="train", length=None, count=None) -> worldsim.data.SequenceData``: the episodes, each an array
      ``(L, *obs_shape)`` of observations (or step vectors) and optionally ``(L, A)`` actions. ``split="eval"``
      asks for held-out episodes of at least ``length`` steps (cut to ``length``), at most ``count`` of them,
      which rollouts compare with the model's continuation; bad or missing data raise
      :class:`worldsim.errors.DataError` naming the file or field;
    - optionally ``generate(progress=True) -> str``, with ``path``: the file ``generate`` writes (the ``path``
      setting). ``worldsim data NAME --KEY VALUE ... [--out FILE]`` sets the settings from its options (``--out``
      is ``path``; options left out keep their defaults), checks that ``path`` can be written, calls ``generate``
      and prints ``wrote PATH: `` and the line it returns (what was made, how fast).

    For that command the factory may also provide ``cli_options(registry) -> (help, aliases)`` (a static method
    when the factory is the data set's class): ``help`` ``{setting: help text}`` and ``aliases`` ``{"--option":
    setting}``, other option names of a setting. Check a data set with :func:`worldsim.testing.check_dataset`.
    The factory may say what its episodes are with a ``modality`` attribute: ``"video"`` (frames ``(L, H, W, 3)``:
    ``worldsim rollout`` reports a model trained on them as a video world model, with videos and frame metrics) or
    ``"state"`` (vectors; the default when it has none). Names must be unique across plugins.
    """
    raise NotImplementedError  # a specification: pluggy reads its signature, plugins implement it


@hookspec
def worldsim_add_recipes() -> Mapping[str, Callable[..., Any]]:
    """Return ``{name: recipe}`` of training recipes: what ``worldsim train trainer.objective=NAME`` trains.

    ``recipe(cfg, settings, registry, run_dir, write_config) -> dict``: ``cfg`` is the composed config (a
    DictConfig), ``settings`` its typed :class:`worldsim.settings.RunSettings` (built and checked once, when the
    config was composed; ``settings.trainer`` is what :class:`worldsim.trainer.Trainer` takes), ``registry`` the
    components, ``run_dir`` the run folder (writable) and ``write_config`` whether this process writes files (rank
    0). The recipe builds its data and model, trains (typically with the Trainer) and returns the summary the CLI
    prints (``checkpoint``, ``steps``, ``final_loss``, ...). :func:`worldsim.train.train` has already fixed the
    threads and ``run.seed`` and adds ``run_dir`` to the summary. First-party: ``diffusion`` (the world model on
    the Diffusion Forcing loss) and ``vae`` (the VAE of the ``video_vae`` tokenizer).
    """
    raise NotImplementedError  # a specification: pluggy reads its signature, plugins implement it


@hookspec
def worldsim_add_video_tasks() -> Mapping[str, Callable[..., Any]]:
    """Return ``{name: factory}`` of video tasks: procedural action-conditioned video domains of the ``video`` data
    set (``dataset=video dataset.task=NAME``), with what rollouts measure in their frames.

    ``factory(resolution: int, **settings) -> video task``: ``resolution`` is the frame height = width (derived
    from the data set's ``dataset.resolution``); the settings are the task's own keys of the ``dataset`` node (the
    factory's other parameters; a key the node lacks takes the factory's default: set it with
    ``+dataset.KEY=VALUE``). The factory checks them, raising a ConfigError naming ``dataset.KEY``. The video task
    provides:

    - ``settings: dict``: its checked settings, plain JSON values; generated files record them (with ``task``,
      ``resolution``, ``episodes``, ``length`` and ``seed``) and a file made with other settings is refused;
    - ``fps: int``, the frame rate of its videos;
    - ``generate(episodes, length, seed, only=None, progress=True) -> dict``: ``frames`` uint8 ``(E, L, R, R, 3)``,
      ``actions`` float ``(E, L, A)`` (``actions[e, t]`` led from frame t-1 to frame t; zeros at t = 0) and
      ``positions`` float ``(E, L, 2)``, where the tracked object is in each frame. Seeded per episode: ``only``
      (a range of episode indices) makes just those episodes, with the frames they have in the whole set, and a
      longer ``length`` continues the same episodes;
    - ``find(frames uint8 (..., R, R, 3)) -> dict``: the tracked object found in each frame, ``found`` bool
      ``(...)`` and ``centroid_px`` float ``(..., 2)`` (pixel row, col; NaN where not found), e.g. by its colour
      with :func:`worldsim.video.find_agents` and the task's palette;
    - ``to_position(centroid_px (..., 2)) -> (..., 2)``: a pixel position in the unit of ``positions``;
      ``position_unit: str`` names that unit and ``tracked_within: float`` is the distance in it within which a
      found object counts as tracked;
    - optionally ``extra_metrics(frames) -> {name: (...) array}``: more per-frame metrics for rollout reports.
    - optionally ``world(positions (L, 2), actions (L, A)) -> world``: the true environment where a context of its
      data (the tracked object's positions and the actions) left it; ``world.step(action (A,)) -> (frame uint8
      (R, R, 3), position (2,))`` advances it one frame. ``worldsim play`` shows it beside the model, driven by the
      same actions;
    - optionally ``action_keys: dict[str, list[float]]``: the action of each key of ``worldsim play`` (names
      ``up``, ``down``, ``left``, ``right``, ``none``); the default moves along the first two action dimensions,
      (row, col) as in an image: up is ``[-1, 0]``, right ``[0, 1]``.

    The factory may carry ``cli_help`` ``{setting: help text}`` and ``cli_aliases`` ``{"--option": setting}`` for the
    options of ``worldsim data video --task NAME`` (class attributes when the factory is the task's class).

    Rollouts report the share of frames with the object found, its position error and the tracked share, next to
    baselines that know no dynamics (the object frozen at its last context position, a random true position; see
    :mod:`worldsim.video.rollout`). Check a video task with
    :func:`worldsim.testing.check_video_task`. Names must be unique across plugins.
    """
    raise NotImplementedError  # a specification: pluggy reads its signature, plugins implement it


@hookspec(historic=True)
def worldsim_configure(config: Any) -> None:
    """Called once with the fully composed run config (an OmegaConf ``DictConfig``).

    Plugins may read and validate their own config section here and raise
    :class:`worldsim.errors.ConfigError` with a one-line message naming the field. Historic: plugins
    registered later still receive the call.
    """
