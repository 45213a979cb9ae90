"""Diffusion core: schedules, parameterizations, the DF loss, scheduling matrices, samplers."""

from worldsim.diffusion.loss import TRAINING_MODES, WEIGHTINGS, diffusion_loss, loss_weights, sample_noise_levels
from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.parameterization import PREDICTIONS
from worldsim.diffusion.sampling import SAMPLERS, Guidance, sample
from worldsim.diffusion.schedules import SCHEDULES, alpha_sigma
from worldsim.diffusion.scheduling import SCHEDULING_KINDS, scheduling_matrix

__all__ = [
    "DiffusionModel",
    "Guidance",
    "PREDICTIONS",
    "SAMPLERS",
    "SCHEDULES",
    "SCHEDULING_KINDS",
    "TRAINING_MODES",
    "WEIGHTINGS",
    "alpha_sigma",
    "diffusion_loss",
    "loss_weights",
    "sample",
    "sample_noise_levels",
    "scheduling_matrix",
]
