"""How an auto choice between two recipes would fare under other rules, replayed from per-epoch val curves.

    python benchmarks/auto_rules.py extract runs/study/recipes_n50 docs/results/recipes_n50_val_curves.csv \
        --methods feature_extractor paper
    python benchmarks/auto_rules.py compare docs/results/recipes_n50.csv docs/results/recipes_n50_val_curves.csv

``extract`` copies every run's logged ``val/auroc`` and ``val/loss`` per epoch out of a study's CSV
logs (``<out>/logs``), so the replay needs committed files only. ``compare`` applies each rule to the
two candidates' curves per training subset (on the protocol's val split, and on the inner-validation
runs where the study has them), tests the chosen candidate's own run, and prints the paired
difference to each fixed candidate. It is how the ``late_mean`` rule of ``auto: {by: late_mean}``
(:mod:`smallmed.selection`) was picked; a rule picked this way must be checked on other seeds.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallmed.run_folder import newest_metrics_log  # noqa: E402
from smallmed.selection import late_mean  # noqa: E402
from smallmed.stats import paired_difference  # noqa: E402
from smallmed.study.derived import is_member  # noqa: E402

CURVE_FIELDS = ["target", "source", "method", "train_size", "variant", "seed", "epoch", "val_auroc", "val_loss"]
Curve = list[tuple[float, float]]  # (val AUC, val loss) per epoch

RULES: dict[str, Callable[[Curve], float]] = {
    "best": lambda c: max(a for a, _ in c),
    "last": lambda c: c[-1][0],
    "late_mean": lambda c: late_mean([a for a, _ in c]),  # the study's own `by: late_mean`
    "mean_last3": lambda c: statistics.mean(a for a, _ in c[-3:]),
    "last_loss": lambda c: -c[-1][1],
    "min_loss": lambda c: -min(loss for _, loss in c),
}


def extract(study: Path, out: Path, methods: list[str] | None = None) -> int:
    """Write the val curve of every ok run of ``study`` (its results.csv; only ``methods`` if given) to
    ``out``; the rows written."""
    from smallmed.study.runner import member_cell_name

    with (study / "results.csv").open(newline="") as f:
        runs = [r for r in csv.DictReader(f) if r["status"] == "ok" and not is_member(r)
                and (not methods or r["method"] in methods)]
    written = 0
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, CURVE_FIELDS, lineterminator="\n")
        writer.writeheader()
        for run in runs:
            path = newest_metrics_log(study / "logs" / member_cell_name(run, 0) / f"seed{run['seed']}")
            if path is None:
                continue
            with path.open(newline="") as log:
                epochs = [m for m in csv.DictReader(log) if m.get("val/auroc")]
            for m in epochs:
                writer.writerow({**{k: run[k] for k in CURVE_FIELDS[:6]}, "epoch": m["epoch"],
                                 "val_auroc": f"{float(m['val/auroc']):.6f}", "val_loss": f"{float(m['val/loss']):.6f}"})
                written += 1
    return written


def compare(results: Path, curves: Path, candidates: tuple[str, str], seeds: list[int] | None = None) -> None:
    with results.open(newline="") as f:
        tested = {(r["target"], r["train_size"], r["method"], int(r["seed"])): float(r["test_auroc"])
                  for r in csv.DictReader(f) if r["status"] == "ok" and not r["variant"]}
    runs: dict[tuple, Curve] = {}
    with curves.open(newline="") as f:
        for r in csv.DictReader(f):
            if seeds and int(r["seed"]) not in seeds:
                continue
            key = (r["target"], r["train_size"], r["method"], int(r["seed"]), r["variant"] or None)  # None: the val split
            runs.setdefault(key, []).append((float(r["val_auroc"]), float(r["val_loss"])))
    splits = sorted({k[4] for k in runs}, key=lambda s: s or "")
    cells = sorted({k[:2] for k in runs})
    a, b = candidates
    print(f"| rule | judged on | target | N | subsets | picks {b} | - {a} | - {b} |")
    print("|---|---|---|---|---|---|---|---|")
    for split in splits:
        for name, rule in RULES.items():
            for target, size in cells:
                chosen: dict[int, float] = {}
                picks = 0
                for seed in sorted({k[3] for k in runs if k[:2] == (target, size)}):
                    ca, cb = runs.get((target, size, a, seed, split)), runs.get((target, size, b, seed, split))
                    if not ca or not cb or (target, size, a, seed) not in tested or (target, size, b, seed) not in tested:
                        continue
                    pick = b if rule(cb) > rule(ca) else a  # ties: the first candidate
                    picks += pick == b
                    chosen[seed] = tested[(target, size, pick, seed)]
                if not chosen:
                    continue
                cols = []
                for other in (a, b):
                    mean, low, high, _ = paired_difference(chosen, {s: tested[(target, size, other, s)] for s in chosen})
                    cols.append(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]")
                where = "val split" if split is None else split.replace("data.init_args.", "")
                print(f"| {name} | {where} | {target} | {size} | {len(chosen)} | {picks} | {cols[0]} | {cols[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="per-epoch val curves of a study's runs, from its CSV logs")
    ex.add_argument("study", type=Path)
    ex.add_argument("out", type=Path)
    ex.add_argument("--methods", nargs="+", help="only these methods' runs")
    cmp = sub.add_parser("compare", help="replay each rule on the curves and test the chosen runs")
    cmp.add_argument("results", type=Path)
    cmp.add_argument("curves", type=Path)
    cmp.add_argument("--candidates", nargs=2, default=("feature_extractor", "paper"))
    cmp.add_argument("--seeds", nargs="+", type=int, help="only these subset seeds (e.g. those a rule was not picked on)")
    args = parser.parse_args()
    if args.command == "extract":
        print(f"{extract(args.study, args.out, args.methods)} epochs written to {args.out}")
    else:
        compare(args.results, args.curves, tuple(args.candidates), args.seeds)


if __name__ == "__main__":
    main()
