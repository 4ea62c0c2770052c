"""A train.py run preempted on SLURM (the time-limit signal, a requeue) resumes exactly, on a real local cluster."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch
from test_resume import DATA, RUN, epoch_of, final_weights

REPO = Path(__file__).resolve().parents[1]


def squeue_state(job: str) -> str:
    done = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
    return done.stdout.strip().split(" ")[0]


def waits_for_begin_time(job: str) -> bool:
    done = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
    return done.stdout.strip() == "PENDING BeginTime"


def test_a_requeued_run_resumes_from_its_last_epoch_to_the_same_weights(tmp_path, breastmnist, slurm_cluster):
    args = [*RUN, "--data.init_args.path", str(DATA), "--trainer.logger.init_args.save_dir", str(tmp_path / "slurm")]
    script = tmp_path / "train.sbatch"
    words = " ".join(f"'{a}'" for a in args)
    script.write_text(
        "#!/bin/bash\n"
        f"#SBATCH --partition=debug --cpus-per-task=2 --requeue --open-mode=append --output={tmp_path}/job.out\n"
        "#SBATCH --signal=B:USR1@30\n"  # on a real cluster: 30 s before the time limit
        f"cd {REPO}\nexec {sys.executable} train.py {words}\n"
    )
    job = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True).stdout.strip()
    last = tmp_path / "slurm" / "smallmed" / f"slurm-{job}" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while epoch_of(last) < 2:
        assert time.monotonic() < deadline and squeue_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), (tmp_path / "job.out").read_text()
        time.sleep(0.1)
    # what SLURM sends before the time limit, sent now
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    hurried = False
    while squeue_state(job) not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", ""):
        assert time.monotonic() < deadline + 240, (tmp_path / "job.out").read_text()
        if not hurried and waits_for_begin_time(job):  # SLURM holds a requeued job ~2 minutes before it may start again
            # not "now": slurmd refuses a job whose credential was made in the second its old one was revoked
            # (ctime <= revoked, whole seconds), and the requeued job then fails with "Job credential revoked"
            hurried = subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now+2"]).returncode == 0
        time.sleep(0.5)
    out = (tmp_path / "job.out").read_text()
    assert squeue_state(job) in ("COMPLETED", ""), out[-3000:]
    assert f"requeuing SLURM job {job} after epoch" in out and f"resumes from {last}" in out and f"resuming from {last}" in out, out[-3000:]

    whole = subprocess.run([sys.executable, str(REPO / "train.py"), *RUN, "--data.init_args.path", str(DATA),
                            "--trainer.logger.init_args.save_dir", str(tmp_path / "here")], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = final_weights(tmp_path / "here" / "smallmed" / "version_0"), final_weights(last.parent.parent)
    assert all(torch.equal(a[k], b[k]) for k in a)
    auc = [line for line in whole.stdout.splitlines() if line.startswith("test ROC AUC")]
    assert auc and auc[0] in out
