"""Preemption on SLURM: stop at an epoch boundary before the time limit, requeue, and resume exactly.

Lightning's own SLURM requeue saves a checkpoint from inside its signal handler, wherever the run is
(mid-step, mid-epoch), and an epoch resumed from there takes other batches than the run that was
not stopped. Small-data epochs last seconds, so here the warning signal (``sbatch --signal=B:USR1@60``)
only sets a flag: the epoch in progress finishes and writes ``last.ckpt`` (with every random state),
then the job is requeued and this process exits. The requeued job (``SLURM_RESTART_COUNT`` > 0) runs
the same command, which resumes from that checkpoint in the same run folder (``slurm-<job id>``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override


class Requeued(SystemExit):
    """This process stops because its SLURM job was requeued; the requeued job resumes the run."""


def slurm_job_id() -> str | None:
    """The job id ``scontrol requeue`` takes (``<array>_<task>`` for an array task), or None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def is_requeued_attempt() -> bool:
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


class SlurmRequeue(Callback):
    """On SLURM's warning signal, finish the epoch, then requeue the job and stop (see the module docstring).

    Args:
        signal_name: the signal sbatch sends before the time limit (``--signal=B:USR1@60``).
    """

    def __init__(self, signal_name: str = "SIGUSR1") -> None:
        self.signum = getattr(signal, signal_name)
        self.signalled = False
        self._previous: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.signalled = True  # acted on at the next epoch boundary, where last.ckpt has just been written

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if slurm_job_id() is not None:  # replaces Lightning's handler, which would save mid-step
            self._previous = signal.signal(self.signum, self._on_signal)

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.signalled:
            return
        job = slurm_job_id()
        if trainer.is_global_zero:
            # Said (and stdout flushed) before the requeue: SLURM may kill this process as soon as
            # `scontrol requeue` returns, and a block-buffered stdout written after it is then lost.
            last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "its last checkpoint"
            rank_zero_info(f"SLURM's time-limit signal: requeuing SLURM job {job} after epoch "
                           f"{trainer.current_epoch - 1}; the requeued job resumes from {last}")
            sys.stdout.flush()
            sys.stderr.flush()
            subprocess.run(["scontrol", "requeue", str(job)], check=True)
        raise Requeued(0)

    @override
    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
