"""Diffusion core: schedules, parameterizations, loss, scheduling matrices, samplers."""
