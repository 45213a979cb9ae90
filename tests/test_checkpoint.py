"""Checkpoint files: atomic writes, hard-linked step files, safe loads, one-line errors for bad files and\nfailed writes; output folders checked before work."""

import errno
import os
import pickle
import shutil
from types import SimpleNamespace

import pytest
import torch

from worldsim.checkpoint import FORMAT, link_checkpoint, load_checkpoint, save_checkpoint
from worldsim.errors import CheckpointError, ConfigError
from worldsim.runs import check_writable, resolve_checkpoint


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
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(path, {"step": 2})
    message = str(err.value)
    assert message.startswith(f"checkpoint {path}: writing it failed (No space left on device: ")
    assert "MB free on its file system" in message and "\n" not in message
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_torch_zip_writer_failure_on_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError of its zip writer, without an errno."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})

    def full_disk(obj, f):
        f.write(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 8608064 vs 8607956")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(total=40 << 20, used=40 << 20, free=0))
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(path, {"step": 2})
    assert str(err.value) == (
        f"checkpoint {path}: writing it failed (No space left on device: 0.0 MB free on its file system; "
        "torch.save: unexpected pos 8608064 vs 8607956)"
    )
    assert load_checkpoint(path)["step"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_step_file_is_a_hard_link_that_keeps_its_step_when_last_is_replaced(tmp_path):
    last, step = tmp_path / "last.pt", tmp_path / "step_00000001.pt"
    save_checkpoint(last, {"step": 1})
    assert link_checkpoint(last, step) == "link"
    assert step.stat().st_ino == last.stat().st_ino and last.stat().st_nlink == 2
    save_checkpoint(last, {"step": 2})  # os.replace: last.pt is a new file, step_1 keeps the old one
    assert step.stat().st_ino != last.stat().st_ino and step.stat().st_nlink == 1
    assert load_checkpoint(step)["step"] == 1 and load_checkpoint(last)["step"] == 2
    assert link_checkpoint(last, step) == "link"  # an existing step file is replaced, atomically
    assert load_checkpoint(step)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_00000001.pt"]


def test_step_file_is_copied_where_links_fail(tmp_path, monkeypatch):
    last, step = tmp_path / "last.pt", tmp_path / "step_00000001.pt"
    save_checkpoint(last, {"step": 1})

    def no_links(src, dst):
        raise OSError(errno.EPERM, "hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    assert link_checkpoint(last, step) == "copy"
    assert step.read_bytes() == last.read_bytes() and step.stat().st_ino != last.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "step_00000001.pt"]


def test_failed_copy_of_a_step_file_leaves_none(tmp_path, monkeypatch):
    last, step = tmp_path / "last.pt", tmp_path / "step_00000001.pt"
    save_checkpoint(last, {"step": 1})

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    def full(src, dst, length=0):
        dst.write(b"part")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", cross_device)
    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(CheckpointError, match=r"step_00000001\.pt: writing it failed \(No space left on device"):
        link_checkpoint(last, step)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("kind", ["under_a_file", "a_file", "fine"])
def test_check_writable(tmp_path, kind):
    (tmp_path / "file").write_text("x")
    target = {"under_a_file": tmp_path / "file" / "out", "a_file": tmp_path / "file", "fine": tmp_path / "a" / "b"}[
        kind
    ]
    if kind == "fine":
        assert check_writable(target, "--out") == target and target.is_dir() and not any(target.iterdir())
        return
    with pytest.raises(ConfigError) as err:
        check_writable(target, "--out")
    expected = "cannot be created (Not a directory)" if kind == "under_a_file" else "is a file"
    assert str(err.value).startswith(f"--out {target}: {expected}")
    assert str(err.value).endswith("expected a folder that can be created and written")


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
