"""Tables for docs/results.md from study results and fastai peer runs (so the numbers come from code).

    python benchmarks/results_tables.py runs/study/breastmnist_n50/results.csv runs/study/kermany_b_n50/results.csv \
        --peer breastmnist=runs/peer/fastai_breastmnist.csv --peer kermany_b=runs/peer/fastai_kermany_b.csv

Prints Markdown: per-cell mean test AUC with 95% intervals, and paired differences (same subset
seeds) of every smallmed cell against fastai's ``fine_tune`` on its target, and between sources.
``--seeds 20 21 ...`` keeps only those subset seeds, e.g. the ones a rule was not picked on.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallmed.stats import mean_ci, paired_difference  # noqa: E402
from smallmed.study.derived import is_auxiliary  # noqa: E402


def load(path: str) -> list[dict]:
    """The ok rows of a results file, without the runs made only for derived methods (ensemble members,
    inner-validation runs): the ensembles and auto choices themselves come in ``derived.csv``."""
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get("status", "ok") == "ok" and not is_auxiliary(r)]


def by_seed(rows: list[dict]) -> dict[int, float]:
    return {int(r["seed"]): float(r["test_auroc"]) for r in rows}


def fmt(mean: float, low: float, high: float, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="study results.csv files")
    parser.add_argument("--peer", action="append", default=[], help="TARGET=fastai_peer CSV")
    parser.add_argument("--wide", action="store_true", help="learning-curve tables: one row per recipe, one column per N")
    parser.add_argument("--baseline", default=None, help="also print every recipe's paired difference to this method (e.g. paper)")
    parser.add_argument("--plot", default=None, help="also draw learning_curve_<target>.png of every cell (fastai included) into this folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="only these subset seeds (default: all)")
    args = parser.parse_args()
    kept = (lambda r: True) if args.seeds is None else (lambda r: int(r["seed"]) in args.seeds)
    cells: dict[tuple, dict[int, float]] = {}
    walls: dict[tuple, list[float]] = {}
    for path in args.results:
        for r in filter(kept, load(path)):
            key = (r["target"], r["source"], r["method"], int(r["train_size"]))
            cells.setdefault(key, {})[int(r["seed"])] = float(r["test_auroc"])
            walls.setdefault(key, []).append(float(r["wall_s"] or 0))
    for spec in args.peer:
        target, _, path = spec.partition("=")
        for r in filter(kept, load(path)):
            key = (target, "imagenet", "fastai fine_tune", int(r["train_size"]))
            cells.setdefault(key, {})[int(r["seed"])] = float(r["test_auroc"])
            walls.setdefault(key, []).append(float(r["wall_s"]))

    if args.baseline:
        print_against(cells, args.baseline)
    if args.plot:
        plot(cells, Path(args.plot))
    if args.wide:
        print_wide(cells)
        return
    print("| target | source | recipe | N | seeds | test AUC, mean [95% CI] | s/run |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(cells):
        target, source, method, n = key
        values = list(cells[key].values())
        wall = sum(walls[key]) / len(walls[key])
        print(f"| {target} | {source} | {method} | {n} | {len(values)} | {fmt(*mean_ci(values))} | {wall:.1f} |")

    comparisons = []
    for key in sorted(cells):
        target, source, method, n = key
        peer = (target, "imagenet", "fastai fine_tune", n)
        if method != "fastai fine_tune" and peer in cells:
            mean, low, high, pairs = paired_difference(cells[key], cells[peer])
            comparisons.append(f"| {target} | {method} ({source}) - fastai fine_tune (imagenet) | {n} | {pairs} | {fmt(mean, low, high, True)} |")
    sources = sorted({k[1] for k in cells if k[2] != "fastai fine_tune"})
    for key in sorted(cells):
        target, source, method, n = key
        for other in sources:
            other_key = (target, other, method, n)
            if other > source and other_key in cells and method != "fastai fine_tune":
                mean, low, high, pairs = paired_difference(cells[key], cells[other_key])
                comparisons.append(f"| {target} | {method}: {source} - {other} | {n} | {pairs} | {fmt(mean, low, high, True)} |")
    if comparisons:  # none when every cell shares one source and there is no peer
        print("\n| target | comparison (paired by subset seed) | N | pairs | difference, mean [95% CI] |")
        print("|---|---|---|---|---|")
        print("\n".join(comparisons))


def print_against(cells: dict[tuple, dict[int, float]], baseline: str) -> None:
    """Every recipe minus ``baseline`` (same target, source, N), paired by subset seed, one column per target."""
    targets = sorted({k[0] for k in cells})
    for n in sorted({k[3] for k in cells}):
        print(f"\n**N={n}**: each recipe minus {baseline}, paired by subset seed, mean [95% CI] (pairs)\n")
        print("| recipe (source) | " + " | ".join(targets) + " |\n|---|" + "---|" * len(targets))
        for source, method in sorted({(k[1], k[2]) for k in cells if k[3] == n and k[2] != baseline}):
            row = []
            for target in targets:
                a, b = cells.get((target, source, method, n)), cells.get((target, source, baseline, n))
                if a and b:
                    mean, low, high, pairs = paired_difference(a, b)
                    row.append(f"{fmt(mean, low, high, True)} ({pairs})")
                else:
                    row.append("")
            print(f"| {method} ({source}) | " + " | ".join(row) + " |")
    print()


def plot(cells: dict[tuple, dict[int, float]], out: Path) -> None:
    """The study runner's learning-curve plot, over the merged cells of several studies and the peer."""
    from smallmed.study.plots import plot_learning_curves

    summary = []
    for (target, source, method, n), values in sorted(cells.items()):
        mean, low, high = mean_ci(list(values.values()))
        summary.append({"target": target, "source": source, "method": method, "train_size": int(n), "variant": "",
                        "auroc_mean": mean, "auroc_low": low, "auroc_high": high})
    out.mkdir(parents=True, exist_ok=True)
    for path in plot_learning_curves(summary, out):
        print(f"wrote {path}", file=sys.stderr)


def print_wide(cells: dict[tuple, dict[int, float]]) -> None:
    """Per target: test AUC per recipe and N, then each recipe's paired difference to fastai per N."""
    for target in sorted({k[0] for k in cells}):
        keys = [k for k in cells if k[0] == target]
        sizes = sorted({k[3] for k in keys})
        lines = sorted({(k[1], k[2]) for k in keys}, key=lambda sm: (sm[1] != "fastai fine_tune", sm))
        header = "| recipe (source) | " + " | ".join(f"N={n}" for n in sizes) + " |"
        rule = "|---|" + "---|" * len(sizes)
        print(f"\n**{target}**: test AUC, mean [95% CI] (seeds)\n\n{header}\n{rule}")
        for source, method in lines:
            row = []
            for n in sizes:
                values = list(cells.get((target, source, method, n), {}).values())
                row.append(f"{fmt(*mean_ci(values))} ({len(values)})" if len(values) > 1 else "")
            print(f"| {method} ({source}) | " + " | ".join(row) + " |")
        print(f"\n**{target}**: paired difference to fastai fine_tune, same subset seeds (pairs)\n\n{header}\n{rule}")
        for source, method in lines:
            if method == "fastai fine_tune":
                continue
            row = []
            for n in sizes:
                mine, peer = cells.get((target, source, method, n)), cells.get((target, "imagenet", "fastai fine_tune", n))
                if mine and peer:
                    mean, low, high, pairs = paired_difference(mine, peer)
                    row.append(f"{fmt(mean, low, high, True)} ({pairs})" if pairs > 1 else "")
                else:
                    row.append("")
            print(f"| {method} ({source}) | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
