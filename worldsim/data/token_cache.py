"""An on-disk cache of encoded training tokens, for tokenizers whose encoding is costly (VAE latents).

A tokenizer opts in with ``cache_tokens = True``. The file name is a digest of everything the tokens
depend on: the tokenizer's class and state (weights and fitted statistics) and the observations
themselves, so a retrained VAE, refitted statistics or other data never reuse stale latents. Files are
written atomically and read with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from worldsim.checkpoint import load_checkpoint, save_checkpoint
from worldsim.errors import CheckpointError


def tokens_digest(tokenizer, observations: list[np.ndarray]) -> str:
    """blake2b over the tokenizer's class, frames per token and state dict, and every observation's bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}/{tokenizer.frames_per_token}".encode())
    for name, value in sorted(tokenizer.state_dict().items()):
        h.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    for obs in observations:
        h.update(f"{obs.dtype}:{obs.shape}".encode())
        h.update(np.ascontiguousarray(obs).data)
    return h.hexdigest()


def cached_tokens(
    cache_dir: str | Path | None, tokenizer, observations: list[np.ndarray], encode: Callable[[], list[torch.Tensor]]
) -> list[torch.Tensor]:
    """``encode()``'s episodes, read from ``cache_dir`` when an entry for the same inputs exists, else
    computed and stored there. No cache (``cache_dir`` None or the tokenizer not opting in): just encode."""
    if cache_dir is None or not getattr(tokenizer, "cache_tokens", False):
        return encode()
    path = Path(cache_dir) / f"tokens-{tokens_digest(tokenizer, observations)}.pt"
    if path.is_file():
        try:
            episodes = load_checkpoint(path)["episodes"]
            print(f"tokens: read {len(episodes)} encoded episodes from the cache {path}", flush=True)
            return episodes
        except (CheckpointError, KeyError):
            pass  # unreadable: encode again and overwrite it
    episodes = encode()
    save_checkpoint(path, {"episodes": [e.contiguous() for e in episodes]})
    return episodes
