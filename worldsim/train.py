"""``train(cfg, registry)``: the one library entry point of training, which ``worldsim train`` calls.

From a composed config and its typed settings (:func:`worldsim.config.compose_run`) it fixes the process (threads,
``run.seed``) and runs the recipe ``trainer.objective`` names, looked up once in the registry (the
``worldsim_add_recipes`` hook): ``diffusion`` (:func:`train_diffusion`: the world model on
:class:`~worldsim.diffusion.loss.DiffusionLoss`), ``vae`` (the VAE of the ``video_vae`` tokenizer,
:func:`worldsim.video.training.train_vae`, whose summary adds ``eval_psnr``) or a third party's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import worldsim
from worldsim.config import validate
from worldsim.experiment import checkpoint_extras, prepare_training
from worldsim.runs import RunFolder, check_writable, write_text_atomic
from worldsim.runtime import seed_everything, set_threads
from worldsim.settings import RunSettings
from worldsim.trainer import Trainer


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a plain single process): the one that writes files and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def train(cfg: DictConfig, registry: Any, settings: RunSettings | None = None) -> dict[str, Any]:
    """Train what ``cfg`` describes (composed by :func:`worldsim.config.compose_config`); returns the summary.

    ``settings``: ``cfg``'s typed settings when the caller has them (:func:`worldsim.config.compose_run`), else
    they are built here (:func:`worldsim.config.validate`)."""
    settings = validate(cfg, registry) if settings is None else settings
    recipe = registry.get("recipe", settings.trainer.objective)  # known: validate checked the name
    folder = RunFolder.of(cfg)
    if is_main_process():  # before any work: a run folder that cannot be written fails now, not at the first checkpoint
        check_writable(folder.root, "run.dir")
    set_threads(settings.trainer.threads, "trainer.threads")
    seed_everything(int(cfg.run.seed))  # model initialisation, tokenizer fitting: run.seed fixes the run
    summary = recipe(cfg=cfg, settings=settings, registry=registry, run_dir=folder.root, write_config=is_main_process())
    summary["run_dir"] = str(folder.root)
    return summary


def train_diffusion(cfg: DictConfig, settings: RunSettings, registry: Any, run_dir: Path, write_config: bool = True
                    ) -> dict[str, Any]:  # fmt: skip
    """The ``diffusion`` recipe: data, tokenizer and model (:mod:`worldsim.experiment`), the resolved config written
    into the run folder, and the :class:`~worldsim.trainer.Trainer` on the Diffusion Forcing loss."""
    prepared = prepare_training(cfg, settings.data, registry)
    extras = checkpoint_extras(prepared)  # after preparation: it may pin the tokenizer's arguments
    if write_config:
        write_text_atomic(RunFolder(run_dir).config, OmegaConf.to_yaml(extras["config"]))
    trainer = Trainer(prepared.model, prepared.windows, settings=settings.trainer, loss=settings.loss, run_dir=run_dir,
                      seed=int(cfg.run.seed), extra_state=extras)  # fmt: skip
    return trainer.fit()


@worldsim.hookimpl
def worldsim_add_recipes():
    from worldsim.video.training import train_vae

    return {"diffusion": train_diffusion, "vae": train_vae}
