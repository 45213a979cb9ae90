"""``train(cfg, registry)``: the one library entry point of training, which ``worldsim train`` calls.

From a composed config it fixes the process (threads, ``run.seed``), builds the data, tokenizer and model
(:mod:`worldsim.experiment`), writes the resolved config into the run folder and runs the
:class:`~worldsim.trainer.Trainer`. ``trainer.objective`` picks what is trained: ``diffusion`` (the world
model, on :class:`~worldsim.diffusion.loss.DiffusionLoss`) or ``vae`` (the VAE of the ``video_vae`` tokenizer,
:func:`worldsim.video.training.train_vae`, whose summary adds ``eval_psnr``).
"""

from __future__ import annotations

import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

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
    folder = RunFolder.of(cfg)
    if is_main_process():  # before any work: a run folder that cannot be written fails now, not at the first checkpoint
        check_writable(folder.root, "run.dir")
    set_threads(settings.trainer.threads, "trainer.threads")
    seed_everything(int(cfg.run.seed))  # model initialisation, tokenizer fitting: run.seed fixes the run
    if settings.trainer.objective == "vae":
        from worldsim.video.training import train_vae

        return train_vae(cfg, settings, registry, folder.root, write_config=is_main_process())
    prepared = prepare_training(cfg, settings.data, registry)
    extras = checkpoint_extras(prepared)  # after preparation: it may pin the tokenizer's arguments
    if is_main_process():
        write_text_atomic(folder.config, OmegaConf.to_yaml(extras["config"]))
    trainer = Trainer(
        prepared.model,
        prepared.windows,
        settings=settings.trainer,
        loss=settings.loss,
        run_dir=folder.root,
        seed=int(cfg.run.seed),
        extra_state=extras,
    )
    summary = trainer.fit()
    summary["run_dir"] = str(folder.root)
    return summary
