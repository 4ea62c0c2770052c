"""Learning curves: test AUC against N per target, one line per configuration, 95% intervals shaded."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot_learning_curves(summary: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per target (``learning_curve_<target>.png``) with the sizes that are numbers on a log axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for target in sorted({s["target"] for s in summary}):
        rows = [s for s in summary if s["target"] == target and isinstance(s["train_size"], int)]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        lines = sorted({(s["source"], s["method"], s["variant"]) for s in rows})
        for i, (source, method, variant) in enumerate(lines):
            line = sorted((s for s in rows if (s["source"], s["method"], s["variant"]) == (source, method, variant)),
                          key=lambda s: s["train_size"])
            dodge = 1 + 0.04 * (i - (len(lines) - 1) / 2)  # side by side on the log axis, so bars do not hide each other
            xs = [s["train_size"] * dodge for s in line]
            ys = [s["auroc_mean"] for s in line]
            label = f"{method} ({source}{', ' + variant if variant else ''})"
            if any(math.isnan(s["auroc_low"]) for s in line):
                ax.plot(xs, ys, marker="o", label=label)
                continue
            # Bars show each interval even where a curve has a single N; the band joins them.
            yerr = [[y - s["auroc_low"] for y, s in zip(ys, line)], [s["auroc_high"] - y for y, s in zip(ys, line)]]
            bars = ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=label)
            ax.fill_between(xs, [s["auroc_low"] for s in line], [s["auroc_high"] for s in line], alpha=0.15,
                            color=bars[0].get_color())
        sizes = sorted({s["train_size"] for s in rows})
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlim(min(sizes) * 0.75, max(sizes) * 1.33)
        ax.set_xlabel("training images N")
        ax.set_ylabel("test ROC AUC (mean, 95% interval)")
        ax.set_title(target)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"learning_curve_{target}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
