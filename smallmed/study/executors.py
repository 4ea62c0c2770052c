"""Where the cells run: ``local`` (this machine, one or several worker processes) or ``slurm`` (a job
array through submitit). Either way every worker or array task writes its own part file, and the
study merges them by run key (:mod:`smallmed.study.results`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from smallmed.study.config import StudyConfig
from smallmed.study.runner import Cell, fit_source_stage, run_cells


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"


# ------------------------------------------------------------------------------------------ local
def _worker(config: StudyConfig, todo: list[Cell], sources: dict[str, Any], out: Path, part: Path, threads: int,
            single_process: bool = False) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    run_cells(config, todo, sources, out, part, single_process)


def run_local(config: StudyConfig, todo: list[Cell], sources: dict[str, Any], out: Path, workers: int) -> None:
    """Run the cells here: in this process, or dealt round-robin to ``workers`` fresh (spawned: safe
    with CUDA) processes, each paying start-up and warm-up once for many cells."""
    stamp = _stamp()
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        run_cells(config, todo, sources, out, out / "parts" / f"local-{stamp}.csv")
        return
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")
    # On the CPU the workers share its cores; on a GPU the host side of each needs only one or two.
    threads = max(1, (os.cpu_count() or 1) // workers) if not torch.cuda.is_available() else 2
    processes = [
        context.Process(target=_worker, args=(config, todo[i::workers], sources, out, out / "parts" / f"local-{stamp}-{i}.csv", threads))
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    crashed = [p.exitcode for p in processes if p.exitcode]
    if crashed:
        print(f"[study] {len(crashed)} worker(s) exited with codes {crashed}; their unfinished cells run again next time", flush=True)


def fit_sources_local(config: StudyConfig, names: list[str], out: Path) -> dict[str, str]:
    """Fit (or read from cache) the named source stages here; ``{name: error}`` for those that failed."""
    failed = {}
    for name in names:
        try:
            fit_source_stage(config, name, out)
        except Exception as err:
            import traceback

            traceback.print_exc()
            failed[name] = f"source stage failed: {type(err).__name__}: {err}"[:500]
    return failed


# ------------------------------------------------------------------------------------------ slurm
class ClusterUnavailableError(RuntimeError):
    """The slurm executor could not submit: no SLURM here, an unknown partition, a rejected job."""


LOCAL_HINT = "HINT: set `executor: local` in the study config to run the cells on this machine"


def _submitit_executor(config: StudyConfig, out: Path, name: str, tasks_per_node: int = 1):
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ClusterUnavailableError(
            f"executor 'slurm': tried to submit the study's {name} to SLURM, but `sbatch`/`srun` are not on this "
            f"machine's PATH (not a SLURM login node?). {LOCAL_HINT}"
        )
    import submitit

    settings = config.slurm
    executor = submitit.SlurmExecutor(folder=out / "slurm" / "%j", max_num_timeout=0)
    params: dict[str, Any] = {
        "job_name": f"smallmed-{name}", "time": settings.time_min, "cpus_per_task": settings.cpus_per_task,
        "ntasks_per_node": tasks_per_node, "array_parallelism": settings.array_parallelism, "setup": list(settings.setup),
        "additional_parameters": dict(settings.additional),
    }
    if settings.partition:
        params["partition"] = settings.partition
    if settings.gpus_per_task:
        params["gpus_per_task"] = settings.gpus_per_task
    if settings.mem_gb:
        params["mem"] = f"{int(settings.mem_gb)}G"
    executor.update_parameters(**params)
    return executor


def _submit(executor, function, *args_lists, what: str):
    import submitit

    try:
        with executor.batch():
            jobs = [executor.submit(function, *args) for args in zip(*args_lists)]
    except (subprocess.CalledProcessError, submitit.core.utils.FailedJobError, OSError) as err:
        detail = getattr(err, "output", None) or getattr(err, "stderr", None) or str(err)
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        detail = "; ".join(line.strip() for line in str(detail).strip().splitlines() if line.strip())
        raise ClusterUnavailableError(f"executor 'slurm': sbatch refused the study's {what}: {detail[:500]}. {LOCAL_HINT}") from err
    return jobs


def _queued() -> set[str] | None:
    """Job ids SLURM still holds (array tasks as ``<array>_<task>``), or ``None`` when squeue fails."""
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return set(done.stdout.split()) if done.returncode == 0 else None


def wait_for(jobs: list, poll_s: float = 2.0) -> None:
    """Until every job has a result file or has left SLURM's queue (cancelled, failed, node lost).

    submitit's own ``done()`` asks ``sacct``, which a cluster without accounting storage cannot
    answer, and it never sees a cancelled task end; the result file and ``squeue`` need neither.
    """
    pending = list(jobs)
    while pending:
        queued = _queued()
        pending = [j for j in pending if not j.paths.result_pickle.exists() and (queued is None or j.job_id in queued)]
        if pending:
            time.sleep(poll_s)


def _record(out: Path, jobs: list) -> None:
    path = out / "slurm" / "jobs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    known = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps(sorted({*known, *(j.job_id for j in jobs)})))


def wait_for_earlier_jobs(out: Path, poll_s: float = 2.0) -> None:
    """An earlier submission of this study whose tasks are still queued or running is waited for first,
    so that a resume never submits a cell that is still being run."""
    path = out / "slurm" / "jobs.json"
    if not path.is_file():
        return
    earlier = set(json.loads(path.read_text()))
    while True:
        queued = _queued() or set()
        running = earlier & queued
        if not running:
            return
        print(f"[study] waiting for {len(running)} array task(s) of an earlier submission of this study", flush=True)
        time.sleep(max(poll_s, 5.0))


def _slurm_shard(config: StudyConfig, todo: list[Cell], sources: dict[str, Any], out: str, part: str) -> int:
    out_path = Path(out)
    workers = max(1, min(config.slurm.workers_per_task, len(todo)))
    cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    threads = max(1, cpus // workers) if cpus else 0  # the task's own CPUs, not every core of the node
    if workers == 1:
        _worker(config, todo, sources, out_path, Path(f"{part}.csv"), threads, single_process=config.slurm.cell_devices == 1)
        return len(todo)
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(config, todo[i::workers], sources, out_path, Path(f"{part}-{i}.csv"),
                                                        threads, True)) for i in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return len(todo)


def run_slurm(config: StudyConfig, todo: list[Cell], sources: dict[str, Any], out: Path) -> None:
    """Deal the cells to a SLURM job array and wait for it (see :class:`~smallmed.study.config.SlurmSettings`)."""
    devices = max(1, config.slurm.cell_devices)
    shards_wanted = len(todo) if devices > 1 else min(len(todo), config.slurm.tasks or len(todo), 1000)
    shards = [todo[i::shards_wanted] for i in range(shards_wanted)]
    stamp = _stamp()
    parts = [str(out / "parts" / f"slurm-{stamp}-{i}") for i in range(len(shards))]
    executor = _submitit_executor(config, out, "cells", tasks_per_node=devices)
    n = len(shards)
    jobs = _submit(executor, _slurm_shard, [config] * n, shards, [sources] * n, [str(out)] * n, parts, what=f"{len(todo)} cells")
    _record(out, jobs)
    print(f"[study] submitted {len(todo)} cells as {len(jobs)} SLURM array task(s), job {jobs[0].job_id.split('_')[0]}; "
          f"logs in {out / 'slurm'}", flush=True)
    wait_for(jobs)


def _slurm_source(config: StudyConfig, name: str, out: str) -> str:
    return str(fit_source_stage(config, name, Path(out), single_process=True))


def fit_sources_slurm(config: StudyConfig, names: list[str], out: Path) -> dict[str, str]:
    """Fit the named source stages as SLURM jobs (one each) and wait; ``{name: error}`` for failures."""
    executor = _submitit_executor(config, out, "source stages")
    jobs = _submit(executor, _slurm_source, [config] * len(names), names, [str(out)] * len(names), what="source stages")
    _record(out, jobs)
    print(f"[study] fitting source stage(s) {names} on SLURM", flush=True)
    wait_for(jobs)
    failed = {}
    for name, job in zip(names, jobs):
        if not job.paths.result_pickle.exists():
            failed[name] = f"source stage's SLURM job {job.job_id} ended without a result; see {job.paths.stderr}"
            continue
        error = job.exception()
        if error is not None:
            failed[name] = f"source stage failed on SLURM: {str(error)[-500:]}"
    return failed
