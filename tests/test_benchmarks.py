"""The benchmark scripts run and print their figures (on tiny models; the figures themselves are not asserted)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_loop_overhead_prints_both_loops_and_their_ratio_on_the_device_resident_path():
    out = run("benchmarks/loop_overhead.py", "--model", "test_resnet", "--size", "32", "--images", "32",
              "--epochs", "1", "--device-resident")
    assert "raw PyTorch loop:" in out and "smallmed (Lightning Trainer + callbacks):" in out
    assert float(out.split("ratio smallmed / raw:")[1].split()[0]) > 0


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
