"""Checkpoint files: atomic writes, safe loads, one-line errors for bad files."""

import pickle

import pytest
import torch

from worldsim.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from worldsim.errors import CheckpointError
from worldsim.runs import resolve_checkpoint


def _payload():
    g = torch.Generator().manual_seed(0)
    return {
        "step": 7,
        "model": {"w": torch.randn(3, 4, generator=g, dtype=torch.float64), "b": torch.randn(4, generator=g)},
        "optimizer": {"state": {0: {"step": torch.tensor(7.0)}}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "rng": {"torch": torch.get_rng_state()},
        "config": {"trainer": {"betas": [0.9, 0.99], "compile": False, "device": "auto", "clip": None}},
        "tokenizer": None,
    }


def _assert_same(a, b):
    assert type(a) is type(b) or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def test_round_trip_is_exact_and_loads_with_plain_weights_only(tmp_path):
    path = tmp_path / "sub" / "last.pt"
    payload = _payload()
    assert save_checkpoint(path, payload) == path
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT
    _assert_same({k: v for k, v in loaded.items() if k != "format"}, payload)
    # A user's own torch.load with the safe unpickler reads it too.
    plain = torch.load(path, weights_only=True, map_location="cpu")
    assert plain["step"] == 7 and torch.equal(plain["model"]["w"], payload["model"]["w"])
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2})
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_payload_that_weights_only_cannot_load_is_refused_before_writing(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(TypeError, match=r"payload\.extra\.obj is a Generator"):
        save_checkpoint(path, {"step": 1, "extra": {"obj": torch.Generator()}})
    assert not path.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found") as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert str(tmp_path / "nope.pt") in str(err.value)


@pytest.mark.parametrize("kind", ["truncated", "text", "foreign_pickle", "not_worldsim", "other_format", "folder"])
def test_bad_files_give_one_line_checkpoint_errors(tmp_path, kind):
    path = tmp_path / "ckpt.pt"
    if kind == "truncated":
        save_checkpoint(path, _payload())
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "foreign_pickle":  # arbitrary objects are refused by weights_only, not executed
        with open(path, "wb") as f:
            torch.save({"format": FORMAT, "obj": pickle.PicklingError("x")}, f)
    elif kind == "not_worldsim":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "other_format":
        torch.save({"format": "worldsim-checkpoint-v0"}, path)
    else:
        path.mkdir()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    expected = {
        "truncated": "cannot be read",
        "text": "cannot be read",
        "foreign_pickle": "cannot be read",
        "not_worldsim": "not a worldsim checkpoint",
        "other_format": "unsupported format",
        "folder": "is a folder",
    }
    assert expected[kind] in message


def test_resolve_checkpoint_accepts_run_folder_or_file(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(last, {"step": 3})
    assert resolve_checkpoint(tmp_path / "run") == last
    assert resolve_checkpoint(last) == last
    with pytest.raises(CheckpointError, match="no checkpoints/last.pt"):
        resolve_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="file not found"):
        resolve_checkpoint(tmp_path / "missing.pt")
