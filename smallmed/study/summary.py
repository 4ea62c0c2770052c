"""What a study's results say: mean AUC per cell, paired differences, and a recommendation per N.

At N=50 the subset drawn moves test AUC by about +-0.05, more than most differences between
recipes, so comparisons are *paired* over the same subset seeds (:mod:`smallmed.stats`), and the
recommendation says so plainly when the data cannot tell the two best configurations apart.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from smallmed.stats import mean_ci, paired_difference

CELL_FIELDS = ("target", "source", "method", "train_size", "variant")


def _ok(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok" and r.get("test_auroc") not in ("", None)]


def _size(value: Any) -> int | str:
    return int(value) if str(value).strip().lstrip("-").isdigit() else str(value)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean test AUC and its 95% interval per (target, source, method, N, variant)."""
    groups: dict[tuple, list[float]] = {}
    walls: dict[tuple, list[float]] = {}
    for r in _ok(rows):
        key = (r["target"], r["source"], r["method"], _size(r["train_size"]), r.get("variant") or "")
        groups.setdefault(key, []).append(float(r["test_auroc"]))
        walls.setdefault(key, []).append(float(r.get("wall_s") or 0))
    out = []
    for key in sorted(groups, key=_order):
        mean, low, high = mean_ci(groups[key])
        out.append({"target": key[0], "source": key[1], "method": key[2], "train_size": key[3], "variant": key[4],
                    "n_seeds": len(groups[key]), "auroc_mean": mean, "auroc_low": low, "auroc_high": high,
                    "wall_s_mean": sum(walls[key]) / len(walls[key])})
    return out


def _by_cell(rows: list[dict[str, Any]]) -> dict[tuple, dict[int, float]]:
    by_cell: dict[tuple, dict[int, float]] = {}
    for r in _ok(rows):
        key = (r["target"], r["source"], r["method"], _size(r["train_size"]), r.get("variant") or "")
        by_cell.setdefault(key, {})[int(r["seed"])] = float(r["test_auroc"])
    return by_cell


def paired_comparisons(rows: list[dict[str, Any]], pairs: list[list[str]], methods: Iterable[str]) -> list[dict[str, Any]]:
    """For each pair ``[a, b]`` (two methods, or two sources): mean of ``a - b`` over the same seeds, per cell."""
    methods = set(methods)
    by_cell = _by_cell(rows)
    out = []
    for a, b in pairs:
        axis = "method" if a in methods else "source"
        for key, a_vals in sorted(by_cell.items(), key=lambda kv: _order(kv[0])):
            target, source, method, size, variant = key
            if (method if axis == "method" else source) != a:
                continue
            other = (target, source, b, size, variant) if axis == "method" else (target, b, method, size, variant)
            if other not in by_cell:
                continue
            mean, low, high, n = paired_difference(a_vals, by_cell[other])
            fixed = source if axis == "method" else method
            out.append({"target": target, "compare": f"{a} - {b}", "axis": axis, "fixed": fixed, "train_size": size,
                        "variant": variant, "n_pairs": n, "diff_mean": mean, "diff_low": low, "diff_high": high})
    return out


def _order(key: tuple) -> tuple:
    """Sizes in numeric order (50 before 200), text after numbers."""
    return tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in key)


def _label(key: tuple) -> str:
    _, source, method, _, variant = key
    return f"{method} ({source}{', ' + variant if variant else ''})"


def recommend(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target and N: the configuration with the best mean test AUC, its paired difference with the
    runner-up over the seeds both have, and a sentence a user can act on."""
    by_cell = _by_cell(rows)
    out = []
    for target, size in sorted({(k[0], k[3]) for k in by_cell}, key=_order):
        ranked = sorted(((sum(v.values()) / len(v), k) for k, v in by_cell.items() if k[0] == target and k[3] == size),
                        key=lambda t: t[0], reverse=True)
        best_mean, best = ranked[0]
        row: dict[str, Any] = {"target": target, "train_size": size, "best": _label(best), "best_auroc": best_mean,
                               "best_seeds": len(by_cell[best])}
        if len(ranked) == 1:
            row.update(runner_up="", diff_mean=math.nan, diff_low=math.nan, diff_high=math.nan, n_pairs=0,
                       sentence=f"at N={size} on {target} only {_label(best)} was run: nothing to compare it with")
            out.append(row)
            continue
        _, second = ranked[1]
        mean, low, high, n = paired_difference(by_cell[best], by_cell[second])
        row.update(runner_up=_label(second), diff_mean=mean, diff_low=low, diff_high=high, n_pairs=n)
        if n < 2 or math.isnan(low):
            sentence = (f"at N={size} on {target} {_label(best)} leads {_label(second)} by {mean:+.3f} over {n} paired "
                        "seed(s): too few to say; more seeds needed")
        elif low > 0:
            sentence = (f"at N={size} on {target} use {_label(best)}: it beats the runner-up, {_label(second)}, by "
                        f"{mean:+.3f} [{low:+.3f}, {high:+.3f}] test AUC (paired over {n} seeds)")
        else:
            sentence = (f"at N={size} on {target} {_label(best)} and {_label(second)} differ by {mean:+.3f} "
                        f"[{low:+.3f}, {high:+.3f}] (paired over {n} seeds): the data cannot tell them apart; "
                        "more seeds or more images needed")
        row["sentence"] = sentence
        out.append(row)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    if not rows:
        path.write_text("")
        return path
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
