"""Checkpoint files: atomic writes under a simulated crash, readable errors, fallback, pruning."""

from __future__ import annotations

import os

import pytest
import torch

from dipod.checkpoints import (
    CheckpointError,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)


def _payload(value: float) -> dict:
    return {"trainer": {"w": torch.full((3,), value)}, "step": int(value)}


def test_roundtrip(tmp_path):
    path = save_checkpoint(checkpoint_path(tmp_path, 7), _payload(7.0))
    assert path.name == "step_00000007.pt"
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["trainer"]["w"], torch.full((3,), 7.0)) and loaded["step"] == 7


def test_crash_during_replace_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    path = checkpoint_path(tmp_path, 1)
    save_checkpoint(path, _payload(1.0))
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, _payload(2.0))
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # temporary file removed


def test_crash_during_serialisation_leaves_no_final_file(tmp_path, monkeypatch):
    def crash(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        save_checkpoint(checkpoint_path(tmp_path, 3), _payload(3.0))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_and_foreign_files_name_the_file(tmp_path):
    path = save_checkpoint(checkpoint_path(tmp_path, 1), _payload(1.0))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=f"{path}.*corrupt or truncated"):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"w": 1}, other)
    with pytest.raises(CheckpointError, match="not a dipod checkpoint"):
        load_checkpoint(other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_latest_falls_back_and_says_so(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(checkpoint_path(tmp_path, step), _payload(float(step)))
    newest = checkpoint_path(tmp_path, 3)
    newest.write_bytes(b"garbage")
    messages = []
    path, payload = latest_checkpoint(tmp_path, warn=messages.append)
    assert path == checkpoint_path(tmp_path, 2) and payload["step"] == 2
    assert str(newest) in messages[0] and "falling back" in messages[0]
    for step in (1, 2):
        checkpoint_path(tmp_path, step).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no readable checkpoint"):
        latest_checkpoint(tmp_path, warn=messages.append)
    assert latest_checkpoint(tmp_path / "empty") is None


def test_prune_keeps_newest(tmp_path):
    for step in (1, 5, 10, 12):  # 10 sorts before 5 as text; pruning goes by step number
        save_checkpoint(checkpoint_path(tmp_path, step), _payload(float(step)))
    (tmp_path / ".step_00000013.pt.abc.tmp").write_bytes(b"x")
    prune_checkpoints(tmp_path, keep=2)
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(tmp_path)] == [10, 12]
    assert not list(tmp_path.glob("*.tmp"))
