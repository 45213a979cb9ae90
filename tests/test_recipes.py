"""Training objectives are recipes by name (``worldsim_add_recipes``): ``diffusion`` and ``vae`` are first-party, a
third party's trains from ``worldsim train trainer.objective=NAME``, and an unknown name fails when the config is
composed, naming ``trainer.objective``."""

from __future__ import annotations

import torch
from torch import nn

import worldsim
from worldsim.cli import main
from worldsim.config import compose_run
from worldsim.data.windows import Batch
from worldsim.plugins import get_plugin_manager
from worldsim.registry import build_registry
from worldsim.trainer import Trainer


class Points:
    """Windows of 4 random 2-d points (the trainer's data: ``sample`` gives a batch with ``x``, ``cond``, ``mask``)."""

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        x = torch.randn(batch_size, 4, 2, generator=generator)
        return Batch(x, None, torch.ones(batch_size, 4, dtype=torch.bool))


class Output:
    def __init__(self, loss: torch.Tensor):
        self.loss, self.logs = loss, {}


def regression_loss(module: nn.Module, batch: Batch, generator: torch.Generator) -> Output:
    return Output((module(batch.x) - batch.x.flip(-1)).square().mean())  # learn to swap the two coordinates


def train_swap(cfg, settings, registry, run_dir, write_config):
    """A third party's recipe: a linear map trained by worldsim's Trainer with the run's trainer settings."""
    torch.manual_seed(int(cfg.run.seed))
    trainer = Trainer(nn.Linear(2, 2), Points(), settings=settings.trainer, run_dir=run_dir, seed=int(cfg.run.seed),
                      loss_fn=regression_loss, extra_state={"kind": "swap"})  # fmt: skip
    summary = trainer.fit()
    summary["recipe"] = "swap"
    return summary


class SwapPlugin:
    @worldsim.hookimpl
    def worldsim_add_recipes(self):
        return {"swap": train_swap}


def test_first_party_recipes_are_registered():
    registry = build_registry(get_plugin_manager())
    assert {"diffusion", "vae"} <= set(registry.recipes)
    assert registry.source("recipe", "diffusion") == "worldsim.train"


def test_a_third_party_recipe_trains_from_the_cli(tmp_path, capsys):
    pm = get_plugin_manager()
    plugin = SwapPlugin()
    pm.register(plugin, name="test-swap-recipe")
    try:
        run = tmp_path / "run"
        argv = ["train", "experiment=toy", "trainer.objective=swap", f"run.dir={run}", "trainer.steps=40",
                "trainer.lr=0.05", "trainer.threads=1", "trainer.log_every=10", "run.seed=0"]  # fmt: skip
        assert main(argv) == 0
        assert "steps: 40" in capsys.readouterr().out
        payload = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
        assert payload["kind"] == "swap" and payload["step"] == 40
        torch.manual_seed(0)  # run.seed: the recipe's initial weights
        start, trained = nn.Linear(2, 2), nn.Linear(2, 2)
        trained.load_state_dict(payload["model"])
        points = Batch(torch.randn(256, 1, 2), None, torch.ones(256, 1, dtype=torch.bool))
        with torch.no_grad():  # it learns to swap the coordinates
            assert regression_loss(trained, points, None).loss < 0.5 * regression_loss(start, points, None).loss
    finally:
        pm.unregister(plugin)


def test_an_unknown_recipe_fails_when_composed_naming_the_field(capsys):
    assert main(["train", "experiment=toy", "trainer.objective=difusion"]) == 2
    err = capsys.readouterr().err
    assert "trainer.objective" in err and "'diffusion'" in err


def test_the_vae_section_is_checked_when_composed():
    import pytest

    from worldsim.errors import ConfigError

    with pytest.raises(ConfigError, match="vae.temporal_factor"):
        compose_run(["experiment=vae_maze_pixels", "data.seq_len=3", "vae.temporal_factor=2"])
