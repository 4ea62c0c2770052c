"""DirectFileCheckpointIO: the same file as Lightning's save, atomic, and Lightning's path for remote stores."""

from __future__ import annotations

import fsspec
import pytest
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from smallmed.checkpoint_io import DirectFileCheckpointIO


def checkpoint() -> dict:
    return {
        "state_dict": {"w": torch.arange(12.0).reshape(3, 4), "b": torch.zeros(3, dtype=torch.float16)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3, 4)}}, "param_groups": [{"lr": 1e-3}]}],
        "epoch": 4,
        "hyper_parameters": {"backbone": "test_resnet"},
    }


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    else:
        assert a == b


def test_writes_what_lightning_writes(tmp_path):
    ours, theirs = tmp_path / "ours" / "best.ckpt", tmp_path / "theirs" / "best.ckpt"
    DirectFileCheckpointIO().save_checkpoint(checkpoint(), ours)  # makes the missing folder, as Lightning's does
    TorchCheckpointIO().save_checkpoint(checkpoint(), theirs)
    assert_same(DirectFileCheckpointIO().load_checkpoint(ours), TorchCheckpointIO().load_checkpoint(theirs))
    assert_same(torch.load(ours, weights_only=True), checkpoint())
    assert ours.stat().st_mode == theirs.stat().st_mode  # the umask's mode, not mkstemp's 0600
    assert sorted(p.name for p in ours.parent.iterdir()) == ["best.ckpt"]


def test_overwrites_in_place_and_accepts_file_urls(tmp_path):
    path = tmp_path / "best.ckpt"
    io = DirectFileCheckpointIO()
    io.save_checkpoint({"epoch": 1}, path)
    io.save_checkpoint({"epoch": 2}, f"file://{path}")
    assert torch.load(path, weights_only=True) == {"epoch": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


def test_failed_save_keeps_the_old_file_and_leaves_no_partial_file(tmp_path):
    path = tmp_path / "best.ckpt"
    io = DirectFileCheckpointIO()
    io.save_checkpoint(checkpoint(), path)
    with pytest.raises(Exception, match="lambda"):  # a lambda cannot be pickled: the save fails part way
        io.save_checkpoint({"state_dict": checkpoint()["state_dict"], "bad": lambda: None}, path)
    assert_same(torch.load(path, weights_only=True), checkpoint())
    assert [p.name for p in tmp_path.iterdir()] == ["best.ckpt"]


def test_remote_paths_and_storage_options_go_through_lightning(tmp_path):
    io = DirectFileCheckpointIO()
    io.save_checkpoint(checkpoint(), "memory://smallmed-test/best.ckpt")
    with fsspec.open("memory://smallmed-test/best.ckpt", "rb") as f:
        assert_same(torch.load(f, weights_only=True), checkpoint())
    fsspec.filesystem("memory").rm("smallmed-test", recursive=True)
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint(checkpoint(), tmp_path / "best.ckpt", storage_options={"x": 1})
