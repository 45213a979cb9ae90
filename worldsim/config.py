"""Config composition from ``configs/`` with Hydra's compose API.

Components are chosen by registry name: ``backbone=NAME`` works for any registered backbone, also a
third-party one that ships no YAML, whose factory's own keyword defaults become its config node (so
``backbone.KEY=VALUE`` sets its arguments). No ``instantiate`` of user-given targets, no chdir, no
logging takeover. Hydra's errors become one-line :class:`ConfigError` messages.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from omegaconf import DictConfig, OmegaConf

from worldsim.errors import ConfigError, PluginError
from worldsim.nodes import first_line as _first_line
from worldsim.nodes import to_plain as to_plain  # re-exported: worldsim.config.to_plain is where callers find it

if TYPE_CHECKING:
    from worldsim.settings import RunSettings

#: config groups that select a registered component by name (same names as the registry's kinds)
COMPONENT_GROUPS = ("backbone", "tokenizer", "guidance", "task")


def config_dir() -> Path:
    """The folder holding config.yaml and the config groups (installed as package ``worldsim_configs``)."""
    return Path(str(resources.files("worldsim_configs")))


def available(group: str) -> list[str]:
    """YAML options shipped in ``configs/<group>/``."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def _yaml_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    """Keep the factory defaults a YAML config can hold (numbers, strings, bools, None, lists of those)."""

    def ok(v: Any) -> bool:
        if isinstance(v, (list, tuple)):
            return all(ok(x) for x in v)
        return v is None or isinstance(v, (bool, int, float, str))

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items() if ok(v)}


def _register_component_nodes(registry) -> None:
    """Give every registered component and data set without a YAML file a config node built from its factory."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group in (*COMPONENT_GROUPS, "dataset"):
        shipped = set(available(group))
        for name in registry.names(group):
            if name not in shipped:
                node = {"name": name, **_yaml_defaults(registry.factory_defaults(group, name))}
                store.store(group=group, name=name, node=node)


def _unknown_option_error(overrides: Sequence[str], message: str, registry) -> ConfigError:
    """Turn Hydra's 'Could not find GROUP/NAME' into our unknown-name message with suggestions."""
    for ov in overrides:
        key, sep, value = ov.lstrip("+~").partition("=")
        if not sep or "." in key:
            continue
        if key in COMPONENT_GROUPS:
            names = sorted(registry.names(key))
        elif (config_dir() / key).is_dir():
            names = available(key)
        else:
            continue
        if value not in names:
            close = difflib.get_close_matches(value, names, n=3)
            hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
            what = "registered" if key in COMPONENT_GROUPS else "available"
            return ConfigError(f"unknown {key} {value!r}; {hint}{what}: {', '.join(names) or 'none'}")
    return ConfigError(f"config: {message}")


def _unknown_component_argument(overrides: Sequence[str], exc: BaseException, registry) -> ConfigError | None:
    """'backbone.depth=3' on a backbone without that argument: name the component and its arguments."""
    text = f"{exc} {exc.__cause__ or ''}"
    if "not in struct" not in text:
        return None
    for ov in overrides:
        key = ov.lstrip("+~").partition("=")[0]
        group, dot, arg = key.partition(".")
        if dot and group in COMPONENT_GROUPS and f"'{arg.split('.')[0]}'" in text:
            try:  # which component the rest of the overrides select
                name = _compose([o for o in overrides if o != ov])[group].name
            except Exception:
                return None
            expected = sorted(registry.factory_defaults(group, name))
            close = difflib.get_close_matches(arg, expected, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return ConfigError(f"{key}: {group} {name!r} has no argument {arg!r}{hint}; expected one of {expected}")
    return None


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="worldsim"):
        return compose(config_name="config", overrides=list(overrides))


def compose_config(overrides: Sequence[str] = (), registry=None) -> DictConfig:
    """Compose ``configs/config.yaml`` with ``key=value`` overrides (Hydra syntax) and validate it."""
    return compose_run(overrides, registry)[0]


def compose_run(overrides: Sequence[str] = (), registry=None) -> tuple[DictConfig, RunSettings]:
    """The composed config (as :func:`compose_config`) and its typed settings, built once (:func:`validate`)."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    if registry is None:
        registry = build_registry(get_plugin_manager())
    pm = registry.plugin_manager or get_plugin_manager()
    _register_component_nodes(registry)
    overrides = list(overrides)
    for ov in overrides:
        if "=" not in ov and not ov.startswith("~"):  # ~key: Hydra's deletion of a key
            raise ConfigError(f"malformed override {ov!r}: expected key=value (for example trainer.steps=100)")
    try:
        cfg = _compose(overrides)
    except OverrideParseException as exc:
        hint = next((f"; quote a value with '#' or '\\' in it: {k}='{v}'" for k, _, v in (o.partition("=") for o in overrides)
                     if ("#" in v or "\\" in v) and v[:1] not in "'\""), "")  # fmt: skip
        raise ConfigError(f"malformed override: {_first_line(exc)}{hint}") from None
    except MissingConfigException as exc:
        raise _unknown_option_error(overrides, _first_line(exc), registry) from None
    except ConfigCompositionException as exc:
        unknown = _unknown_component_argument(overrides, exc, registry)
        if unknown is not None:
            raise unknown from None
        cause = exc.__cause__ or exc
        raise ConfigError(
            f"config: {_first_line(exc)} ({_first_line(cause)})" if cause is not exc else f"config: {_first_line(exc)}"
        ) from None
    except Exception as exc:  # omegaconf errors (bad interpolation, wrong type) are user input too
        if type(exc).__module__.startswith(("omegaconf", "hydra")):
            raise ConfigError(f"config: {_first_line(exc)}") from None
        raise
    settings = validate(cfg, registry)
    pm.hook.worldsim_configure.call_historic(kwargs={"config": cfg})
    return cfg, settings


def validate(cfg: DictConfig, registry) -> RunSettings:
    """Check the values the core uses, naming the field and what was expected; the run's typed settings."""
    from worldsim.diffusion.parameterization import PREDICTIONS
    from worldsim.diffusion.schedules import SCHEDULES
    from worldsim.settings import RunSettings

    for key, allowed in {"diffusion.schedule": SCHEDULES, "diffusion.prediction": PREDICTIONS}.items():
        value = OmegaConf.select(cfg, key)  # the model's keys of the section; the loss's are LossSettings'
        if value not in allowed:
            raise ConfigError(f"{key}: got {value!r}; expected one of {', '.join(map(str, allowed))}")
    settings = RunSettings.from_config(cfg)  # each section is checked by its settings object, once
    try:
        registry.get("recipe", settings.trainer.objective)  # what `worldsim train` runs (worldsim_add_recipes)
    except PluginError as exc:
        raise ConfigError(f"trainer.objective: {exc}") from None
    for group in COMPONENT_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "name" not in node:
            raise ConfigError(f"{group}: expected a mapping with a 'name' key, got {node!r}")
        registry.get(group, node.name)  # unknown names fail with suggestions
    return settings


def component_kwargs(node: DictConfig | dict) -> dict[str, Any]:
    """The factory arguments of a component node (everything but its name)."""
    if isinstance(node, DictConfig):
        # a DictConfig's container is a dict keyed by its (str) config keys; the stub returns any container
        data = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
    else:
        data = dict(node)
    data.pop("name", None)
    return data


#: sections whose settings a saved run may lack (keys added after it was trained); they come from the base config
EVALUATION_SECTIONS = ("sampling", "planning", "rollout")


def base_config() -> DictConfig:
    """``configs/config.yaml`` as it is, without its defaults list: the one home of every default."""
    cfg = OmegaConf.load(config_dir() / "config.yaml")
    assert isinstance(cfg, DictConfig), "config.yaml is a mapping"
    cfg.pop("defaults", None)
    return cfg


def dataset_node(node: Mapping[str, Any]) -> dict[str, Any]:
    """A ``dataset`` node completed by its data set's file in ``configs/dataset/`` (the one home of those
    defaults): keys the node lacks come from there, and interpolations are resolved after the merge."""
    name = node.get("name")
    file = config_dir() / "dataset" / f"{name}.yaml"
    defaults = OmegaConf.load(file) if isinstance(name, str) and file.is_file() else OmegaConf.create({})
    merged = OmegaConf.merge({"dataset": defaults}, {"dataset": dict(node)})
    try:
        resolved = cast(dict[str, Any], OmegaConf.to_container(merged, resolve=True))  # a merge of mappings
        return cast(dict[str, Any], resolved["dataset"])
    except Exception as exc:  # an interpolation the node cannot resolve
        raise ConfigError(f"dataset: {_first_line(exc)}") from None


#: what a run saved before these ``data`` settings existed was trained with: every step, no goal condition
DATA_BEFORE_THEY_EXISTED = {"stride": 1, "goal_dims": None, "token_cache": None}


def with_base_sections(cfg: DictConfig, registry=None) -> DictConfig:
    """A saved run's config with the keys its evaluation sections lack taken from the base config. A run saved
    before the ``task`` section existed gets the task registered under its data set's name, if there is one (with
    ``planning.multi_goal``, which has moved to ``task.multi_goal``); ``registry``: where tasks are looked up
    (default: the plugins of :func:`worldsim.plugins.get_plugin_manager`)."""
    base = base_config()
    merged = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg)))
    data = merged.setdefault("data", {})
    for key, value in DATA_BEFORE_THEY_EXISTED.items():
        data.setdefault(key, value)
    if "task" not in merged:
        from worldsim.registry import default_registry

        multi_goal = bool((merged.get("planning") or {}).pop("multi_goal", False))
        name = str((merged.get("dataset") or {}).get("name"))
        known = name in (default_registry() if registry is None else registry).tasks
        merged["task"] = {"name": name, "multi_goal": multi_goal} if known else None
    for section in EVALUATION_SECTIONS:
        merged[section] = OmegaConf.merge(base[section], merged.get(section) or {})
    return merged


def from_plain(data: dict[str, Any]) -> DictConfig:
    return OmegaConf.create(data)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], allowed: Sequence[str]) -> DictConfig:
    """Dotted ``key=value`` overrides on a saved run config, limited to the ``allowed`` top-level sections
    (e.g. sampling settings at rollout time; the model's own settings are fixed by its checkpoint)."""
    from omegaconf import OmegaConf

    cfg = cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg)))  # created from a dict: a DictConfig
    OmegaConf.set_struct(cfg, True)
    for ov in overrides:
        key, sep, value = ov.partition("=")
        if not sep or not key:
            raise ConfigError(f"malformed override {ov!r}: expected key=value (for example sampling.steps=20)")
        if key.split(".")[0] not in allowed:
            raise ConfigError(
                f"override {key!r}: only {', '.join(s + '.*' for s in allowed)} can change after training"
            )
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"override {key!r}: no such key in the run's config")
        try:
            OmegaConf.update(cfg, key, OmegaConf.create({"v": _parse_value(value)}).v, merge=False)
        except Exception as exc:
            raise ConfigError(f"override {ov!r}: {_first_line(exc)}") from None
    return cfg


def _parse_value(text: str):
    import yaml  # type: ignore[import-untyped]  # omegaconf's dependency; types-PyYAML is not installed

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"malformed override value {text!r}") from None
