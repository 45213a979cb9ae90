"""Goal-conditioned training windows: hindsight relabelling with a hold at the goal.

A goal is a resting state: the observation dims ``goal_dims`` (a position, say) at the goal's values and every
other dim of the step at zero (no action, no velocity). Its **goal token** is that step, repeated over the
tokenizer's frames and encoded; the condition of every token of a window is ``[goal token, 1]``, and the all-zero
vector is the null condition that ``diffusion.cond_dropout`` trains (classifier-free guidance on the goal, Ho &
Salimans 2022), which the trailing 1 keeps apart from a real goal whose encoding happens to be near zero.

Relabelling (Andrychowicz et al. 2017's hindsight relabelling, as goal-conditioned planners use it): each window
draws a token tau uniformly among its real tokens; the goal is that token's last step, and every token after tau
is the goal token: the trajectory arrives, then stays (Diffusion Veteran's padding after the goal, Lu et al. 2025:
data that shows stopping). A plan sampled for a goal therefore ends at rest on it, and a causal model sees the goal
from its first token on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from worldsim.data.windows import Batch, TokenWindows
from worldsim.errors import ConfigError


def check_goal_dims(value, obs_shape: Sequence[int], field: str = "data.goal_dims") -> tuple[int, ...] | None:
    """``data.goal_dims``: None (no goal condition) or distinct observation dims of vector observations."""
    if value is None:
        return None
    if len(obs_shape) != 1:
        raise ConfigError(f"{field}: a goal condition needs vector observations (D,), got shape {tuple(obs_shape)}")
    dims = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else None
    width = int(obs_shape[0])
    if (
        not dims
        or any(isinstance(d, bool) or not isinstance(d, int) or not 0 <= d < width for d in dims)
        or len(set(dims)) != len(dims)
    ):
        raise ConfigError(f"{field}: got {value!r}; expected distinct dims of the {width}-number step, like [2, 3]")
    return tuple(dims)


def goal_cond_dim(tokenizer, goal_dims: Sequence[int] | None) -> int:
    """Numbers the goal adds to each token's condition: a goal token and the indicator (0 without a goal)."""
    return 0 if goal_dims is None else int(tokenizer.token_shape[0]) + 1


def goal_condition(tokenizer, goals: torch.Tensor, goal_dims: Sequence[int], obs_dim: int) -> torch.Tensor:
    """goals (B, len(goal_dims)) -> conditions (B, token_dim + 1): the encoded resting step at the goal, and 1."""
    step = goals.new_zeros(goals.shape[0], tokenizer.frames_per_token, obs_dim)
    step[..., list(goal_dims)] = goals[:, None, :].to(step.dtype)
    with torch.no_grad():
        token = tokenizer.encode(step)[:, 0]
    return torch.cat([token, token.new_ones(token.shape[0], 1)], dim=1)


class GoalWindows(TokenWindows):
    """:class:`TokenWindows` whose windows are relabelled with a goal from their own stream (module docstring);
    the goal condition follows any conditions the data has (actions)."""

    def __init__(self, episodes, seq_len: int, conds, *, tokenizer, goal_dims: Sequence[int], obs_dim: int):
        super().__init__(episodes, seq_len, conds)
        self.tokenizer, self.goal_dims, self.obs_dim = tokenizer, tuple(goal_dims), int(obs_dim)
        self.cond_dim += goal_cond_dim(tokenizer, goal_dims)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        batch = super().sample(batch_size, generator)
        b, t = batch.x.shape[:2]
        real = batch.mask.sum(dim=1)  # >= 1: a window starts inside its episode
        tau = (torch.rand(b, generator=generator, dtype=torch.float64) * real).long().clamp(max=t - 1)
        f = self.tokenizer.frames_per_token
        with torch.no_grad():
            last = self.tokenizer.decode(batch.x[torch.arange(b), tau][:, None])[:, f - 1]  # (B, D): tau's last step
        goal = goal_condition(self.tokenizer, last[:, list(self.goal_dims)], self.goal_dims, self.obs_dim)
        after = torch.arange(t)[None, :] > tau[:, None]
        x = torch.where(after[..., None], goal[:, None, :-1], batch.x)
        cond = goal[:, None, :].expand(b, t, goal.shape[1])
        cond = cond if batch.cond is None else torch.cat([batch.cond, cond], dim=-1)
        return Batch(x, cond.contiguous(), batch.mask | after)
