"""The plugin manager: built-in plugins first, then third-party entry points (group ``worldsim``).

A third-party plugin that fails to import or register is skipped, recorded in
``pm.worldsim_load_errors`` as ``(name, message)`` and warned about by name; the others still load.
Set ``WORLDSIM_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry points (built-ins are always registered).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import warnings
from collections.abc import Callable

import pluggy

import worldsim_plugins
from worldsim import hookspecs
from worldsim.errors import PluginError

#: Modules registered directly (under their module names): the core's own hook implementations (its data sets),
#: then the first-party plugins (``worldsim_plugins.MODULES``).
BUILTIN_PLUGINS = ("worldsim.data.sources", "worldsim.train", *worldsim_plugins.MODULES)
ENTRY_POINT_GROUP = "worldsim"
AUTOLOAD_ENV = "WORLDSIM_DISABLE_PLUGIN_AUTOLOAD"

_CACHE: dict[bool, pluggy.PluginManager] = {}


class _PluginManager(pluggy.PluginManager):
    """pluggy's manager for project ``"worldsim"`` with the record of plugins that failed to load."""

    def __init__(self) -> None:
        super().__init__("worldsim")
        self.worldsim_load_errors: list[tuple[str, str]] = []  # list of (plugin name, message)


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; the rest of worldsim still works."""


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """Installed entry points of the ``worldsim`` group (separate so tests can fake them)."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _autoload_default() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def get_plugin_manager(autoload: bool | None = None, *, fresh: bool = False) -> pluggy.PluginManager:
    """The process-wide plugin manager (built once per ``autoload`` value; ``fresh=True`` builds a new,
    uncached one). ``autoload=None`` loads entry points unless WORLDSIM_DISABLE_PLUGIN_AUTOLOAD is set."""
    if autoload is None:
        autoload = _autoload_default()
    autoload = bool(autoload)
    if fresh:
        return _build(autoload)
    if autoload not in _CACHE:
        _CACHE[autoload] = _build(autoload)
    return _CACHE[autoload]


def clear_plugin_cache() -> None:
    """Forget cached plugin managers (the next ``get_plugin_manager()`` reloads plugins)."""
    _CACHE.clear()


def _build(autoload: bool) -> pluggy.PluginManager:
    pm = _PluginManager()
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        _load(pm, modname, functools.partial(importlib.import_module, modname), f"built-in module {modname}")
    if autoload:
        for ep in _entry_points():
            if pm.is_blocked(ep.name):
                continue
            _load(pm, ep.name, ep.load, f"entry point {ep.value!r}")
    pm.check_pending()
    return pm


def _load(pm: _PluginManager, name: str, load: Callable[[], object], where: str) -> None:
    """Import one plugin and register it; failures are recorded and warned about, never raised."""
    try:
        plugin = load()
    except Exception as e:
        _fail(pm, name, f"failed to import ({where}): {type(e).__name__}: {e}")
        return
    if pm.is_registered(plugin):
        return  # e.g. an entry point pointing at a built-in module
    if pm.get_plugin(name) is not None:
        _fail(pm, name, f"({where}) not loaded: the plugin name {name!r} is already taken")
        return
    try:
        pm.register(plugin, name=name)
    except Exception as e:
        _fail(pm, name, f"failed to register ({where}): {e}")
        return
    # A hook implementation without a spec is almost always a typo (worldsim_add_backbone...).
    unknown = sorted(
        caller.name
        for caller in pm.get_hookcallers(plugin) or []
        if not caller.has_spec() and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls())
    )
    if unknown:
        pm.unregister(plugin)
        known = sorted(n for n in dir(hookspecs) if n.startswith("worldsim_"))
        _fail(pm, name, f"({where}) implements unknown hook(s) {unknown}; known hooks: {known}")


def _fail(pm: _PluginManager, name: str, message: str) -> None:
    pm.worldsim_load_errors.append((name, message))
    warnings.warn(f"worldsim plugin {name!r} {message}", PluginLoadWarning, stacklevel=3)


def require_loaded(pm: pluggy.PluginManager) -> None:
    """Raise PluginError listing every plugin that failed to load (for strict callers)."""
    errors = getattr(pm, "worldsim_load_errors", [])
    if errors:
        raise PluginError("; ".join(f"plugin {n!r} {m}" for n, m in errors))
