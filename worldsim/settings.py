"""Typed settings of the config sections the core acts on, each built and checked once from its config node.

``TrainerSettings`` (``trainer``), ``SamplingSettings`` (``sampling``), ``PlanSettings`` (``planning``) and
``RolloutSettings`` (``rollout``), ``DataSettings`` (``data``) and ``VAESettings`` (``vae``) have no defaults of their
own: every default lives in ``configs/config.yaml``, and a node missing a key is refused, naming it. All are frozen.
:func:`worldsim.config.validate` builds them once into one :class:`RunSettings` (with the loss's
:class:`~worldsim.diffusion.loss.LossSettings`), so a bad value stops a command before any work, with the field in
the message, and modules take these objects, not config mappings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from worldsim.errors import ConfigError, check_int
from worldsim.nodes import to_plain
from worldsim.runtime import resolve_threads

if TYPE_CHECKING:
    from worldsim.diffusion.loss import LossSettings

LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")
CONTROLLERS = ("actions", "pd", "waypoint")
SAMPLERS = ("ddim", "ddpm")  # sampling.sampler: DDIM with sampling.eta, or DDPM's ancestral step (eta = 1)

S = TypeVar("S")


def _fields(cls: type[S], section: str, node: Any) -> dict[str, Any]:
    """The node's values for ``cls``'s fields: no unknown and no missing keys."""
    values = to_plain(node)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]  # cls is a dataclass
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{section}: unknown key {unknown[0]!r}; expected keys {', '.join(names)}")
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"{section}.{missing[0]}: missing; configs/config.yaml sets every {section} key")
    return values


def _choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{field}: got {value!r}; expected one of {', '.join(choices)}")
    return str(value)


def _number(field: str, value: Any, lo: float = 0.0, hi: float | None = None, hi_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= lo
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if not ok:
        bound = f"a number >= {lo}" if hi is None else f"a number in [{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{field}: got {value!r}; expected {bound}")
    return float(value)


def _positive(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{field}: got {value!r}; expected a number > 0")
    return float(value)


def _warm_start(value: Any) -> float:
    level = _number("planning.warm_start", value, 0.0, 1.0)
    if level == 0:
        raise ConfigError("planning.warm_start: got 0; expected a noise level in (0, 1], or null for no warm start")
    return level


def _name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{field}: got {value!r}; expected a registered name")
    return value


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{field}: got {value!r}; expected true or false")
    return value


@dataclass(frozen=True)
class TrainerSettings:
    """The ``trainer`` section (configs/config.yaml documents each key)."""

    objective: str
    steps: int
    batch_size: int
    lr: float
    lr_schedule: str
    weight_decay: float
    betas: tuple[float, float]
    warmup_steps: int
    grad_clip: float | None
    ema_decay: float
    precision: str
    compile: bool
    device: str
    threads: int | None
    log_every: int
    ckpt_every: int
    resume: bool

    @classmethod
    def from_config(cls, node: Any) -> TrainerSettings:
        v = _fields(cls, "trainer", node)
        betas = v["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(f"trainer.betas: got {betas!r}; expected two numbers like [0.9, 0.99]")
        resolve_threads(v["threads"], "trainer.threads")
        return cls(
            objective=_name("trainer.objective", v["objective"]),  # a recipe: the registry knows the names
            steps=check_int("trainer.steps", v["steps"]),
            batch_size=check_int("trainer.batch_size", v["batch_size"]),
            lr=_number("trainer.lr", v["lr"]),
            lr_schedule=_choice("trainer.lr_schedule", v["lr_schedule"], LR_SCHEDULES),
            weight_decay=_number("trainer.weight_decay", v["weight_decay"]),
            betas=(_number("trainer.betas", betas[0], 0, 1, True), _number("trainer.betas", betas[1], 0, 1, True)),
            warmup_steps=check_int("trainer.warmup_steps", v["warmup_steps"], minimum=0),
            grad_clip=None if v["grad_clip"] is None else _number("trainer.grad_clip", v["grad_clip"]),
            ema_decay=_number("trainer.ema_decay", v["ema_decay"], 0.0, 1.0, hi_open=True),
            precision=_choice("trainer.precision", v["precision"], PRECISIONS),
            compile=_flag("trainer.compile", v["compile"]),
            device=str(v["device"]),
            threads=v["threads"],
            log_every=check_int("trainer.log_every", v["log_every"]),
            ckpt_every=check_int("trainer.ckpt_every", v["ckpt_every"]),
            resume=_flag("trainer.resume", v["resume"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what a checkpoint holds)."""
        return {**dataclasses.asdict(self), "betas": list(self.betas)}


@dataclass(frozen=True)
class SamplingSettings:
    """The ``sampling`` section: how :func:`worldsim.diffusion.sampling.sample` walks its scheduling matrices.

    Checked when built, however it is built (each error names its field). ``chunk_size`` None: the whole horizon
    when context and horizon fit the window, else half the window (a plan is one chunk).
    """

    sampler: str
    steps: int
    eta: float
    schedule: str
    uncertainty_scale: float
    keyframe_stride: int
    chunk_size: int | None
    stabilization_level: float
    use_cache: bool
    clip_x0: float | None
    cfg_scale: float
    history_guidance: float

    def __post_init__(self) -> None:
        from worldsim.diffusion.scheduling import SCHEDULING_KINDS, scheduling_matrix

        checked = {
            "sampler": _choice("sampling.sampler", self.sampler, SAMPLERS),
            "steps": check_int("sampling.steps", self.steps),
            "eta": _number("sampling.eta", self.eta),
            "schedule": _choice("sampling.schedule", self.schedule, SCHEDULING_KINDS),
            "uncertainty_scale": _number("sampling.uncertainty_scale", self.uncertainty_scale),
            "keyframe_stride": check_int("sampling.keyframe_stride", self.keyframe_stride),
            "chunk_size": None if self.chunk_size is None else check_int("sampling.chunk_size", self.chunk_size),
            "stabilization_level": _number("sampling.stabilization_level", self.stabilization_level, 0, 1, True),
            "use_cache": _flag("sampling.use_cache", self.use_cache),
            "clip_x0": None if self.clip_x0 is None else _positive("sampling.clip_x0", self.clip_x0),
            "cfg_scale": _number("sampling.cfg_scale", self.cfg_scale),
            "history_guidance": _number("sampling.history_guidance", self.history_guidance),
        }
        for name, value in checked.items():  # numbers as floats: a frozen dataclass sets them through object
            object.__setattr__(self, name, value)
        scheduling_matrix(self.schedule, 1, self.steps, self.uncertainty_scale, self.keyframe_stride)

    @classmethod
    def from_config(cls, node: Any) -> SamplingSettings:
        return cls(**_fields(cls, "sampling", node))


@dataclass(frozen=True)
class PlanSettings:
    """The ``planning`` section (``worldsim plan``; see configs/config.yaml)."""

    episodes: int
    batch: int
    open_loop: int
    horizon: int | None  # env steps per plan; None = the rest of the episode, at most the model's window
    context: int  # history tokens given as context
    controller: str
    pd_gains: tuple[float, float]
    lookahead: int | None  # waypoint controller: env steps ahead its target lies; None = one token's steps
    guidance_scale: float
    mc_samples: int
    guidance_gradient: str  # "model" (a backward pass through the model) or "x0" (worldsim.diffusion.guidance)
    candidates: int  # plans sampled per agent; the one the guidance objective values most is executed
    warm_start: float | None  # replans start from the previous plan noised to this level; None = from pure noise
    warm_schedule: str | None  # the scheduling matrix of a warm-started replan; None = sampling.schedule's
    seed: int
    threads: int | None
    plots: int

    @classmethod
    def from_config(cls, node: Any) -> PlanSettings:
        v = _fields(cls, "planning", node)
        gains = tuple(float(g) for g in v["pd_gains"])
        if len(gains) != 2:
            raise ConfigError(f"planning.pd_gains: expected [kp, kd], got {list(v['pd_gains'])}")
        resolve_threads(v["threads"], "planning.threads")
        from worldsim.diffusion.guidance import check_gradient
        from worldsim.diffusion.scheduling import SCHEDULING_KINDS

        mc_samples = check_int("planning.mc_samples", v["mc_samples"], 1)

        return cls(
            episodes=check_int("planning.episodes", v["episodes"]),
            batch=check_int("planning.batch", v["batch"], 1),
            open_loop=check_int("planning.open_loop", v["open_loop"], 1),
            horizon=None if v["horizon"] is None else check_int("planning.horizon", v["horizon"], 1),
            context=check_int("planning.context", v["context"], 1),
            controller=_choice("planning.controller", v["controller"], CONTROLLERS),
            pd_gains=(gains[0], gains[1]),
            lookahead=None if v["lookahead"] is None else check_int("planning.lookahead", v["lookahead"]),
            guidance_scale=_number("planning.guidance_scale", v["guidance_scale"]),
            mc_samples=mc_samples,
            guidance_gradient=check_gradient(v["guidance_gradient"], mc_samples, "planning"),
            candidates=check_int("planning.candidates", v["candidates"], 1),
            warm_start=None if v["warm_start"] is None else _warm_start(v["warm_start"]),
            warm_schedule=None
            if v["warm_schedule"] is None
            else _choice("planning.warm_schedule", v["warm_schedule"], SCHEDULING_KINDS),  # fmt: skip
            seed=check_int("planning.seed", v["seed"], 0),
            threads=v["threads"],
            plots=check_int("planning.plots", v["plots"], 0),
        )


@dataclass(frozen=True)
class RolloutSettings:
    """The ``rollout`` section (``worldsim rollout``)."""

    context: int
    episodes: int
    horizons: tuple[int, ...]
    horizon_unit: int | None
    threads: int | None

    @classmethod
    def from_config(cls, node: Any) -> RolloutSettings:
        v = _fields(cls, "rollout", node)
        resolve_threads(v["threads"], "rollout.threads")
        horizons = v["horizons"]
        if not isinstance(horizons, (list, tuple)) or not horizons:
            raise ConfigError(f"rollout.horizons: got {horizons!r}; expected a list of multiples like [1, 2, 4, 8]")
        return cls(
            context=check_int("rollout.context", v["context"]),
            episodes=check_int("rollout.episodes", v["episodes"]),
            horizons=tuple(check_int("rollout.horizons", h) for h in horizons),
            horizon_unit=None if v["horizon_unit"] is None else check_int("rollout.horizon_unit", v["horizon_unit"]),
            threads=v["threads"],
        )


@dataclass(frozen=True)
class DataSettings:
    """The ``data`` section: the training windows (configs/config.yaml documents each key)."""

    seq_len: int
    stride: int
    goal_dims: tuple[int, ...] | None
    token_cache: str | None

    @classmethod
    def from_config(cls, node: Any) -> DataSettings:
        v = _fields(cls, "data", node)
        dims = v["goal_dims"]
        if dims is not None and not isinstance(dims, (list, tuple)):
            raise ConfigError(f"data.goal_dims: got {dims!r}; expected a list of observation dims, or null")
        return cls(
            seq_len=check_int("data.seq_len", v["seq_len"]),
            stride=check_int("data.stride", v["stride"]),
            goal_dims=None if dims is None else tuple(dims),  # checked against the data (worldsim.data.goals)
            token_cache=None if v["token_cache"] is None else str(v["token_cache"]),
        )


@dataclass(frozen=True)
class VAESettings:
    """The ``vae`` section of ``trainer.objective=vae``: the VAE's architecture and its loss's arguments
    (:func:`worldsim.video.vae.split_vae_config` checks them), and a window of ``data.seq_len`` frames that the
    temporal compression divides."""

    arch: Mapping[str, Any]
    loss: Mapping[str, Any]

    @classmethod
    def from_config(cls, node: Any, seq_len: int) -> VAESettings:
        from worldsim.video.vae import split_vae_config

        arch, loss = split_vae_config(to_plain(node or {}))
        if seq_len % arch["temporal_factor"]:
            raise ConfigError(
                f"data.seq_len: {seq_len} frames per window is not a multiple of vae.temporal_factor "
                f"{arch['temporal_factor']}"
            )
        return cls(MappingProxyType(dict(arch)), MappingProxyType(dict(loss)))


@dataclass(frozen=True)
class RunSettings:
    """A run's config as typed settings, one object per section the core acts on, built and checked once
    (:func:`worldsim.config.validate`): ``loss`` holds the loss's keys of ``diffusion``; ``vae`` is set for
    ``trainer.objective=vae`` only."""

    trainer: TrainerSettings
    sampling: SamplingSettings
    planning: PlanSettings
    rollout: RolloutSettings
    loss: LossSettings
    data: DataSettings
    vae: VAESettings | None

    @classmethod
    def from_config(cls, cfg: Any) -> RunSettings:
        from worldsim.diffusion.loss import LossSettings

        trainer = TrainerSettings.from_config(cfg["trainer"])
        data = DataSettings.from_config(cfg["data"])
        vae = VAESettings.from_config(cfg.get("vae"), data.seq_len) if trainer.objective == "vae" else None
        return cls(
            trainer=trainer,
            sampling=SamplingSettings.from_config(cfg["sampling"]),
            planning=PlanSettings.from_config(cfg["planning"]),
            rollout=RolloutSettings.from_config(cfg["rollout"]),
            loss=LossSettings.from_config(to_plain(cfg["diffusion"])),
            data=data,
            vae=vae,
        )
