"""Result rows on disk: one part file per worker or array task, merged by run key.

Every process that runs cells appends to a part file of its own (``<out>/parts/*.csv``), so no
two writers share a file, on one machine or on a cluster's shared disk. A row is written in one
``write`` of a whole line after its cell has finished, and readers drop a last line without its
newline, so a cell killed mid-run (or mid-write) leaves nothing that could be read as a result.
``results.csv`` is the merge: every run key once (an ``ok`` row preferred to an ``error`` one).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RESULT_FIELDS = [
    "target", "source", "method", "train_size", "variant", "seed", "status",
    "test_auroc", "test_acc", "test_f1", "test_images", "wall_s", "error", "val_auroc", "note",
    "val_auroc_late",
]
KEY_FIELDS = ("target", "source", "method", "train_size", "variant", "seed")


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    """The run a row belongs to, as text (rows read back from CSV and rows made in memory compare equal)."""
    return tuple("" if row.get(k) is None else str(row.get(k)) for k in KEY_FIELDS)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row (and the header, for a new file) in a single write."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_FIELDS, lineterminator="\n")
    if not path.is_file() or path.stat().st_size == 0:
        writer.writeheader()
    writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in RESULT_FIELDS})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, buffer.getvalue().encode())
    finally:
        os.close(fd)


def read_rows(path: Path) -> list[dict[str, str]]:
    """Complete rows of one result file (a trailing partial line is dropped)."""
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{**{k: "" for k in RESULT_FIELDS}, **{k: v for k, v in r.items() if k is not None}} for r in rows]


def part_files(out: Path) -> list[Path]:
    return sorted((out / "parts").glob("*.csv"))


def merge(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    """One row per run key, in first-seen order; an ``ok`` row replaces an earlier failure."""
    merged: dict[tuple[str, ...], dict[str, str]] = {}
    for row in rows:
        key = row_key(row)
        if key not in merged or (merged[key]["status"] != "ok" and row["status"] == "ok"):
            merged[key] = row
    return list(merged.values())


def merged_rows(out: Path) -> list[dict[str, str]]:
    """Every result of the study in ``out``: the last merge (``results.csv``) and every part file."""
    rows = read_rows(out / "results.csv")
    for part in part_files(out):
        rows += read_rows(part)
    return merge(rows)


def write_results(out: Path, rows: list[dict[str, str]], name: str = "results.csv") -> Path:
    """Write the merge to ``results.csv`` (or another ``name``) atomically (a temporary file, then a rename)."""
    path = out / name
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in RESULT_FIELDS} for r in rows)
    os.replace(tmp, path)
    return path
