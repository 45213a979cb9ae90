"""The on-disk token cache: hit on the same tokenizer state and data, miss when either changes, off for
tokenizers that do not opt in."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from worldsim.data.sequence import SequenceData
from worldsim.experiment import encode_episodes


class CountingTokenizer(nn.Module):
    frames_per_token = 2
    cache_tokens = True

    def __init__(self, scale=1.0):
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale))
        self.calls = 0

    def encode(self, obs):
        self.calls += 1
        return obs.float().reshape(obs.shape[0], -1, 2 * obs.shape[-1]) * self.scale


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return SequenceData(
        [rng.normal(size=(7, 3)).astype(np.float32) for _ in range(3)],
        [rng.normal(size=(7, 2)).astype(np.float32) for _ in range(3)],
    )


def test_second_encoding_is_read_from_the_cache(tmp_path):
    tok, data = CountingTokenizer(), _data()
    first, conds = encode_episodes(tok, data, tmp_path)
    assert tok.calls == 3 and len(list(tmp_path.glob("tokens-*.pt"))) == 1
    again, conds_again = encode_episodes(tok, data, tmp_path)
    assert tok.calls == 3  # nothing encoded
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(conds, conds_again, strict=True))
    assert first[0].shape == (3, 6)  # the partial last token is dropped


def test_other_state_or_data_misses(tmp_path):
    encode_episodes(CountingTokenizer(), _data(), tmp_path)
    other = CountingTokenizer(scale=2.0)
    out, _ = encode_episodes(other, _data(), tmp_path)
    assert other.calls == 3 and torch.allclose(out[0], 2 * torch.from_numpy(_data().observations[0][:6]).reshape(3, 6))
    fresh = CountingTokenizer()
    encode_episodes(fresh, _data(seed=1), tmp_path)
    assert fresh.calls == 3 and len(list(tmp_path.glob("tokens-*.pt"))) == 3


def test_no_cache_without_opting_in(tmp_path):
    tok = CountingTokenizer()
    tok.cache_tokens = False
    encode_episodes(tok, _data(), tmp_path)
    encode_episodes(tok, _data(), tmp_path)
    assert tok.calls == 6 and not list(tmp_path.iterdir())
