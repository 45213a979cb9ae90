"""What the network predicts (eps, v or x0) and exact conversions between the three.

With x_k = alpha x0 + sigma eps (alpha^2 + sigma^2 = 1) and v = alpha eps - sigma x0
(Salimans & Ho 2022): x0 = alpha x_k - sigma v and eps = sigma x_k + alpha v.
alpha and sigma broadcast against x (see :func:`expand_levels`).
"""

from __future__ import annotations

import torch

from worldsim.errors import ConfigError

PREDICTIONS = ("eps", "v", "x0")


def check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ConfigError(
            f"diffusion.prediction: unknown prediction {prediction!r}; expected one of {list(PREDICTIONS)}"
        )


def expand_levels(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-token tensor (B, T) to broadcast against tokens x (B, T, *token_shape)."""
    return values.reshape(values.shape + (1,) * (x.dim() - values.dim()))


def target(
    prediction: str, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """The regression target for the network's output."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    check_prediction(prediction)
    raise AssertionError


def to_x0_eps(
    prediction: str, out: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert the network output to (x0_hat, eps_hat) given the noisy input x_t."""
    if prediction == "eps":
        return (x_t - sigma * out) / alpha, out
    if prediction == "x0":
        # sigma is 0 only at k = 0, where eps is irrelevant (samplers return x0 there).
        return out, (x_t - alpha * out) / sigma.clamp_min(1e-12)
    if prediction == "v":
        return alpha * x_t - sigma * out, sigma * x_t + alpha * out
    check_prediction(prediction)
    raise AssertionError
