"""Merge the plugins' ``worldsim_add_*`` results into name -> factory tables.

Components are chosen by name from configs (``backbone=gru``); the registry gives clear errors for
duplicate names (naming both plugins), unknown names (suggesting the closest) and unknown factory
arguments, and exposes each factory's keyword defaults so a component without a config file works.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import pluggy

from worldsim.errors import PluginError

#: kind -> the hook that provides it.
KINDS = {
    "backbone": "worldsim_add_backbones",
    "tokenizer": "worldsim_add_tokenizers",
    "guidance": "worldsim_add_guidance",
    "task": "worldsim_add_tasks",
    "dataset": "worldsim_add_datasets",
    "video_task": "worldsim_add_video_tasks",
    "recipe": "worldsim_add_recipes",
}
#: kind -> factory arguments worldsim derives from the data (never set by users).
DERIVED = {
    "backbone": ("token_shape", "cond_dim", "max_tokens"),
    "tokenizer": ("obs_shape",),
    "guidance": (),
    "task": ("dataset",),
    "dataset": ("registry",),  # given only to a factory that names it
    "video_task": ("resolution",),
    "recipe": ("cfg", "settings", "registry", "run_dir", "write_config"),  # all given by train()
}


class Registry:
    """Name -> factory tables for each component kind, plus which plugin registered each name."""

    def __init__(self, plugin_manager: pluggy.PluginManager | None = None) -> None:
        #: the plugin manager the components came from (its hooks, e.g. worldsim_configure, go with them)
        self.plugin_manager = plugin_manager
        self._tables: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
        self._sources: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}

    # -- tables -----------------------------------------------------------------------------
    @property
    def backbones(self) -> dict[str, Callable[..., Any]]:
        return self._tables["backbone"]

    @property
    def tokenizers(self) -> dict[str, Callable[..., Any]]:
        return self._tables["tokenizer"]

    @property
    def guidance(self) -> dict[str, Callable[..., Any]]:
        return self._tables["guidance"]

    @property
    def tasks(self) -> dict[str, Callable[..., Any]]:
        return self._tables["task"]

    @property
    def datasets(self) -> dict[str, Callable[..., Any]]:
        return self._tables["dataset"]

    @property
    def video_tasks(self) -> dict[str, Callable[..., Any]]:
        return self._tables["video_task"]

    @property
    def recipes(self) -> dict[str, Callable[..., Any]]:
        return self._tables["recipe"]

    def add(self, kind: str, name: str, factory: Callable[..., Any], plugin: str) -> None:
        """Register ``factory`` as ``name``; a name taken by another plugin raises PluginError."""
        table = self._table(kind)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r}: {kind} names must be non-empty strings, got {name!r}")
        if not callable(factory):
            raise PluginError(
                f"plugin {plugin!r}: {kind} {name!r} factory must be callable, got {type(factory).__name__}"
            )
        if name in table:
            raise PluginError(
                f"{kind} {name!r} is registered by two plugins: {self._sources[kind][name]!r} and {plugin!r}; "
                "rename one or uninstall/block one of the plugins"
            )
        table[name] = factory
        self._sources[kind][name] = plugin

    def names(self, kind: str) -> list[str]:
        return sorted(self._table(kind))

    def entries(self) -> list[tuple[str, str, str]]:
        """(kind, name, plugin) for everything registered, sorted (for ``worldsim plugins``)."""
        return [(kind, name, self._sources[kind][name]) for kind in KINDS for name in sorted(self._tables[kind])]

    def source(self, kind: str, name: str) -> str:
        """Name of the plugin that registered ``name``."""
        self.get(kind, name)
        return self._sources[kind][name]

    def get(self, kind: str, name: str) -> Callable[..., Any]:
        """The factory for ``name``; unknown names raise PluginError suggesting the closest ones."""
        table = self._table(kind)
        if name in table:
            return table[name]
        registered = ", ".join(sorted(table)) or "(none)"
        close = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.5)
        msg = f"unknown {kind} {name!r}"
        msg += f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ";"
        raise PluginError(f"{msg} registered: {registered}")

    # -- factory arguments ------------------------------------------------------------------
    def factory_defaults(self, kind: str, name: str) -> dict[str, Any]:
        """The factory's keyword arguments with defaults, excluding the derived ones (see DERIVED)."""
        sig = _signature(self.get(kind, name), kind, name)
        return {
            p.name: p.default
            for p in sig.parameters.values()
            if p.default is not inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in DERIVED[kind]
        }

    def build(
        self, kind: str, name: str, derived: Mapping[str, Any] | None = None, kwargs: Mapping[str, Any] | None = None
    ) -> Any:
        """Call the factory with the derived arguments and the user's keyword arguments."""
        factory = self.get(kind, name)
        derived = dict(derived or {})
        kwargs = dict(kwargs or {})
        sig = _signature(factory, kind, name)
        params = sig.parameters
        var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
        user_params = sorted(
            p.name
            for p in params.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in DERIVED[kind]
        )
        for key in kwargs:
            if key in DERIVED[kind]:
                raise PluginError(
                    f"{kind} {name!r}: argument {key!r} is derived from the data and cannot be set in the config"
                )
            if key not in params and not var_kw:
                close = difflib.get_close_matches(key, user_params, n=1, cutoff=0.5)
                # no close match: most likely an argument another plugin of this kind took (e.g. backbone=dit
                # over an experiment that set the GRU's `hidden`); Hydra's deletion override drops it
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                drop = "" if close else f"; if another {kind} set it, drop it with ~{kind}.{key}"
                raise PluginError(
                    f"{kind} {name!r} got unknown argument {key!r}{hint}; expected one of {user_params}{drop}"
                )
        for key in derived:
            if key not in params and not var_kw:
                raise PluginError(
                    f"{kind} {name!r} (plugin {self._sources[kind][name]!r}): its factory must accept the derived "
                    f"argument {key!r}; signature is {name}{sig}"
                )
        try:
            sig.bind(**derived, **kwargs)
        except TypeError:
            missing = [
                p.name
                for p in params.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in derived
                and p.name not in kwargs
            ]
            raise PluginError(
                f"{kind} {name!r} is missing required argument(s) {missing}; set them as {kind}.NAME=VALUE"
            ) from None
        return factory(**derived, **kwargs)

    def _table(self, kind: str) -> dict[str, Callable[..., Any]]:
        if kind not in self._tables:
            raise PluginError(f"unknown component kind {kind!r}; expected one of {list(KINDS)}")
        return self._tables[kind]


def _signature(factory: Callable[..., Any], kind: str, name: str) -> inspect.Signature:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError) as e:
        raise PluginError(f"{kind} {name!r}: cannot read the factory's signature ({e})") from None


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Collect every plugin's components; raises PluginError on a bad hook result or duplicate name."""
    registry = Registry(pm)
    for kind, hook_name in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        # Registration order (built-ins first), so a duplicate error names the earlier plugin first.
        for impl in caller.get_hookimpls():
            if impl.hookwrapper or impl.wrapper:
                continue
            plugin = impl.plugin_name
            try:
                result = impl.function()
            except Exception as e:
                raise PluginError(f"plugin {plugin!r}: {hook_name}() raised {type(e).__name__}: {e}") from e
            if result is None:
                continue
            if not isinstance(result, Mapping):
                raise PluginError(
                    f"plugin {plugin!r}: {hook_name}() must return a dict of name -> factory, got {type(result).__name__}"
                )
            for name, factory in result.items():
                registry.add(kind, name, factory, plugin)
    return registry


def default_registry() -> Registry:
    """The components of :func:`worldsim.plugins.get_plugin_manager`'s plugins (what the CLI uses)."""
    from worldsim.plugins import get_plugin_manager

    return build_registry(get_plugin_manager())
