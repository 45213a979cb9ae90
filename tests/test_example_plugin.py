"""The example third-party plugin package (plugins/examples/worldsim-causal-conv) works as a user gets it:
built and installed by pip (into a temporary folder, so the venv is untouched; offline, no build isolation),
then found through its entry point by `worldsim plugins` and `worldsim train`, and passing the kit."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worldsim.testing import check_backbone

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "plugins" / "examples" / "worldsim-causal-conv"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """pip install the package into a fresh folder; returns that folder (put it on PYTHONPATH)."""
    pytest.importorskip("setuptools")  # the build backend, used from this environment (no build isolation)
    base = tmp_path_factory.mktemp("example_plugin")
    src, target = base / "src", base / "site"
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    shutil.copytree(PACKAGE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_CACHE_DIR": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


def _run(installed: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "WORLDSIM_DISABLE_PLUGIN_AUTOLOAD"}
    env["PYTHONPATH"] = os.pathsep.join([str(installed), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_install_has_module_and_entry_point(installed):
    assert (installed / "worldsim_causal_conv.py").is_file()
    (dist,) = [
        d
        for d in importlib.metadata.distributions(path=[str(installed)])
        if d.metadata["Name"] == "worldsim-causal-conv"
    ]
    eps = [(ep.group, ep.name, ep.value) for ep in dist.entry_points]
    assert eps == [("worldsim", "causal_conv", "worldsim_causal_conv")]
    assert not list(installed.glob("worldsim_plugins*")), "the example must not ship anything under worldsim_plugins"


def test_worldsim_plugins_lists_it(installed):
    proc = _run(installed, "-m", "worldsim.cli", "plugins")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert ["backbone", "causal_conv", "causal_conv"] in rows, proc.stdout
    assert "'causal_conv'" not in proc.stderr, proc.stderr  # no load error for this plugin


def test_worldsim_train_by_name(installed, tmp_path):
    run_dir = tmp_path / "run"
    proc = _run(
        installed,
        "-m",
        "worldsim.cli",
        "train",
        "experiment=toy",
        "backbone=causal_conv",
        "backbone.width=16",
        "trainer.steps=3",
        "trainer.batch_size=4",
        "dataset.num_episodes=8",
        "data.seq_len=8",
        f"run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert "name: causal_conv" in (run_dir / "config.yaml").read_text()


def test_installed_factory_passes_the_kit(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.delitem(sys.modules, "worldsim_causal_conv", raising=False)
    import worldsim_causal_conv

    assert Path(worldsim_causal_conv.__file__).resolve().parent == installed.resolve()
    factory = worldsim_causal_conv.worldsim_add_backbones()["causal_conv"]
    check_backbone(factory, token_shape=(16,), cond_dim=2, width=16)
    monkeypatch.delitem(sys.modules, "worldsim_causal_conv")
