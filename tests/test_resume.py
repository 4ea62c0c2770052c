"""Exact resume: a killed, interrupted or requeued run ends as if it had never stopped (bit for bit on CPU)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from smallmed.callbacks import RandomStates

REPO = Path(__file__).resolve().parents[1]
# The paper recipe as a user runs it: shuffling, augmentation, dropout, gradual unfreezing; small and quick.
RUN = ["--config", str(REPO / "configs/paper_recipe.yaml"), "--model.init_args.pretrained", "false",
       "--model.init_args.backbone", "test_efficientnet", "--data.init_args.image_size", "32", "--trainer.max_epochs", "12",
       "--report.heatmaps", "0", "--report.train_images", "0", "--seed_everything", "3", "--data.init_args.seed", "3"]


def train(save_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *RUN, "--data.init_args.path", str(DATA),
                             "--trainer.logger.init_args.save_dir", str(save_dir), *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_ctrl_c_as_in_a_terminal)


def _ctrl_c_as_in_a_terminal() -> None:
    """The child starts with SIGINT at its default, as a run started from a terminal does: a suite started
    with ``&`` by a non-interactive shell ignores SIGINT and would pass that on, and the Ctrl-C test would
    then watch a run that cannot be interrupted."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


DATA = REPO.parent / "shared" / "data" / "breastmnist_28.npz"


def finished(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out[-3000:]
    return out


def epoch_of(checkpoint: Path) -> int:
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not there yet, or being replaced
        return -1


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_test_auc_bit_for_bit(tmp_path, breastmnist):
    whole = finished(train(tmp_path / "whole"))
    killed = train(tmp_path / "killed")
    last = tmp_path / "killed" / "smallmed" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while epoch_of(last) < 3:  # epoch 3 done: the run is now inside epoch 4
        assert killed.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)  # from another process, no warning, no clean-up
    killed.communicate(timeout=60)
    stopped_at = epoch_of(last)
    assert 3 <= stopped_at < 11

    resumed = finished(train(tmp_path / "killed", "--ckpt_path", str(last.parent.parent)))
    assert f"resuming from {last}" in resumed
    a, b = final_weights(tmp_path / "whole" / "smallmed" / "version_0"), final_weights(last.parent.parent)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    auc = [line for line in whole.splitlines() if line.startswith("test ROC AUC")]
    assert auc and auc == [line for line in resumed.splitlines() if line.startswith("test ROC AUC")]
    assert sorted(p.name for p in (tmp_path / "killed" / "smallmed").iterdir()) == ["version_0"]  # one run, one folder


def test_last_ckpt_is_the_last_epoch_not_the_best(tmp_path, breastmnist):
    finished(train(tmp_path, "--trainer.max_epochs", "6"))
    checkpoints = tmp_path / "smallmed" / "version_0" / "checkpoints"
    best = next(checkpoints.glob("best-epoch*.ckpt"))
    assert epoch_of(checkpoints / "last.ckpt") == 5 and epoch_of(best) < 5  # this seed's best epoch is an early one


def test_the_default_command_resumes_from_last_and_says_where_to_resume_after_an_interrupt(tmp_path, breastmnist):
    interrupted = train(tmp_path)
    last = tmp_path / "smallmed" / "version_0" / "checkpoints" / "last.ckpt"
    while epoch_of(last) < 1:
        assert interrupted.poll() is None
        time.sleep(0.02)
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C
    out, _ = interrupted.communicate(timeout=120)
    assert interrupted.returncode != 0
    assert f"interrupted; to resume from {last}:" in out and f"--ckpt_path {last.parent.parent}" in out
    resumed = finished(subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *RUN, "--data.init_args.path", str(DATA),
         "--trainer.logger.init_args.save_dir", str(tmp_path), "--ckpt_path", "last"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    assert f"resuming from {last}" in resumed and "test ROC AUC" in resumed


def test_a_run_folder_without_a_last_checkpoint_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from smallmed.cli import main

    monkeypatch.setattr(sys, "argv", ["train.py"])
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(SystemExit):
        main([*RUN, "--data.init_args.path", str(DATA), "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"),
              "--ckpt_path", str(tmp_path / "empty_run")])
    assert "the run folder holds no checkpoints/last.ckpt to resume from" in capsys.readouterr().err


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    saved = RandomStates().state_dict()
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.save({"callbacks": saved}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["callbacks"]
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    states = RandomStates()
    states.load_state_dict(loaded)
    states.on_fit_start(None, None)
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
