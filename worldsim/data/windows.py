"""Fixed-length training windows over token episodes, with padding masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worldsim.errors import DataError


@dataclass
class Batch:
    """A training batch: tokens (B, T, *token_shape), conditions (B, T, cond_dim) or None,
    and a (B, T) bool mask of real (not padded) tokens."""

    x: torch.Tensor
    cond: torch.Tensor | None
    mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.x.to(device, non_blocking=True),
            None if self.cond is None else self.cond.to(device, non_blocking=True),
            self.mask.to(device, non_blocking=True),
        )


class TokenWindows:
    """Windows of ``seq_len`` tokens drawn uniformly from a list of episodes.

    ``episodes[i]`` is a (L_i, *token_shape) tensor, ``conds[i]`` a (L_i, cond_dim) tensor (or None
    for all). A window never crosses an episode boundary; an episode shorter than ``seq_len`` is
    padded at the end and the padding is masked out.
    """

    def __init__(self, episodes: list[torch.Tensor], seq_len: int, conds: list[torch.Tensor] | None = None):
        if not episodes:
            raise DataError("dataset: no episodes to train on")
        if seq_len < 1:
            raise DataError(f"data.seq_len: expected a positive number of tokens, got {seq_len}")
        sizes = {tuple(e.shape[1:]) for e in episodes}
        if len(sizes) != 1:
            raise DataError(f"dataset: episodes have tokens of different sizes {sorted(sizes)}")
        for i, e in enumerate(episodes):
            if not torch.isfinite(e).all():
                raise DataError(f"dataset: episode {i} contains NaN or inf values")
            if conds is not None:
                if conds[i].shape[0] != e.shape[0]:
                    raise DataError(f"dataset: episode {i} has {e.shape[0]} tokens but {conds[i].shape[0]} conditions")
                if not torch.isfinite(conds[i]).all():
                    raise DataError(f"dataset: conditions of episode {i} contain NaN or inf values")
        self.episodes = [e.float() for e in episodes]
        self.conds = None if conds is None else [c.float() for c in conds]
        self.seq_len = seq_len
        self.token_shape = tuple(episodes[0].shape[1:])
        self.cond_dim = 0 if conds is None else int(conds[0].shape[-1])
        lengths = torch.tensor([e.shape[0] for e in episodes], dtype=torch.float64)
        # A window start is drawn uniformly over all valid starts of all episodes.
        self._starts_per_episode = (lengths - seq_len + 1).clamp_min(1)
        self._episode_probs = self._starts_per_episode / self._starts_per_episode.sum()

    @property
    def num_tokens(self) -> int:
        return sum(e.shape[0] for e in self.episodes)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch drawn with ``generator`` only (so a given generator state gives the same batch)."""
        idx = torch.multinomial(self._episode_probs, batch_size, replacement=True, generator=generator)
        offsets = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        xs: list[torch.Tensor] = []
        cs: list[torch.Tensor] = []  # stays empty without conditions (self.conds is None: c is None)
        ms: list[torch.Tensor] = []
        for i, u in zip(idx.tolist(), offsets.tolist(), strict=True):
            start = int(u * float(self._starts_per_episode[i]))
            x, c, m = self._window(i, start)
            xs.append(x)
            if c is not None:
                cs.append(c)
            ms.append(m)
        cond = None if self.conds is None else torch.stack(cs)
        return Batch(torch.stack(xs), cond, torch.stack(ms))

    def _window(self, i: int, start: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        ep = self.episodes[i][start : start + self.seq_len]
        n = ep.shape[0]
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[:n] = True
        pad = self.seq_len - n
        x = torch.cat([ep, ep.new_zeros((pad,) + self.token_shape)]) if pad else ep
        c = None
        if self.conds is not None:
            c = self.conds[i][start : start + self.seq_len]
            c = torch.cat([c, c.new_zeros(pad, self.cond_dim)]) if pad else c
        return x, c, mask
