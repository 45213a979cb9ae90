"""The plugin guide (docs/plugins.md) is real code: its module is the example package's module, its pyproject
excerpt matches the package's, and that backbone passes the kit and trains by name. The README's links into the
docs lead to pages that exist."""

import importlib.util
import re
from pathlib import Path

import pytest

from worldsim.testing import check_backbone

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "plugins.md"
PACKAGE = ROOT / "plugins" / "examples" / "worldsim-causal-conv"
MODULE = PACKAGE / "worldsim_causal_conv.py"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S)


def test_guide_module_is_the_example_package_module():
    block = next(b for b in _blocks("python") if "worldsim_add_backbones" in b)
    assert block == MODULE.read_text(), f"docs/plugins.md's plugin block differs from {MODULE.relative_to(ROOT)}"


def test_guide_pyproject_excerpt_matches_the_package():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    excerpt = tomllib.loads(next(b for b in _blocks("toml") if "entry-points" in b))
    package = tomllib.loads((PACKAGE / "pyproject.toml").read_text())

    def check(part, full, where):
        for key, value in part.items():
            assert key in full, f"docs/plugins.md's pyproject has {where}{key}, the package's has not"
            if isinstance(value, dict):
                check(value, full[key], f"{where}{key}.")
            else:
                assert full[key] == value, f"{where}{key}: docs/plugins.md {value!r} != package {full[key]!r}"

    check(excerpt, package, "")
    assert package["project"]["entry-points"]["worldsim"] == {"causal_conv": "worldsim_causal_conv"}


@pytest.fixture(scope="module")
def example_plugin():
    spec = importlib.util.spec_from_file_location("worldsim_causal_conv_guide", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guide_backbone_passes_the_conformance_kit(example_plugin):
    check_backbone(example_plugin.CausalConv, token_shape=(4,), cond_dim=2)
    check_backbone(example_plugin.CausalConv, token_shape=(3,), cond_dim=0, width=8, kernel=2)


def test_guide_backbone_trains_by_name(example_plugin, tmp_path):
    from worldsim.config import compose_config
    from worldsim.plugins import get_plugin_manager
    from worldsim.registry import build_registry
    from worldsim.train import train

    pm = get_plugin_manager(fresh=True, autoload=False)
    pm.register(example_plugin, name="my_plugin")
    registry = build_registry(pm)
    assert registry.source("backbone", "causal_conv") == "my_plugin"
    summary = train(
        compose_config(
            [
                "experiment=toy",
                "backbone=causal_conv",
                "backbone.width=16",
                "trainer.steps=3",
                "trainer.batch_size=4",
                "dataset.num_episodes=8",
                "data.seq_len=8",
                f"run.dir={tmp_path}",
            ],
            registry,
        ),
        registry,
    )
    assert summary["steps"] == 3
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def _anchors(page: Path) -> set[str]:
    """The heading anchors of a page, as the docs build (Python-Markdown's toc) and GitHub make plain headings'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", h).strip().lower()) for h in headings}


def test_readme_links_into_docs_exist():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    links = re.findall(r"\]\((docs/[^)#\s]*)(?:#([^)\s]*))?\)", text)
    assert links, "the README links into docs/"
    missing = sorted({path for path, _ in links if not (ROOT / path).is_file()})
    assert not missing, f"README links to missing docs: {missing}"
    broken = sorted({f"{path}#{anchor}" for path, anchor in links if anchor and anchor not in _anchors(ROOT / path)})
    assert not broken, f"README links to missing anchors: {broken}"
