"""The study runner end to end: a small grid on real BreastMNIST, a source stage, a crash, a resume."""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from smallmed.study import load_study_config
from smallmed.study import main as study_main
from smallmed.study.summary import paired_comparisons, summarize

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model.init_args.backbone", "test_efficientnet", "--trainer.max_epochs", "1",
        "--data.init_args.image_size", "32", "--data.init_args.eval_batch_size", "512"]


def write_study(tmp_path: Path, breastmnist: Path, **extra) -> Path:
    broken = tmp_path / "broken.yaml"
    recipe = yaml.safe_load((REPO / "configs" / "finetune_constant.yaml").read_text())
    recipe["model"]["init_args"]["lr_schedule"] = "no_such_schedule"
    broken.write_text(yaml.safe_dump(recipe))
    study = {
        "targets": {"breast": str(breastmnist)},
        "sizes": [50],
        "seeds": 3,
        "methods": {"paper": str(REPO / "configs/paper_recipe.yaml"), "constant": str(REPO / "configs/finetune_constant.yaml")},
        "sources": {"none": False},
        "comparisons": [["paper", "constant"]],
        "overrides": TINY,
        "out_dir": str(tmp_path / "study"),
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


def test_small_study_runs_reports_and_resumes(tmp_path, breastmnist, capsys):
    config = write_study(tmp_path, breastmnist)
    study_main(["--config", str(config)])
    out = tmp_path / "study"
    results = rows(out)
    assert len(results) == 6 and {r["status"] for r in results} == {"ok"}
    assert {(r["method"], r["seed"]) for r in results} == {(m, str(s)) for m in ("paper", "constant") for s in range(3)}
    assert all(math.isfinite(float(r["test_auroc"])) and float(r["wall_s"]) > 0 for r in results)
    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert {(s["method"], s["n_seeds"]) for s in summary} == {("paper", "3"), ("constant", "3")}
    with (out / "paired.csv").open() as f:
        paired = list(csv.DictReader(f))
    assert [(p["compare"], p["n_pairs"]) for p in paired] == [("paper - constant", "3")]
    assert (out / "learning_curve_breast.png").stat().st_size > 1000
    assert not list((out / "logs").rglob("*.ckpt")), "target runs' checkpoints are removed by default"

    capsys.readouterr()
    study_main(["--config", str(config)])  # resume: everything is done
    assert "0 to run" in capsys.readouterr().out
    assert len(rows(out)) == 6


def test_a_crashing_cell_is_recorded_and_the_rest_go_on(tmp_path, breastmnist):
    config = write_study(tmp_path, breastmnist, seeds=[0], comparisons=[], methods={
        "broken": str(tmp_path / "broken.yaml"), "constant": str(REPO / "configs/finetune_constant.yaml")})
    study_main(["--config", str(config)])
    by_method = {r["method"]: r for r in rows(tmp_path / "study")}
    assert by_method["broken"]["status"] == "error" and "no_such_schedule" in by_method["broken"]["error"]
    assert by_method["constant"]["status"] == "ok"


def test_source_stage_is_fitted_once_cached_and_used(tmp_path, breastmnist, shared_file):
    knee = shared_file("knee_oa_kl_64.npz")
    stage_args = [*TINY, "--data.init_args.train_size", "40", "--data.init_args.sampling", "stratified",
                  "--model.init_args.pretrained", "false"]
    config = write_study(
        tmp_path, breastmnist, seeds=[0], methods={"constant": str(REPO / "configs/finetune_constant.yaml")},
        sources={}, comparisons=[],
        source_stages={"knee": {"config": str(REPO / "configs/finetune_constant.yaml"), "data": str(knee), "args": stage_args}},
    )
    study_main(["--config", str(config)])
    (cached,) = (tmp_path / "study" / "sources").glob("knee-*.ckpt")  # keyed by the stage's settings
    (result,) = rows(tmp_path / "study")
    assert result["source"] == "knee" and result["status"] == "ok"


def test_paired_comparison_of_sources_uses_matching_seeds():
    results = [
        {"target": "t", "source": s, "method": "m", "train_size": "50", "seed": str(seed), "status": "ok",
         "test_auroc": str(base + 0.01 * seed), "wall_s": "1"}
        for s, base in (("chest", 0.8), ("imagenet", 0.7)) for seed in range(4)
    ]
    results.append({**results[0], "seed": "9", "test_auroc": "0.1"})  # no partner: left out of the pairs
    (diff,) = paired_comparisons(results, [["chest", "imagenet"]], methods=["m"])
    assert diff["n_pairs"] == 4 and diff["diff_mean"] == pytest.approx(0.1)
    assert diff["diff_low"] == pytest.approx(0.1) and diff["axis"] == "source"
    assert {s["source"]: s["n_seeds"] for s in summarize(results)} == {"chest": 5, "imagenet": 4}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sizez": [50]}, "study: unknown key 'sizez'. Did you mean 'sizes'"),
        ({"comparisons": [["paper", "nope"]]}, "comparison \\['paper', 'nope'\\] must name two methods or two sources"),
        ({"methods": {"paper": "configs/no_such.yaml"}, "comparisons": []}, "method 'paper': recipe config not found: configs/no_such.yaml"),
    ],
)
def test_study_config_errors_name_the_key(tmp_path, breastmnist, change, message):
    config = write_study(tmp_path, breastmnist, **change)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_study_config(config)


def test_workers_run_every_cell_once_in_their_own_processes(tmp_path, breastmnist):
    config = write_study(tmp_path, breastmnist, seeds=[0, 1], workers=2)
    study_main(["--config", str(config)])
    results = rows(tmp_path / "study")
    assert sorted((r["method"], r["seed"], r["status"]) for r in results) == [
        (m, str(s), "ok") for m in ("constant", "paper") for s in (0, 1)]
    assert (tmp_path / "study" / "summary.csv").stat().st_size > 0


def test_study_cells_keep_the_best_weights_in_memory_with_the_same_result(tmp_path, breastmnist):
    """The lean study cell selects and tests exactly the weights a checkpointed run would (same AUC)."""
    from smallmed.cli import fit_and_test

    args = ["--config", str(REPO / "configs/finetune_constant.yaml"), "--data.init_args.path", str(breastmnist),
            "--data.init_args.train_size", "20", "--model.init_args.pretrained", "false", *TINY,
            "--trainer.max_epochs", "4", "--trainer.deterministic", "true",
            "--trainer.logger", f'{{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {{"save_dir": "{tmp_path}"}}}}']
    on_disk = fit_and_test(args)
    in_memory = fit_and_test(args, study_cell=True)
    assert in_memory["test/auroc"] == pytest.approx(on_disk["test/auroc"], abs=1e-7)
    assert sorted(p.parent.parent.name for p in tmp_path.rglob("*.ckpt")) == ["version_0"] * 2  # best and last, from the checkpointed run only


def test_sigterm_stops_the_study_instead_of_being_recorded_as_a_bad_config(tmp_path, breastmnist, monkeypatch):
    """Lightning raises SIGTERMException (a SystemExit) on SIGTERM; it must end the study, not one cell."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    import smallmed.cli

    def terminated(*args, **kwargs):
        raise SIGTERMException(1)

    monkeypatch.setattr(smallmed.cli, "fit_and_test", terminated)
    config = write_study(tmp_path, breastmnist, seeds=[0, 1])
    with pytest.raises(SIGTERMException):
        study_main(["--config", str(config)])
    assert not (tmp_path / "study" / "results.csv").exists()


def test_ctrl_c_inside_a_run_stops_the_study(tmp_path, breastmnist, monkeypatch):
    """Lightning answers Ctrl-C with sys.exit(1); only the parser's exit 2 is a bad cell config."""
    import smallmed.cli

    def interrupted(*args, **kwargs):
        raise SystemExit(1)

    monkeypatch.setattr(smallmed.cli, "fit_and_test", interrupted)
    with pytest.raises(SystemExit):
        study_main(["--config", str(write_study(tmp_path, breastmnist, seeds=[0]))])
    assert not (tmp_path / "study" / "results.csv").exists()


# ------------------------------------------------------------------------------ config-native pieces
def test_a_run_spec_resolves_to_the_config_a_file_would_hold(tmp_path):
    from smallmed.study.runs import RunSpec

    spec = RunSpec([str(REPO / "configs/paper_recipe.yaml")], data={"class_path": "smallmed.datamodules.ImageFolderDataModule",
                   "init_args": {"path": "scans/", "patient_pattern": "p(\\d+)"}},
                   overrides={"model.lr": 0.01, "data.init_args.train_size": 80, "trainer.callbacks+": [{"class_path": "x.Y"}]})
    config = spec.config()
    data = config["data"]
    assert data["class_path"] == "smallmed.datamodules.ImageFolderDataModule"
    # the recipe's subset and loader settings carry over; its npz path does not
    assert data["init_args"] == {"path": "scans/", "patient_pattern": "p(\\d+)", "train_size": 80, "sampling": "balanced",
                                 "seed": 0, "image_size": 64, "batch_size": 16}
    assert config["model"]["init_args"]["lr"] == 0.01  # model.lr means model.init_args.lr
    assert config["trainer"]["callbacks"][-1] == {"class_path": "x.Y"} and len(config["trainer"]["callbacks"]) == 4


@pytest.mark.parametrize(("location", "class_path"), [
    ("a/b.npz", "smallmed.datamodules.NpzDataModule"), ("export/labels.csv", "smallmed.datamodules.ManifestDataModule"),
    ("scans/", "smallmed.datamodules.ImageFolderDataModule"),
])
def test_a_bare_location_becomes_the_data_module_that_reads_it(location, class_path):
    from smallmed.study.runs import data_section

    assert data_section(location) == {"class_path": class_path, "init_args": {"path": location}}


def test_the_older_flag_list_overrides_are_read_as_config_keys():
    from smallmed.study.runs import flags_to_overrides

    assert flags_to_overrides(["--trainer.max_epochs", "5", "--data.init_args.train_size=null", "--x.y", "[1, 2]"]) == {
        "trainer.max_epochs": 5, "data.init_args.train_size": None, "x.y": [1, 2]}
    with pytest.raises(ValueError, match="has no value"):
        flags_to_overrides(["--trainer.max_epochs"])


def test_part_files_merge_by_run_key_and_a_half_written_row_is_never_read(tmp_path):
    from smallmed.study.results import append_row, merged_rows, read_rows

    base = {"target": "t", "source": "s", "method": "m", "train_size": 50, "variant": "", "status": "ok", "test_auroc": 0.7}
    append_row(tmp_path / "parts" / "a.csv", {**base, "seed": 0})
    append_row(tmp_path / "parts" / "a.csv", {**base, "seed": 1, "status": "error", "test_auroc": ""})
    append_row(tmp_path / "parts" / "b.csv", {**base, "seed": 1})  # a resume: the error is replaced
    append_row(tmp_path / "parts" / "b.csv", {**base, "seed": 0, "test_auroc": 0.9})  # a duplicate: the first stays
    with (tmp_path / "parts" / "b.csv").open("a") as f:
        f.write("t,s,m,50,,2,ok,0.8")  # a cell killed mid-write: no newline
    assert len(read_rows(tmp_path / "parts" / "b.csv")) == 2
    rows = merged_rows(tmp_path)
    assert sorted((r["seed"], r["status"], r["test_auroc"]) for r in rows) == [("0", "ok", "0.7"), ("1", "ok", "0.7")]


def test_the_recommendation_names_the_best_and_says_when_the_data_cannot_tell():
    from smallmed.study.summary import recommend

    def rows(method, size, values):
        return [{"target": "kb", "source": "chest", "method": method, "train_size": str(size), "variant": "", "seed": str(s),
                 "status": "ok", "test_auroc": str(v), "wall_s": "1"} for s, v in enumerate(values)]

    results = (rows("paper", 50, [0.80, 0.70, 0.75, 0.72]) + rows("fe", 50, [0.70, 0.61, 0.66, 0.62])
               + rows("paper", 200, [0.80, 0.70, 0.75, 0.72]) + rows("fe", 200, [0.82, 0.66, 0.74, 0.73]))
    clear, unclear = recommend(results)
    assert clear["best"] == "paper (chest)" and clear["diff_mean"] == pytest.approx(0.095)
    assert clear["sentence"].startswith("at N=50 on kb use paper (chest): it beats the runner-up, fe (chest), by +0.095 [")
    assert unclear["train_size"] == 200 and "the data cannot tell them apart; more seeds or more images needed" in unclear["sentence"]


def test_any_config_key_is_a_grid_axis_and_the_study_ends_with_a_recommendation(tmp_path, breastmnist, capsys):
    config = write_study(tmp_path, breastmnist, seeds=[0, 1], methods={"constant": str(REPO / "configs/finetune_constant.yaml")},
                         comparisons=[], grid={"model.init_args.lr": [1e-4, 1e-2]})
    study_main(["--config", str(config)])
    out = tmp_path / "study"
    results = rows(out)
    assert sorted((r["variant"], r["seed"]) for r in results) == [
        (f"model.init_args.lr={lr}", str(s)) for lr in (0.0001, 0.01) for s in (0, 1)]
    assert len({r["test_auroc"] for r in results}) == 4  # the axis reached the runs
    text = (out / "recommendation.txt").read_text()
    assert text.startswith("at N=50 on breast ") and "model.init_args.lr=" in text
    assert text.strip() in capsys.readouterr().out


def test_on_a_slurm_login_node_local_cells_do_not_each_tell_the_user_to_use_srun(tmp_path, breastmnist):
    """Lightning warns, for every trainer, that `srun` is on the PATH but not used; a local study's cells
    are meant to run without it, so the study says nothing of the kind (here `srun` is a stand-in)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    config = write_study(tmp_path, breastmnist, seeds=[0], methods={"constant": str(REPO / "configs/finetune_constant.yaml")},
                         comparisons=[])
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "study", "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[study] 1 runs ok" in done.stdout + done.stderr
    assert "is available on your system but is not used" not in done.stdout + done.stderr


def test_seed_ensembles_blends_and_the_auto_choice_are_derived_from_saved_runs(tmp_path, breastmnist):
    import torch

    from smallmed.study.derived import headline_auroc
    from smallmed.study.predictions import predictions_path

    config = write_study(tmp_path, breastmnist, seeds=[0, 1], ensembles={"constant": [2, 3]}, blends={"mix": ["paper", "constant"]},
                         auto={"auto": ["paper", "constant"], "inner": {"candidates": ["paper", "constant"], "inner_val": 0.3},
                               "late": {"candidates": ["paper", "constant"], "by": "late_mean"},
                               "folds": {"candidates": ["paper", "constant"], "inner_folds": 2, "by": "late_mean"},
                               "both": {"candidates": ["paper", "constant"], "inner_folds": 2, "with_val_split": True,
                                        "by": "late_mean"}},
                         comparisons=[["constant_x3", "constant"], ["auto", "paper"]],
                         overrides=[*TINY, "--trainer.max_epochs", "5"])  # 34 images: 2 steps an epoch
    study_main(["--config", str(config)])
    out = tmp_path / "study"
    results = rows(out)
    members = sorted((r["variant"], r["seed"]) for r in results if r["variant"].startswith("member"))
    assert members == [("member=1", "0"), ("member=1", "1"), ("member=2", "0"), ("member=2", "1")]
    inner_runs = {(r["method"], int(r["seed"])): r for r in results if r["variant"] == "data.init_args.inner_val=0.3"}
    assert set(inner_runs) == {(m, s) for m in ("paper", "constant") for s in (0, 1)}
    assert all(r["val_auroc"] for r in results)

    def saved(member: int, seed: int) -> dict:
        name = "breast/none/constant/N50" + (f"/member={member}" if member else "")
        return torch.load(predictions_path(out, name, seed), weights_only=True)

    plain = {int(r["seed"]): r for r in results if r["method"] == "constant" and not r["variant"]}
    first = saved(0, 0)
    assert headline_auroc(first["task"], first["probs"], first["targets"]) == pytest.approx(float(plain[0]["test_auroc"]), abs=1e-6)
    assert not torch.equal(first["probs"], saved(1, 0)["probs"])  # another training seed, the same subset
    torch.testing.assert_close(first["targets"], saved(1, 0)["targets"])

    with (out / "summary.csv").open() as f:
        summary = {(r["method"], r["variant"]): r for r in csv.DictReader(f)}
    assert {"constant_x2", "constant_x3", "auto", "inner"} <= {m for m, _ in summary} and not any(v for _, v in summary)
    expected_x2 = [headline_auroc("binary", (saved(0, s)["probs"] + saved(1, s)["probs"]) / 2, saved(0, s)["targets"])
                   for s in (0, 1)]
    assert float(summary[("constant_x2", "")]["auroc_mean"]) == pytest.approx(sum(expected_x2) / 2, abs=1e-6)
    walls = [float(r["wall_s"]) for r in results if r["method"] == "constant" and r["variant"] in ("", "member=1")]
    assert float(summary[("constant_x2", "")]["wall_s_mean"]) == pytest.approx(sum(walls) / 2, abs=0.02)  # K runs' cost

    # the blend: the paper and constant runs' own test probabilities averaged, at the cost of both runs
    def own(method: str, seed: int) -> dict:
        return torch.load(predictions_path(out, f"breast/none/{method}/N50", seed), weights_only=True)

    expected_mix = [headline_auroc("binary", (own("paper", s)["probs"] + own("constant", s)["probs"]) / 2,
                                   own("paper", s)["targets"]) for s in (0, 1)]
    assert float(summary[("mix", "")]["auroc_mean"]) == pytest.approx(sum(expected_mix) / 2, abs=1e-6)
    own_walls = [float(r["wall_s"]) for r in results if r["method"] in ("paper", "constant") and not r["variant"]]
    assert float(summary[("mix", "")]["wall_s_mean"]) == pytest.approx(sum(own_walls) / 2, abs=0.02)

    by_seed = {(r["method"], int(r["seed"])): r for r in results if not r["variant"]}
    expected_auto = [max(("paper", "constant"), key=lambda m: float(by_seed[(m, s)]["val_auroc"])) for s in (0, 1)]
    auto_mean = sum(float(by_seed[(m, s)]["test_auroc"]) for m, s in zip(expected_auto, (0, 1))) / 2
    assert float(summary[("auto", "")]["auroc_mean"]) == pytest.approx(auto_mean, abs=1e-6)
    # the inner choice looks at the inner runs' val AUC only, and tests the chosen recipe's own run
    expected_inner = [max(("paper", "constant"), key=lambda m: float(inner_runs[(m, s)]["val_auroc"])) for s in (0, 1)]
    inner_mean = sum(float(by_seed[(m, s)]["test_auroc"]) for m, s in zip(expected_inner, (0, 1))) / 2
    assert float(summary[("inner", "")]["auroc_mean"]) == pytest.approx(inner_mean, abs=1e-6)
    with (out / "derived.csv").open() as f:
        notes = {r["method"]: r["note"] for r in csv.DictReader(f) if r["seed"] == "0"}
    assert notes["inner"] == f"chose {expected_inner[0]} by val AUC on 0.3 of the training subset"
    # the late-mean choice compares the mean val AUC of the last 3 of the 5 epochs, as each run logged it
    from smallmed.study.runner import member_cell_name

    for r in (r for r in results if not r["variant"].startswith("member")):
        log = next((out / "logs" / member_cell_name(r, 0) / f"seed{r['seed']}").glob("*/metrics.csv"))
        logged = [float(m["val/auroc"]) for m in csv.DictReader(io.StringIO(log.read_text())) if m["val/auroc"]]
        assert len(logged) == 5 and float(r["val_auroc_late"]) == pytest.approx(sum(logged[2:]) / 3, abs=1e-6)
        assert float(r["val_auroc"]) == pytest.approx(max(logged), abs=1e-6)
    expected_late = [max(("paper", "constant"), key=lambda m: float(by_seed[(m, s)]["val_auroc_late"])) for s in (0, 1)]
    late_mean = sum(float(by_seed[(m, s)]["test_auroc"]) for m, s in zip(expected_late, (0, 1))) / 2
    assert float(summary[("late", "")]["auroc_mean"]) == pytest.approx(late_mean, abs=1e-6)
    assert notes["late"] == f"chose {expected_late[0]} by late-mean val AUC"
    # the folds' choice: each candidate's late mean averaged over its 2 fold runs, which split the subset
    folds = {(r["method"], int(r["seed"]), r["variant"]): r for r in results if "inner_fold=" in r["variant"]}
    # 2 methods x 2 seeds x 2 folds, shared by both fold choices
    assert len(folds) == 8 and all(v.startswith("data.init_args.inner_folds=2;data.init_args.inner_fold=") for _, _, v in folds)

    def fold_score(method: str, seed: int) -> float:
        return sum(float(folds[(method, seed, f"data.init_args.inner_folds=2;data.init_args.inner_fold={f}")]["val_auroc_late"])
                   for f in (0, 1)) / 2

    expected_folds = [max(("paper", "constant"), key=lambda m: fold_score(m, s)) for s in (0, 1)]
    folds_mean = sum(float(by_seed[(m, s)]["test_auroc"]) for m, s in zip(expected_folds, (0, 1))) / 2
    assert float(summary[("folds", "")]["auroc_mean"]) == pytest.approx(folds_mean, abs=1e-6)
    assert notes["folds"] == f"chose {expected_folds[0]} by late-mean val AUC over 2 folds of the training subset"
    # with the val split too: the folds' mean and the own run's late mean, weighted equally (same runs)
    def both_score(method: str, seed: int) -> float:
        return (fold_score(method, seed) + float(by_seed[(method, seed)]["val_auroc_late"])) / 2

    expected_both = [max(("paper", "constant"), key=lambda m: both_score(m, s)) for s in (0, 1)]
    both_mean = sum(float(by_seed[(m, s)]["test_auroc"]) for m, s in zip(expected_both, (0, 1))) / 2
    assert float(summary[("both", "")]["auroc_mean"]) == pytest.approx(both_mean, abs=1e-6)
    with (out / "derived.csv").open() as f:
        both_rows = {r["seed"]: r for r in csv.DictReader(f) if r["method"] == "both"}
    assert float(both_rows["0"]["val_auroc_late"]) == pytest.approx(both_score(expected_both[0], 0), abs=1e-6)
    assert notes["both"] == (f"chose {expected_both[0]} by late-mean val AUC over 2 folds of the training subset"
                             " and on the val split, equally weighted")
    with (out / "paired.csv").open() as f:
        assert {r["compare"] for r in csv.DictReader(f)} == {"constant_x3 - constant", "auto - paper"}

    # a study grown from its committed CSVs has no predictions for its earlier subsets: their ensemble and
    # blend rows are kept from the earlier derived.csv, for the subsets the grid still holds
    def ensembles() -> dict[tuple[str, str], str]:
        with (out / "derived.csv").open() as f:
            return {(r["method"], r["seed"]): r["test_auroc"] for r in csv.DictReader(f)
                    if "_x" in r["method"] or r["method"] == "mix"}

    before = ensembles()
    assert set(before) == {(m, s) for m in ("constant_x2", "constant_x3", "mix") for s in ("0", "1")}
    for path in (out / "predictions").rglob("seed0.pt"):
        path.unlink()
    study_main(["--config", str(config), "--report-only"])
    assert ensembles() == before
    config.write_text(config.read_text().replace("seeds:\n- 0\n- 1\n", "seeds:\n- 1\n"))
    study_main(["--config", str(config), "--report-only"])
    assert ensembles() == {k: v for k, v in before.items() if k[1] == "1"}


@pytest.mark.parametrize(("extra", "message"), [
    ({"ensembles": {"papr": [3]}}, "ensembles: 'papr' is not a method of the study"),
    ({"ensembles": {"paper": [1]}}, r"ensembles.paper needs a list of ensemble sizes K >= 2"),
    ({"auto": {"auto": ["paper", "fe"]}}, r"auto.auto needs a list of at least two methods.*\['fe'\] unknown"),
    ({"blends": {"mix": ["paper", "fe"]}}, r"blends.mix needs a list of at least two different methods.*\['fe'\] unknown"),
    ({"blends": {"mix": ["paper", "paper"]}}, r"blends.mix needs a list of at least two different methods"),
    ({"blends": {"mix": "paper"}}, r"blends.mix needs a list of at least two different methods of the study, got 'paper'"),
    ({"blends": {"paper": ["paper", "constant"]}}, r"blends: 'paper' is already a method"),
    ({"blend": {"mix": ["paper", "constant"]}}, r"unknown key 'blend'. Did you mean 'blends'\?"),
    ({"auto": {"auto": {"candidates": ["paper", "constant"], "inner": 0.3}}}, r"auto.auto: unknown key\(s\) \['inner'\]"),
    ({"auto": {"auto": {"candidates": ["paper", "constant"], "inner_val": 1.5}}}, r"auto.auto.inner_val is a fraction"),
    ({"auto": {"auto": {"candidates": ["paper", "constant"], "by": "last"}}}, r"auto.auto: by: 'last' is not a criterion.*late_mean"),
    ({"auto": {"auto": {"candidates": ["paper", "constant"], "inner_folds": 1}}}, r"auto.auto: inner_folds is a number of folds, 2"),
    ({"auto": {"auto": {"candidates": ["paper", "constant"], "inner_folds": 3, "inner_val": 0.3}}}, r"auto.auto: give inner_val"),
    ({"auto": {"auto": {"candidates": ["paper", "constant"], "with_val_split": True}}},
     r"auto.auto: with_val_split adds the val split to an inner validation; give inner_val or inner_folds"),
    ({"auto": {"auto": {"candidates": ["paper", "constant"], "inner_folds": 3, "with_val_split": "yes"}}},
     r"auto.auto: with_val_split is true or false; got 'yes'"),
])
def test_ensemble_blend_and_auto_settings_are_checked_by_name(tmp_path, breastmnist, extra, message):
    with pytest.raises(ValueError, match=message):
        load_study_config(write_study(tmp_path, breastmnist, **extra))


def test_seeds_can_be_given_per_training_set_size(tmp_path, breastmnist):
    from smallmed.study.runner import cells

    config = load_study_config(write_study(tmp_path, breastmnist, sizes=[50, 100], seeds={50: 2, 100: [7]},
                                           methods={"paper": str(REPO / "configs/paper_recipe.yaml")}, comparisons=[]))
    assert [(c.train_size, c.seed) for c in cells(config)] == [(50, 0), (50, 1), (100, 7)]
    with pytest.raises(ValueError, match=r"seeds gives no count for N=100"):
        load_study_config(write_study(tmp_path, breastmnist, sizes=[50, 100], seeds={50: 2}))


def test_predictions_of_other_test_splits_are_not_averaged(tmp_path):
    import torch

    from smallmed.study.derived import averaged_auroc

    one, other = tmp_path / "one.pt", tmp_path / "other.pt"
    probs = torch.tensor([0.2, 0.9, 0.4, 0.7])
    torch.save({"task": "binary", "probs": probs, "targets": torch.tensor([0, 1, 0, 1])}, one)
    torch.save({"task": "binary", "probs": torch.tensor([0.9, 0.1, 0.2, 0.3]), "targets": torch.tensor([0, 1, 0, 1])}, other)
    # alone 1.0 and 0.25; their mean (0.55, 0.5, 0.3, 0.5) orders 2 of the 4 positive-negative pairs
    assert averaged_auroc([one, other]) == pytest.approx(0.5)
    torch.save({"task": "binary", "probs": probs, "targets": torch.tensor([1, 1, 0, 0])}, other)
    with pytest.raises(ValueError, match=r"other.pt holds the predictions of another test split than .*one.pt"):
        averaged_auroc([one, other])
