"""Diffusion Forcing as a stream: tokens generated chunk by chunk as their conditions arrive.

A world model that a person plays does not know its future actions: the conditions of a chunk (the actions of its
frames) exist only when the chunk is asked for. :class:`Stream` runs the loop of
:func:`worldsim.diffusion.sampling.sample` over chunks (:class:`worldsim.diffusion.walk.ChunkLoop`, DF Alg. 2) one
chunk per :meth:`Stream.step`, with the same ``sampling`` settings: the same scheduling matrix per chunk, the
finished tokens shown at the stabilization level, the cache extended per chunk (or rebuilt for a limited window),
classifier-free and history guidance. Given the same conditions and generator, its tokens are the ones ``sample``
returns with ``chunk_size`` equal to the stream's chunk, bit for bit. Its memory stays bounded: the buffer keeps
only the finished tokens the model can still be shown. Guidance by an objective and warm starts are ``sample``'s
alone: a stream has no plan to guide.
"""

from __future__ import annotations

import torch

from worldsim.diffusion.model import DiffusionModel
from worldsim.diffusion.sampling import _check_call, _empty_context
from worldsim.diffusion.walk import ChunkLoop, Walk
from worldsim.errors import ConfigError, check_int
from worldsim.settings import SamplingSettings

__all__ = ["Stream"]


class Stream:
    """Tokens after ``context`` (B, Tc, *tok), one chunk per :meth:`step`.

    ``cond`` (B, Tc, cond_dim): the context's conditions, for a model trained with them (None otherwise). ``window``
    and ``generator`` as for ``sample``; ``capacity``: tokens the buffer holds before it drops the ones the model
    can no longer be shown."""

    def __init__(
        self,
        model: DiffusionModel,
        settings: SamplingSettings,
        context: torch.Tensor,
        cond: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        window: int | None = None,
        capacity: int = 256,
    ) -> None:
        _check_call(model, settings, 1, cond, None, None, 1.0)
        context = _empty_context(model, context, None, None)
        B, n_ctx = context.shape[0], context.shape[1]
        capacity = check_int("stream capacity", capacity, 1)
        self.chunk = 1 if settings.chunk_size is None else check_int("sampling.chunk_size", settings.chunk_size, 1)
        buffer = None
        if cond is not None:
            if cond.dim() != 3 or cond.shape[:2] != (B, n_ctx):
                raise ConfigError(
                    f"stream cond: expected the context's ({B}, {n_ctx}, cond_dim), got {tuple(cond.shape)}"
                )
            buffer = cond.new_zeros((B, max(capacity, n_ctx + self.chunk), cond.shape[2])).to(context.device)
            buffer[:, :n_ctx] = cond
        walk = Walk(model, settings, None, generator, None, None, settings.steps)
        with torch.no_grad():
            self._loop = ChunkLoop(walk, context, max(capacity, n_ctx + self.chunk), buffer, window)
        self.conditioned = cond is not None

    @property
    def generated(self) -> int:
        """Tokens generated so far."""
        return self._loop.generated

    def step(self, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The next chunk (B, c, *tok): ``cond`` (B, c, cond_dim) are its tokens' conditions (c = the stream's
        chunk when there are none)."""
        loop = self._loop
        if self.conditioned != (cond is not None):
            raise ConfigError(
                "stream cond: "
                + (
                    "the model is conditioned: each step needs its conditions"
                    if self.conditioned
                    else "the stream was started without conditions; give none"
                )  # fmt: skip
            )
        if cond is not None:
            own = loop.views[0].cond
            assert own is not None
            if cond.dim() != 3 or cond.shape[0] != own.shape[0] or cond.shape[2] != own.shape[2]:
                raise ConfigError(
                    f"stream cond: expected ({own.shape[0]}, tokens, {own.shape[2]}), got {tuple(cond.shape)}"
                )
        c = self.chunk if cond is None else cond.shape[1]
        with torch.no_grad():
            loop.make_room(c)
            buffer = loop.views[0].cond  # after make_room: it may have moved
            if cond is not None and buffer is not None:
                buffer[:, loop.start : loop.start + c] = cond  # the views without conditions keep zeros
            return loop.next(c)
