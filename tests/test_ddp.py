"""Gradual unfreezing under real multi-process DDP (CPU, gloo): ranks agree, frozen weights hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


@pytest.mark.ddp
def test_unfreezing_across_milestones_under_ddp(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "ddp_unfreeze_run.py"), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Expected to have finished reduction" not in proc.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert [r["global_step"] for r in ranks] == [8, 8]
    for name, tensor in ranks[0]["state"].items():
        assert torch.equal(tensor, ranks[1]["state"][name]), f"{name} differs between ranks"
    for rank in ranks:
        assert rank["violations"] == []
        assert rank["checked"] > 0
        # requires_grad is never changed under DDP: the reducer keeps every parameter.
        assert not rank["requires_grad_toggled"]
    # Every group did train by the end (the milestones were crossed on both ranks).
    start, end = ranks[0]["start"], ranks[0]["state"]
    for group, names in ranks[0]["groups"].items():
        assert any(not torch.equal(start[n], end[n]) for n in names), f"group {group} never trained"
