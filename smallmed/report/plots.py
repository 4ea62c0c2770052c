"""The run report's pictures, drawn with matplotlib into PNG files (no W&B needed).

Every picture is drawn once, into a PNG, and that same file is what W&B receives, so a run logged
offline, online or not at all shows the same images. Figures are built with
``matplotlib.figure.Figure`` directly (the Agg canvas, never ``pyplot``), so nothing here touches
matplotlib's global state or needs a display, and it is safe inside any training process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

DPI = 100


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: Path,
    title: str = "",
    ncols: int = 8,
    tile_inches: float = 1.5,
) -> Path:
    """Images (uint8 ``(H, W)`` grey or ``(H, W, 3)`` RGB) in a grid, a title above each; saved as PNG.

    The tiles are put into one mosaic drawn on one axes (pixels as they are, no smoothing): a grid of
    16 small axes takes matplotlib about ten times as long, which adds up over the runs of a study.

    Example:
        >>> image_grid([np.zeros((28, 28), np.uint8)], ["benign"], Path("grid.png"))  # doctest: +SKIP
    """
    tiles = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images] or [np.full((8, 8, 3), 255, np.uint8)]
    titles = list(titles) + [""] * (len(tiles) - len(titles))
    n = len(tiles)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    lines = max(1, max(t.count("\n") + 1 for t in titles))
    band = max(1, round(0.17 * lines * h))  # room for the title lines above each tile, in tile pixels
    gap = max(1, round(0.06 * w))
    cell_h, cell_w = h + band, w + gap
    mosaic = np.full((nrows * cell_h, ncols * cell_w - gap, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, ncols)
        top, left = r * cell_h + band, c * cell_w
        mosaic[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    head = 0.35 if title else 0.0
    fig_w = tile_inches * ncols * cell_w / w
    fig_h = tile_inches * nrows * cell_h / w + head
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0, 0, 1, 1 - head / fig_h))
    ax.imshow(mosaic, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for i, text in enumerate(titles[:n]):
        r, c = divmod(i, ncols)
        ax.text(c * cell_w + w / 2, r * cell_h + band * 0.92, text, ha="center", va="bottom", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig_h)
    return _save(fig, path)


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: Path, title: str = "ROC curve") -> Path:
    """ROC curves ``{name: (fpr, tpr, auc)}`` on one plot with the chance diagonal; saved as PNG."""
    fig = Figure(figsize=(4.8, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def confusion_figure(matrices: Mapping[str, np.ndarray], labels: Sequence[str], path: Path, title: str = "") -> Path:
    """Confusion matrices ``{panel title: (K, K) counts}`` (rows: true, columns: predicted); saved as PNG.

    One panel for binary / multiclass, one 2x2 panel per label for multilabel.
    """
    n = len(matrices)
    ncols = min(n, 4)
    nrows = -(-n // ncols)
    k = len(labels)
    size = max(2.6, 0.55 * k + 1.6)
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    if title:
        fig.suptitle(title, fontsize=10)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
    for ax in axes[n:]:
        ax.set_axis_off()
    for ax, (name, matrix) in zip(axes, matrices.items()):
        matrix = np.asarray(matrix)
        ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(1, int(matrix.max())))
        ax.set_xticks(range(k), labels, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center", fontsize=7)
        ax.set_yticks(range(k), labels, fontsize=7)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(name, fontsize=9)
        half = matrix.max() / 2
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(int(value)), ha="center", va="center", fontsize=8, color="white" if value > half else "black")
    return _save(fig, path)


def schedule_figure(
    steps: Sequence[int],
    lrs: Mapping[str, Sequence[float]],
    frozen: Mapping[str, Sequence[bool]],
    path: Path,
) -> Path:
    """Per-group learning rates over optimizer steps (top) and which groups are frozen (bottom); PNG.

    The bottom panel draws one bar per layer group, filled where the group trains: the paper's
    schedule (head first, then the late and the early body) reads as a staircase.
    """
    rows = 2 if frozen else 1
    fig = Figure(figsize=(6.4, 2.6 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, 1, sharex=True))
    ax = axes[0]
    for name, values in lrs.items():
        ax.plot(steps, values, linewidth=1.3, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate per layer group", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    if frozen:
        ax = axes[1]
        names = list(frozen)
        edges = [*steps, steps[-1] + 1] if len(steps) else []
        for i, name in enumerate(names):
            for start, stop, is_frozen in _runs(frozen[name]):
                ax.broken_barh(
                    [(edges[start], edges[stop] - edges[start])], (i - 0.35, 0.7),
                    color="lightgrey" if is_frozen else "tab:green", linewidth=0,
                )
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(-0.6, len(names) - 0.4)
        ax.set_title("trainable (green) / frozen (grey) layer groups", fontsize=10)
    axes[-1].set_xlabel("optimizer step")
    return _save(fig, path)


def _runs(values: Sequence[bool]) -> list[tuple[int, int, bool]]:
    """``[(start, stop, value)]`` of the runs of equal values, ``stop`` exclusive."""
    runs: list[tuple[int, int, bool]] = []
    for i, value in enumerate(values):
        if runs and runs[-1][2] == bool(value):
            runs[-1] = (runs[-1][0], i + 1, bool(value))
        else:
            runs.append((i, i + 1, bool(value)))
    return runs
