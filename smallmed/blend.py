"""``train.py blend``: average the prediction CSVs of runs of different recipes into one.

    python train.py blend --out blend.csv fe/predictions.csv paper/predictions.csv

In the study (``blends`` in :mod:`smallmed.study.derived`; docs/results.md) the mean of a frozen
feature extractor's and the paper's fine-tune's probabilities beat both on BreastMNIST and Kermany B
at N=50, 100 and 200, on either side of the N where the better of the two changes; this is the same
mean for images without labels. Each input is
a ``train.py predict`` CSV (``file``, ``predicted``, one ``p_<class>`` column per class); the output
has the same columns, the probabilities averaged with equal weight and ``predicted`` made again from
them (the most probable class; for multi-label CSVs, every label at 0.5 or more, ``+``-joined). The
inputs must list the same images and classes, else nothing is written.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from smallmed.labels import predicted_label

PROBABILITY_PREFIX = "p_"


def read_predictions(path: Path) -> tuple[list[str], dict[str, tuple[str, list[float]]]]:
    """The class names and ``{file: (predicted, probabilities)}`` of one prediction CSV."""
    if not path.is_file():
        raise FileNotFoundError(f"prediction CSV not found: {path}")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[:2] != ["file", "predicted"] or len(header) < 3 or not all(
                h.startswith(PROBABILITY_PREFIX) for h in header[2:]):
            raise ValueError(f"{path}: not a train.py predict CSV (header {header}; expected file, predicted, p_<class>...)")
        classes = [h[len(PROBABILITY_PREFIX):] for h in header[2:]]
        rows: dict[str, tuple[str, list[float]]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                probs = [float(v) for v in row[2:]]
            except ValueError:
                probs = []
            if len(row) != len(header) or not all(math.isfinite(p) and 0 <= p <= 1 for p in probs):
                raise ValueError(f"{path}, line {line}: expected {len(header)} fields with probabilities in [0, 1], got {row}")
            if row[0] in rows:
                raise ValueError(f"{path}, line {line}: {row[0]!r} is listed twice")
            rows[row[0]] = (row[1], probs)
    if not rows:
        raise ValueError(f"{path}: no predictions in the file")
    return classes, rows


def is_multilabel(classes: list[str], rows: dict[str, tuple[str, list[float]]]) -> bool:
    """Whether a prediction CSV came from a multi-label model: a single-label one names the most probable
    class on every row, and its probabilities sum to 1."""
    for predicted, probs in rows.values():
        if abs(sum(probs) - 1) > 1e-3 or predicted != predicted_label(classes, probs, multilabel=False):
            return True
    return False


def blend_predictions(paths: list[Path], out: Path) -> Path:
    """Write the mean of the prediction CSVs ``paths`` to ``out`` (in the first file's order)."""
    if len(paths) < 2:
        raise ValueError(f"blend needs two or more prediction CSVs, got {len(paths)}")
    read = [(path, *read_predictions(path)) for path in paths]
    first, classes, rows = read[0]
    multilabel = is_multilabel(classes, rows)
    for path, other_classes, other_rows in read[1:]:
        if other_classes != classes:
            raise ValueError(f"{path} has the classes {other_classes}, {first} has {classes}: they cannot be averaged")
        if is_multilabel(other_classes, other_rows) != multilabel:
            raise ValueError(f"{path} and {first}: one is a multi-label model's CSV, the other not")
        only_here, only_first = sorted(set(other_rows) - set(rows)), sorted(set(rows) - set(other_rows))
        if only_here or only_first:
            raise ValueError(f"{path} and {first} do not list the same images: "
                             f"{len(only_first)} only in {first} (e.g. {only_first[:3]}), "
                             f"{len(only_here)} only in {path} (e.g. {only_here[:3]})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "predicted", *(PROBABILITY_PREFIX + c for c in classes)])
        for name in rows:
            mean = [sum(values) / len(read) for values in zip(*(r[name][1] for _, _, r in read))]
            writer.writerow([name, predicted_label(classes, mean, multilabel), *(f"{p:.6f}" for p in mean)])
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="train.py blend", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="train.py predict CSVs of the same images")
    parser.add_argument("--out", type=Path, required=True, help="the blended CSV to write")
    args = parser.parse_args(argv)
    try:
        out = blend_predictions(args.predictions, args.out)
    except (OSError, ValueError) as err:
        sys.exit(f"train.py blend: {err}")
    print(f"wrote the mean of {len(args.predictions)} prediction CSVs to {out}")
