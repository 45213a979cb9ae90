"""Data sources and windows."""

import numpy as np
import pytest
import torch

from worldsim.data.oscillators import make_oscillators
from worldsim.data.sources import load_dataset
from worldsim.data.windows import TokenWindows
from worldsim.errors import ConfigError, DataError


def test_oscillators_match_the_ode_and_are_seeded():
    obs = make_oscillators(4, 200, num_oscillators=2, dt=0.01, damping=(0.0, 0.1), seed=3).astype(np.float64)
    assert obs.shape == (4, 200, 4)
    np.testing.assert_array_equal(obs, make_oscillators(4, 200, 2, 0.01, damping=(0.0, 0.1), seed=3))
    x, v = obs[..., 0], obs[..., 1]
    # velocity is the time derivative of position (central differences)
    np.testing.assert_allclose((x[:, 2:] - x[:, :-2]) / 0.02, v[:, 1:-1], atol=2e-3)


def test_npz_loader_errors(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path"):
        load_dataset({"name": "npz", "path": "???"})
    with pytest.raises(DataError, match="no such file"):
        load_dataset({"name": "npz", "path": str(tmp_path / "nope.npz")})
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset({"name": "npz", "path": str(bad)})
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, obs=np.zeros((2, 5, 3)))
    with pytest.raises(DataError, match="no 'observations'"):
        load_dataset({"name": "npz", "path": str(wrong)})
    nan = tmp_path / "nan.npz"
    o = np.zeros((2, 5, 3))
    o[1, 2, 0] = np.nan
    np.savez(nan, observations=o)
    with pytest.raises(DataError, match="episode 1 .*NaN"):
        load_dataset({"name": "npz", "path": str(nan)})
    short = tmp_path / "short.npz"
    np.savez(short, observations=np.zeros((2, 5, 3)), actions=np.zeros((2, 4, 1)))
    with pytest.raises(DataError, match="actions"):
        load_dataset({"name": "npz", "path": str(short)})


def test_windows_pad_and_mask_short_episodes():
    eps = [torch.arange(10.0).reshape(5, 2), torch.arange(40.0).reshape(20, 2)]
    w = TokenWindows(eps, seq_len=8, conds=[torch.ones(5, 1), torch.ones(20, 1)])
    g = torch.Generator().manual_seed(0)
    batch = w.sample(256, g)
    assert batch.x.shape == (256, 8, 2) and batch.cond.shape == (256, 8, 1) and batch.mask.shape == (256, 8)
    short = batch.mask.sum(1) == 5
    assert short.any() and (~short).any()
    assert (batch.x[short][:, 5:] == 0).all() and (batch.cond[short][:, 5:] == 0).all()
    # a window is a contiguous slice of one episode
    full = batch.x[~short]
    assert torch.all(full[:, 1:, 0] - full[:, :-1, 0] == 2)
    # same generator state, same batch
    again = w.sample(256, torch.Generator().manual_seed(0))
    assert torch.equal(again.x, batch.x)


def test_windows_reject_nan():
    with pytest.raises(DataError, match="NaN"):
        TokenWindows([torch.tensor([[float("nan")]])], seq_len=1)
