"""The study on a user's own files, locally and on a real one-node SLURM cluster (submitit job arrays).

The cluster comes from ``scripts/slurm/local_cluster.sh`` (the ``slurm_cluster`` fixture): Debian's
slurm-wlm and munge, slurmctld and slurmd on localhost. Without root the SLURM tests skip, saying why.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_images import KERMANY_CLASSES, PATIENT_PATTERN, kermany_pool, write_class_folders, write_dicom, write_manifest

from smallmed.study import load_study_config, run_study
from smallmed.study.executors import ClusterUnavailableError

REPO = Path(__file__).resolve().parents[1]
TINY = {"model.init_args.backbone": "test_efficientnet", "model.init_args.pretrained": False, "trainer.max_epochs": 1,
        "data.init_args.image_size": 32, "data.init_args.eval_batch_size": 512}
PER_CLASS = 60


@pytest.fixture(scope="module")
def own_files(tmp_path_factory) -> dict[str, dict]:
    """Two targets as a hospital would have them, from real Kermany B chest X-rays with patient IDs:
    a folder of PNGs (patient ID in the file name) and a CSV manifest of 12-bit DICOM files."""
    images, labels, patients, stems = kermany_pool()
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), PER_CLASS, replace=False) for c in (0, 1)])
    root = tmp_path_factory.mktemp("own")
    write_class_folders(root / "pngs", images[chosen], labels[chosen], KERMANY_CLASSES, [stems[i] for i in chosen])
    rows = []
    for i in chosen:
        path = write_dicom(root / "dicoms" / f"{stems[i]}.dcm", images[i].astype(np.uint16) * 16)
        rows.append({"path": f"dicoms/{path.name}", "label": KERMANY_CLASSES[labels[i]], "patient": str(patients[i])})
    write_manifest(root / "labels.csv", rows)
    return {
        "pngs": {"class_path": "smallmed.datamodules.ImageFolderDataModule",
                 "init_args": {"path": str(root / "pngs"), "patient_pattern": PATIENT_PATTERN}},
        "dicoms": {"class_path": "smallmed.datamodules.ManifestDataModule",
                   "init_args": {"path": str(root / "labels.csv"), "patient_column": "patient"}},
    }


def study_file(tmp_path: Path, name: str, targets: dict, **extra) -> Path:
    study = {"out_dir": str(tmp_path / name), "targets": targets, "sizes": [20],
             "methods": {"constant": str(REPO / "configs/finetune_constant.yaml")}, "overrides": TINY, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def results_rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def results(out: Path) -> dict[tuple, dict]:
    return {(r["target"], r["seed"]): r for r in results_rows(out)}


def test_a_study_over_a_png_folder_and_a_dicom_manifest_runs_locally_and_on_slurm_alike(tmp_path, own_files, slurm_cluster):
    local = run_study(load_study_config(study_file(tmp_path, "local", own_files, seeds=[3])))
    on_slurm = run_study(load_study_config(study_file(
        tmp_path, "slurm", own_files, seeds=[3], executor="slurm",
        slurm={"partition": "debug", "cpus_per_task": 2, "time_min": 10, "tasks": 1})))  # one task runs both cells
    here, there = results(local), results(on_slurm)
    assert sorted(here) == [("dicoms", "3"), ("pngs", "3")]
    assert {r["status"] for r in [*here.values(), *there.values()]} == {"ok"}, [r["error"] for r in there.values()]
    for key, row in here.items():  # the same seeds give the same runs, wherever they ran
        assert float(there[key]["test_auroc"]) == pytest.approx(float(row["test_auroc"]), abs=1e-6), key
    assert list((on_slurm / "parts").glob("slurm-*.csv")) and list((on_slurm / "slurm").iterdir())
    assert (on_slurm / "recommendation.txt").read_text().startswith("at N=20 on dicoms")


def test_learning_curves_on_a_folder_from_a_source_stage_fitted_on_a_manifest(tmp_path, own_files):
    """Targeted transfer on a user's own files: the source stage trains on the DICOM manifest (all of its
    training split), the target is the PNG folder at two N (the patient splits and the nesting of the
    subsets across N are the data modules', tested with them)."""
    stage = {"config": str(REPO / "configs/finetune_constant.yaml"), "data": own_files["dicoms"],
             "overrides": {**TINY, "data.init_args.train_size": None}}
    out = run_study(load_study_config(study_file(
        tmp_path, "curves", {"pngs": own_files["pngs"]}, seeds=[0, 1], sizes=[20, 40], sources={"none": False},
        source_stages={"own_chest": stage}, comparisons=[["own_chest", "none"]])))
    rows = results_rows(out)
    assert sorted((r["source"], r["train_size"], r["seed"]) for r in rows) == [
        (s, n, seed) for s in ("none", "own_chest") for n in ("20", "40") for seed in ("0", "1")]
    assert {r["status"] for r in rows} == {"ok"}, [r["error"] for r in rows]
    assert len(list((out / "sources").glob("own_chest-*.ckpt"))) == 1  # fitted once, for every cell
    recommendation = (out / "recommendation.txt").read_text()
    assert "at N=20 on pngs" in recommendation and "at N=40 on pngs" in recommendation


def test_a_cancelled_array_resumes_and_ends_with_every_cell_done_once(tmp_path, own_files, slurm_cluster):
    path = study_file(tmp_path, "killed", {"pngs": own_files["pngs"]}, seeds=4, executor="slurm",  # one cell per array task
                      slurm={"partition": "debug", "cpus_per_task": 2, "array_parallelism": 1, "time_min": 10})
    out = tmp_path / "killed"
    driver = subprocess.Popen([sys.executable, str(REPO / "train.py"), "study", "--config", str(path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not any(p.read_text().count("\n") >= 2 for p in (out / "parts").glob("*.csv")):  # header and a first row
        assert driver.poll() is None and time.monotonic() < deadline, "no cell finished on SLURM in time"
        time.sleep(0.5)
    array = json.loads((out / "slurm" / "jobs.json").read_text())[0].split("_")[0]
    subprocess.run(["scancel", array], check=True)
    output, _ = driver.communicate(timeout=120)
    assert "have no result yet" in output, output[-2000:]
    with (out / "results.csv").open() as f:
        first = list(csv.DictReader(f))
    assert 1 <= len(first) < 4

    run_study(load_study_config(path))  # the resume submits only the missing cells
    with (out / "results.csv").open() as f:
        final = list(csv.DictReader(f))
    assert sorted(r["seed"] for r in final) == ["0", "1", "2", "3"] and {r["status"] for r in final} == {"ok"}
    rows_on_disk = [r for part in (out / "parts").glob("*.csv") for r in csv.DictReader(part.read_text().splitlines())]
    assert len(rows_on_disk) == 4, "every cell ran exactly once, the cancelled ones included"


def test_an_unknown_partition_is_an_error_that_says_how_to_run_locally(tmp_path, own_files, slurm_cluster):
    path = study_file(tmp_path, "bad", {"pngs": own_files["pngs"]}, seeds=1, executor="slurm", slurm={"partition": "no_such"})
    with pytest.raises(ClusterUnavailableError, match=r"sbatch refused the study's 1 cells: .*(?i:partition).*executor: local"):
        run_study(load_study_config(path))


def test_without_slurm_on_the_path_the_executor_says_what_it_tried(tmp_path, own_files, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    path = study_file(tmp_path, "nowhere", {"pngs": own_files["pngs"]}, seeds=1, executor="slurm")
    with pytest.raises(ClusterUnavailableError, match=r"tried to submit the study's cells to SLURM, but `sbatch`/`srun` are not"):
        run_study(load_study_config(path))
    assert os.environ["PATH"] == "/nonexistent"


def test_a_cell_can_be_one_multi_process_run_over_the_tasks_of_its_allocation(tmp_path, own_files, slurm_cluster):
    """cell_devices: 2 -> one array task with two SLURM tasks, which Lightning takes as its two DDP ranks
    (CPU and gloo here; GPUs on a cluster); rank 0 writes the one row."""
    path = study_file(tmp_path, "ddp", {"pngs": own_files["pngs"]}, seeds=1, executor="slurm",
                      overrides={**TINY, "trainer.accelerator": "cpu", "trainer.strategy": "ddp"},
                      slurm={"partition": "debug", "cpus_per_task": 1, "cell_devices": 2, "time_min": 10})
    out = run_study(load_study_config(path))
    (row,) = results(out).values()
    assert row["status"] == "ok", row["error"]
    logs = "".join(p.read_text() for p in (out / "slurm").rglob("*_log.err"))
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs, logs[-3000:]
