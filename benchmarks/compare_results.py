"""Paired differences between two study results files: the same cells and seeds, run two ways.

    python benchmarks/compare_results.py docs/results/defaults_after_redesign_b77f405.csv \
        docs/results/defaults_before_redesign_5d612d5.csv --names after before

For every (target, source, method, N) both files hold, prints each side's mean test AUC and the
mean of ``a - b`` over the seeds both have, with 95% intervals (:mod:`smallmed.stats`).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallmed.stats import fmt_ci, mean_ci, paired_difference  # noqa: E402


def load(path: str) -> dict[tuple, dict[int, float]]:
    cells: dict[tuple, dict[int, float]] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("status", "ok") == "ok":
                key = (r["target"], r["source"], r["method"], r["train_size"])
                cells.setdefault(key, {})[int(r["seed"])] = float(r["test_auroc"])
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--names", nargs=2, default=["a", "b"])
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    na, nb = args.names
    print(f"| target | source | method | N | {na} | {nb} | {na} - {nb} (paired) | pairs |")
    print("|---|---|---|---|---|---|---|---|")
    for key in sorted(set(a) & set(b)):
        mean, low, high, n = paired_difference(a[key], b[key])
        diff = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
        print(f"| {' | '.join(key)} | {fmt_ci(*mean_ci(list(a[key].values())))} | {fmt_ci(*mean_ci(list(b[key].values())))} "
              f"| {diff} | {n} |")


if __name__ == "__main__":
    main()
