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

from worldsim.config import to_plain
from worldsim.experiment import checkpoint_extras, prepare_training
from worldsim.runs import RunFolder, check_writable, write_text_atomic
from worldsim.runtime import seed_everything, set_threads
from worldsim.settings import TrainerSettings
from worldsim.trainer import Trainer


def is_main_process() -> bool:
    """Rank 0 under torchrun (or a plain single process): the one that writes files and prints."""
    return int(os.environ.get("RANK", "0")) == 0


def train(cfg: DictConfig, registry: Any) -> dict[str, Any]:
    """Train what ``cfg`` describes (composed by :func:`worldsim.config.compose_config`); returns the summary."""
    folder = RunFolder.of(cfg)
    if is_main_process():  # before any work: a run folder that cannot be written fails now, not at the first checkpoint
        check_writable(folder.root, "run.dir")
    settings = TrainerSettings.from_config(cfg.trainer)
    set_threads(settings.threads, "trainer.threads")
    seed_everything(int(cfg.run.seed))  # model initialisation, tokenizer fitting: run.seed fixes the run
    if settings.objective == "vae":
        from worldsim.video.training import train_vae

        return train_vae(cfg, registry, folder.root, write_config=is_main_process())
    prepared = prepare_training(cfg, registry)
    plain = to_plain(prepared.cfg)  # after preparation: it may pin the tokenizer's arguments
    if is_main_process():
        write_text_atomic(folder.config, OmegaConf.to_yaml(plain))
    trainer = Trainer(
        prepared.model,
        prepared.windows,
        trainer_cfg=plain["trainer"],
        diffusion_cfg=plain["diffusion"],
        run_dir=folder.root,
        seed=int(cfg.run.seed),
        extra_state=checkpoint_extras(prepared),
    )
    summary = trainer.fit()
    summary["run_dir"] = str(folder.root)
    return summary
