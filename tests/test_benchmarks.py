"""The benchmark scripts run and print their figures (tiny models, or one epoch of the real task).

The figures themselves are not asserted: they are measurements, not properties.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_loop_overhead_prints_both_loops_and_their_ratio_on_the_device_resident_path():
    out = run("benchmarks/loop_overhead.py", "--model", "test_resnet", "--size", "32", "--images", "32",
              "--epochs", "1", "--device-resident")
    # both loops see the same images (32 images, one timed epoch of batch 16) and the ratio is theirs
    assert "32 images timed x 1" in out
    raw = float(out.split("raw PyTorch loop:")[1].split()[0])
    ours = float(out.split("smallmed (Lightning Trainer + callbacks):")[1].split()[0])
    assert float(out.split("ratio smallmed / raw:")[1].split()[0]) == pytest.approx(ours / raw, rel=0.01)  # the two times are printed rounded


def test_results_tables_wide_pivots_recipes_by_n_with_paired_differences_to_fastai(tmp_path):
    study, peer = tmp_path / "results.csv", tmp_path / "peer.csv"
    with study.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["target", "source", "method", "train_size", "seed", "status", "test_auroc", "wall_s"])
        writer.writeheader()
        for n, base in ((50, 0.7), (100, 0.8)):
            for seed in range(3):
                writer.writerow({"target": "t", "source": "imagenet", "method": "paper", "train_size": n, "seed": seed,
                                 "status": "ok", "test_auroc": base + 0.01 * seed, "wall_s": 1})
    with peer.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["target", "method", "source", "train_size", "seed", "test_auroc", "wall_s"])
        writer.writeheader()
        for seed in range(3):
            writer.writerow({"target": "t", "method": "fastai_fine_tune", "source": "imagenet", "train_size": 50,
                             "seed": seed, "test_auroc": 0.6 + 0.02 * seed, "wall_s": 1})
    out = run("benchmarks/results_tables.py", str(study), "--wide", "--peer", f"t={peer}")
    assert "| recipe (source) | N=50 | N=100 |" in out
    assert "| paper (imagenet) | 0.710 [" in out and "0.810 [" in out
    assert "+0.090 [" in out  # paper - fastai at N=50: (0.70+0.71+0.72)/3 - (0.60+0.62+0.64)/3


def test_results_tables_against_a_baseline_pairs_every_recipe_and_leaves_ensemble_members_out(tmp_path):
    study, derived = tmp_path / "results.csv", tmp_path / "derived.csv"
    fields = ["target", "source", "method", "train_size", "variant", "seed", "status", "test_auroc", "wall_s"]
    for path, rows in (
        (study, [("paper", "", 0.70), ("ema", "", 0.73), ("paper", "member=1", 0.10)]),
        (derived, [("paper_x3", "", 0.75)]),
    ):
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for method, variant, base in rows:
                for seed in range(3):
                    writer.writerow({"target": "t", "source": "imagenet", "method": method, "train_size": 50, "variant": variant,
                                     "seed": seed, "status": "ok", "test_auroc": base + 0.01 * seed * (method == "ema"),
                                     "wall_s": ""})
    out = run("benchmarks/results_tables.py", str(study), str(derived), "--baseline", "paper")
    assert "| t | imagenet | paper | 50 | 3 | 0.700 [" in out  # the member rows (0.10) did not replace the paper runs
    assert "**N=50**: each recipe minus paper" in out
    assert "| ema (imagenet) | +0.040 [" in out and "| paper_x3 (imagenet) | +0.050 [+0.050, +0.050] (3) |" in out
    assert "comparison (paired by subset seed)" not in out  # one source, no peer: no empty comparisons table
    held_out = run("benchmarks/results_tables.py", str(study), str(derived), "--baseline", "paper", "--seeds", "1", "2")
    assert "| t | imagenet | ema | 50 | 2 | 0.745 [" in held_out and "| ema (imagenet) | +0.045 [" in held_out


def test_auto_rules_replays_each_rule_on_the_val_curves_and_tests_the_chosen_run(tmp_path):
    """A fine-tune with one lucky epoch (best 0.9, late mean 0.6) against a steady frozen body (0.7):
    the best-epoch rule takes the fine-tune and its worse test AUC, the late-mean rule the frozen body."""
    results, curves = tmp_path / "results.csv", tmp_path / "curves.csv"
    with results.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["target", "method", "train_size", "variant", "seed", "status", "test_auroc"])
        writer.writeheader()
        for seed in range(3):
            writer.writerow({"target": "t", "method": "feature_extractor", "train_size": 50, "variant": "", "seed": seed,
                             "status": "ok", "test_auroc": 0.80})
            writer.writerow({"target": "t", "method": "paper", "train_size": 50, "variant": "", "seed": seed,
                             "status": "ok", "test_auroc": 0.70})
    with curves.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["target", "source", "method", "train_size", "variant", "seed", "epoch",
                                               "val_auroc", "val_loss"])
        writer.writeheader()
        for seed in range(3):
            for method, aucs in (("feature_extractor", [0.7] * 4), ("paper", [0.5, 0.9, 0.6, 0.6])):
                for epoch, auc in enumerate(aucs):
                    writer.writerow({"target": "t", "source": "imagenet", "method": method, "train_size": 50, "variant": "",
                                     "seed": seed, "epoch": epoch, "val_auroc": auc, "val_loss": 0.5})
    out = run("benchmarks/auto_rules.py", "compare", str(results), str(curves))
    assert "| best | val split | t | 50 | 3 | 3 | -0.100 [-0.100, -0.100] | +0.000 [+0.000, +0.000] |" in out
    assert "| late_mean | val split | t | 50 | 3 | 0 | +0.000 [+0.000, +0.000] | +0.100 [+0.100, +0.100] |" in out


def test_print_medians_gives_median_ratios_and_per_seed_paired_ratios(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from vs_fastai import host, print_medians

    runs = {
        "peer": [{"wall_s": 10.0, "test_auroc": 0.6}, {"wall_s": 20.0, "test_auroc": 0.7}, {"wall_s": 12.0, "test_auroc": 0.8}],
        "ours": [{"wall_s": 4.0, "test_auroc": 0.7}, {"wall_s": 12.0, "test_auroc": 0.8}, {"wall_s": 6.0, "test_auroc": 0.9}],
    }
    print_medians(runs, "peer", "ratio", f"toy; {host()}:")
    out = capsys.readouterr().out
    assert "toy; " in out and "cores, torch " in out
    peer_line, ours_line = (line for line in out.splitlines() if line.strip().startswith(("peer", "ours")))
    assert "median   12.0 s" in peer_line and "ratio 1.00" in peer_line and "per seed" not in peer_line
    # medians 6 / 12 = 0.50; per seed 0.40, 0.60, 0.50 -> median 0.50, range 0.40 to 0.60
    assert "median    6.0 s" in ours_line and "mean test AUC 0.800" in ours_line and "ratio 0.50" in ours_line
    assert "per seed 0.50 (0.40 to 0.60)" in ours_line


def test_study_speed_runs_the_cells_with_the_speed_ups_unless_asked(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from study_speed import arguments, study_overrides

    assert study_overrides(arguments().parse_args([]))["speed.mode"] == "auto"
    assert study_overrides(arguments().parse_args(["--speed-mode", "off"]))["speed.mode"] == "off"


def test_seed_batching_gives_each_model_its_own_gradients_and_prints_both_timings():
    out = run("benchmarks/seed_batching.py", "--model", "test_efficientnet", "--size", "32", "--batch", "4",
              "--seeds", "2", "--rounds", "2")
    line = next(line for line in out.splitlines() if line.startswith("K=2:"))
    assert "sequential" in line and "batched" in line
    batched_error = float(line.split("batched ")[-1].split(",")[0])
    single_error = float(line.split("one model ")[1])
    assert batched_error < 1e-4 and single_error < 1e-4


def test_checkpoint_write_times_both_plugins_and_leaves_no_file(tmp_path):
    out = run("benchmarks/checkpoint_write.py", "--model", "test_efficientnet", "--saves", "3", "--rounds", "2",
              "--dir", str(tmp_path))
    assert out.count("== round") == 4
    assert "same contents: yes" in out  # the faster writer writes the same checkpoint
    assert list(tmp_path.iterdir()) == []  # every checkpoint removed, the temporary folder too


def test_study_speed_runs_one_and_two_workers_on_real_data(tmp_path, breastmnist, lite0_weights):
    out = run("benchmarks/study_speed.py", "--data", str(breastmnist), "--weights", str(lite0_weights),
              "--workers", "1", "2", "--seeds", "1", "--sizes", "50", "--methods", "paper", "--epochs", "1",
              "--keep", str(tmp_path))
    for workers in (1, 2):
        line = next(line for line in out.splitlines() if line.startswith(f"== {workers} worker(s):"))
        assert "2 cells ok (0 failed)" in line and "the 720-run grid would take" in line
    assert out.count("paper              imagenet  N=50   test AUC") == 2
    assert (tmp_path / "workers2" / "results.csv").is_file()


def test_vs_fastai_times_all_three_runs_of_a_seed_and_their_ratios(breastmnist, lite0_weights):
    pytest.importorskip("fastai", reason="the peer is an extra: pip install -e '.[peer]'")
    out = run("benchmarks/vs_fastai.py", "--data", str(breastmnist), "--weights", str(lite0_weights),
              "--seeds", "0", "--epochs", "1")
    for name in ("fastai fine_tune(1)", "smallmed train.py run", "smallmed study cell"):
        assert f"== seed 0 {name}:" in out, name
    medians = {line.split("median")[0].strip(): line for line in out.splitlines() if " median " in line}
    fastai, cell = medians["fastai fine_tune(1)"], medians["smallmed study cell"]
    wall = {k: float(v.split("median")[1].split()[0]) for k, v in (("fastai", fastai), ("cell", cell))}
    assert float(cell.split("ratio to fastai")[1].split()[0]) == pytest.approx(wall["cell"] / wall["fastai"], abs=0.06)


def test_cpu_fast_path_runs_every_row(breastmnist, lite0_weights):
    out = run("benchmarks/cpu_fast_path.py", "--data", str(breastmnist), "--weights", str(lite0_weights),
              "--seeds", "0", "--epochs", "1")
    assert out.count("== seed 0 ") == 5
    # every row after the first computes the same model, up to rounding and the order of float sums
    aucs = {line.split(":")[0]: float(line.split("test AUC")[1]) for line in out.splitlines() if line.startswith("== seed 0 ")}
    same_data_path = [auc for row, auc in aucs.items() if "per-image" not in row]
    assert max(same_data_path) - min(same_data_path) < 0.02, aucs


def test_gpu_benchmarks_script_parses_and_passes_only_known_flags():
    """The GPU set runs on a lent machine with minutes to spare: a typo there costs a run, so check here
    that the script parses and that each benchmark it calls accepts every flag it is given."""
    script = REPO / "benchmarks" / "gpu_benchmarks.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text().replace("\\\n", " ")
    calls = [line.split("python3 ", 1)[1] for line in text.splitlines() if "python3 benchmarks/" in line]
    assert len(calls) >= 5
    calls = [call.split("|")[0].split() for call in calls]
    names = sorted({name for name, *_ in calls})
    helps = {name: subprocess.Popen([sys.executable, name, "--help"], cwd=REPO, stdout=subprocess.PIPE, text=True)
             for name in names}  # side by side: each start imports torch, timm and Lightning
    helps = {name: process.communicate(timeout=300)[0] for name, process in helps.items()}
    assert all("usage:" in text for text in helps.values()), helps  # each script imports and parses
    for name, *words in calls:
        for flag in (w for w in words if w.startswith("--")):
            assert flag in helps[name], f"{name} does not take {flag}"


def test_source_stage_curves_writes_the_latest_log_of_each_stage_and_names_a_missing_one(tmp_path):
    out_dir = tmp_path / "study"
    config = tmp_path / "study.yaml"
    config.write_text(f"""
out_dir: {out_dir}
targets: {{t: ../shared/data/t.npz}}
methods: {{paper: configs/paper_recipe.yaml}}
source_stages:
  chest: {{config: configs/lpft_recipe.yaml, data: a.npz, overrides: {{trainer.max_epochs: 2}}}}
  knee: {{config: configs/paper_recipe.yaml, data: b.npz}}
""")
    for version, aucs in ((0, [0.1, 0.2]), (1, [0.91234, 0.95])):  # version_1 is the fit that made the cache
        log = out_dir / "logs" / "sources" / "chest" / f"version_{version}" / "metrics.csv"
        log.parent.mkdir(parents=True)
        rows = [f"{epoch},,0.5" for epoch in range(2)] + [f"{epoch},{auc},0.4" for epoch, auc in enumerate(aucs)]
        log.write_text("epoch,val/auroc,train/loss\n" + "\n".join(rows) + "\n")
        os.utime(log, (1_000_000 + version, 1_000_000 + version))  # written in that order, whatever the clock's grain
    csv_out = tmp_path / "curves.csv"
    done = subprocess.run([sys.executable, "benchmarks/source_stage_curves.py", str(config), str(csv_out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "knee: no log" in done.stderr
    assert csv_out.read_text() == ("stage,config,epochs,epoch,val_auroc\n"
                                   "chest,lpft_recipe,2,0,0.9123\nchest,lpft_recipe,2,1,0.9500\n")
