"""The README's plugin guide is real code: its example backbone passes the kit and trains by name."""

import re
import types
from pathlib import Path

import pytest

import worldsim
from worldsim.testing import check_backbone

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def example_plugin():
    text = README.read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "worldsim_add_backbones" in b)
    module = types.ModuleType("my_worldsim_plugin")
    exec(compile(block, "README.md", "exec"), module.__dict__)
    return module


def test_readme_backbone_passes_the_conformance_kit(example_plugin):
    check_backbone(example_plugin.CausalConv, token_shape=(4,), cond_dim=2)
    check_backbone(example_plugin.CausalConv, token_shape=(3,), cond_dim=0, width=8, kernel=2)


def test_readme_backbone_trains_by_name(example_plugin, tmp_path):
    from worldsim.cli import train
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry

    pm = get_plugin_manager(fresh=True, autoload=False)
    pm.register(example_plugin, name="my_plugin")
    registry = build_registry(pm)
    assert registry.source("backbone", "causal_conv") == "my_plugin"
    summary = train(
        ["experiment=toy", "backbone=causal_conv", "backbone.width=16", "trainer.steps=3", "trainer.batch_size=4",
         "dataset.num_episodes=8", "data.seq_len=8", f"run.dir={tmp_path}"],
        registry=registry,
    )
    assert summary["steps"] == 3
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
