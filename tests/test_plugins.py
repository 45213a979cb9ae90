"""Plugin manager (built-ins, entry points, failures) and registry (duplicates, unknown names, factory args)."""

from __future__ import annotations

import importlib.metadata
import sys
import textwrap

import pytest

import worldsim
from worldsim import plugins
from worldsim.errors import PluginError
from worldsim.plugins import BUILTIN_PLUGINS, PluginLoadWarning, get_plugin_manager
from worldsim.registry import build_registry


@pytest.fixture
def fake_eps(tmp_path, monkeypatch):
    """Write plugin modules into tmp_path and expose them as 'worldsim' entry points."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created = []

    def make(entries: dict[str, str]):
        eps = []
        for name, source in entries.items():
            modname = f"ws_test_plugin_{name}"
            (tmp_path / f"{modname}.py").write_text(textwrap.dedent(source))
            created.append(modname)
            eps.append(importlib.metadata.EntryPoint(name=name, value=modname, group="worldsim"))
        monkeypatch.setattr(plugins, "_entry_points", lambda: eps)
        monkeypatch.delenv(plugins.AUTOLOAD_ENV, raising=False)
        return eps

    yield make
    for m in created:
        sys.modules.pop(m, None)


GOOD = """
import worldsim

def build_mlp(token_shape, cond_dim, max_tokens, width=32, depth=2, **extra):
    return ("mlp", token_shape, cond_dim, max_tokens, width, depth, extra)

@worldsim.hookimpl
def worldsim_add_backbones():
    return {"mlp": build_mlp}

@worldsim.hookimpl
def worldsim_add_guidance():
    return {"toward": lambda scale=1.0: (lambda x, ctx: x.sum())}
"""


def test_builtins_are_registered_with_their_module_names():
    pm = get_plugin_manager(autoload=False, fresh=True)
    reg = build_registry(pm)
    assert "gru" in reg.backbones and "state" in reg.tokenizers
    assert reg.source("backbone", "gru") == "worldsim_plugins.gru"
    assert reg.source("tokenizer", "state") == "worldsim_plugins.state"
    assert all(pm.get_plugin(name) is not None for name in BUILTIN_PLUGINS)
    assert pm.worldsim_load_errors == []
    assert ("backbone", "gru", "worldsim_plugins.gru") in reg.entries()


def test_entry_point_failing_to_import_is_reported_by_name_and_the_rest_load(fake_eps):
    fake_eps({"good": GOOD, "broken": "raise ImportError('needs the missing package foo')\n"})
    with pytest.warns(PluginLoadWarning, match=r"'broken'.*needs the missing package foo"):
        pm = get_plugin_manager(fresh=True)
    assert [name for name, _ in pm.worldsim_load_errors] == ["broken"]
    reg = build_registry(pm)
    assert reg.source("backbone", "mlp") == "good"
    assert "gru" in reg.backbones and "toward" in reg.guidance


def test_entry_point_with_a_misspelled_hook_is_reported_and_unregistered(fake_eps):
    typo = """
import worldsim

@worldsim.hookimpl
def worldsim_add_backbone():
    return {"x": None}
"""
    fake_eps({"typo": typo, "good": GOOD})
    with pytest.warns(PluginLoadWarning, match=r"'typo'.*worldsim_add_backbone"):
        pm = get_plugin_manager(fresh=True)
    assert pm.get_plugin("typo") is None and pm.get_plugin("good") is not None
    assert [n for n, _ in pm.worldsim_load_errors] == ["typo"]
    assert "mlp" in build_registry(pm).backbones


def test_disable_autoload_env_skips_entry_points(fake_eps, monkeypatch):
    fake_eps({"good": GOOD})
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    pm = get_plugin_manager(fresh=True)
    assert pm.get_plugin("good") is None and "mlp" not in build_registry(pm).backbones
    assert "gru" in build_registry(pm).backbones
    monkeypatch.delenv(plugins.AUTOLOAD_ENV)
    assert "mlp" in build_registry(get_plugin_manager(fresh=True)).backbones


def test_plugin_manager_is_cached_per_process_unless_fresh():
    plugins.clear_plugin_cache()
    a = get_plugin_manager(autoload=False)
    assert get_plugin_manager(autoload=False) is a
    assert get_plugin_manager(autoload=False, fresh=True) is not a
    plugins.clear_plugin_cache()
    assert get_plugin_manager(autoload=False) is not a


def test_duplicate_name_names_both_plugins(fake_eps):
    fake_eps(
        {
            "mygru": "import worldsim\n@worldsim.hookimpl\ndef worldsim_add_backbones():\n    return {'gru': lambda token_shape, cond_dim, max_tokens: None}\n"
        }
    )
    pm = get_plugin_manager(fresh=True)
    with pytest.raises(PluginError, match=r"backbone 'gru'.*'worldsim_plugins.gru'.*'mygru'"):
        build_registry(pm)


@pytest.mark.parametrize(
    "body, match",
    [
        ("return ['gru']", r"plugin 'bad'.*must return a dict.*list"),
        ("raise RuntimeError('boom')", r"plugin 'bad'.*raised RuntimeError: boom"),
    ],
)
def test_bad_hook_results_name_the_plugin(fake_eps, body, match):
    fake_eps({"bad": f"import worldsim\n@worldsim.hookimpl\ndef worldsim_add_tokenizers():\n    {body}\n"})
    with pytest.raises(PluginError, match=match):
        build_registry(get_plugin_manager(fresh=True))


def test_unknown_name_suggests_the_closest():
    reg = build_registry(get_plugin_manager(autoload=False, fresh=True))
    with pytest.raises(
        PluginError, match=r"^unknown backbone 'gur'; did you mean 'gru'\? registered: (.*, )?gru(, .*)?$"
    ):
        reg.get("backbone", "gur")
    with pytest.raises(
        PluginError, match=r"^unknown tokenizer 'pixelz'; did you mean 'pixels'\? registered: (.*, )?pixels(, .*)?$"
    ):
        reg.build("tokenizer", "pixelz", {"obs_shape": (3,)}, {})
    with pytest.raises(PluginError, match=r"^unknown tokenizer 'xyz'; registered: .*state"):
        reg.build("tokenizer", "xyz", {"obs_shape": (3,)}, {})
    with pytest.raises(PluginError, match=r"unknown component kind 'model'"):
        reg.get("model", "gru")


def test_factory_defaults_exclude_derived_arguments(fake_eps):
    fake_eps({"good": GOOD})
    reg = build_registry(get_plugin_manager(fresh=True))
    assert reg.factory_defaults("backbone", "gru") == {
        "hidden": 256,
        "layers": 2,
        "embed": 256,
        "noise_embed": 64,
        "channels": 32,
        "patch": 1,
    }
    assert reg.factory_defaults("tokenizer", "state") == {"normalizer": "gaussian", "frame_stack": 1}
    assert reg.factory_defaults("backbone", "mlp") == {"width": 32, "depth": 2}
    assert reg.factory_defaults("guidance", "toward") == {"scale": 1.0}


def test_build_passes_derived_and_user_arguments(fake_eps):
    fake_eps({"good": GOOD})
    reg = build_registry(get_plugin_manager(fresh=True))
    derived = {"token_shape": (4,), "cond_dim": 2, "max_tokens": 16}
    assert reg.build("backbone", "mlp", derived, {"width": 8, "extra_flag": True}) == (
        "mlp",
        (4,),
        2,
        16,
        8,
        2,
        {"extra_flag": True},
    )
    net = reg.build("backbone", "gru", derived, {"hidden": 8, "embed": 8, "noise_embed": 4})
    assert net.hidden == 8 and net.causal and net.max_tokens is None


def test_build_rejects_bad_arguments():
    reg = build_registry(get_plugin_manager(autoload=False, fresh=True))
    derived = {"token_shape": (4,), "cond_dim": 0, "max_tokens": None}
    with pytest.raises(
        PluginError,
        match=r"^backbone 'gru' got unknown argument 'hiden' \(did you mean 'hidden'\?\); expected one of \['channels', 'embed', 'hidden', 'layers', 'noise_embed', 'patch'\]$",
    ):
        reg.build("backbone", "gru", derived, {"hiden": 3})
    # an argument another backbone took (no close match): the error says how to drop it
    with pytest.raises(
        PluginError,
        match=r"^backbone 'dit' got unknown argument 'hidden'; expected one of \[.*'width'\]; if another backbone "
        r"set it, drop it with ~backbone\.hidden$",
    ):
        reg.build("backbone", "dit", derived, {"hidden": 3})
    with pytest.raises(PluginError, match=r"'token_shape' is derived"):
        reg.build("backbone", "gru", derived, {"token_shape": (5,)})
    reg.add("backbone", "needs", lambda token_shape, cond_dim, max_tokens, depth: depth, plugin="t")
    with pytest.raises(PluginError, match=r"missing required argument\(s\) \['depth'\]"):
        reg.build("backbone", "needs", derived, {})
    assert reg.build("backbone", "needs", derived, {"depth": 3}) == 3
    reg.add("backbone", "narrow", lambda token_shape, cond_dim: 0, plugin="t")
    with pytest.raises(PluginError, match=r"'narrow'.*plugin 't'.*must accept the derived argument 'max_tokens'"):
        reg.build("backbone", "narrow", derived, {})
    with pytest.raises(PluginError, match=r"plugin 't'.*must be callable"):
        reg.add("guidance", "g", 3, plugin="t")


def test_configure_hook_is_historic():
    pm = get_plugin_manager(autoload=False, fresh=True)
    pm.hook.worldsim_configure.call_historic(kwargs={"config": {"backbone": {"name": "gru"}}})
    seen = []

    class Late:
        @worldsim.hookimpl
        def worldsim_configure(self, config):
            seen.append(config["backbone"]["name"])

    pm.register(Late())
    assert seen == ["gru"]
