"""The report's files leaving the process: CSV tables written to disk, and every file sent to W&B.

Each picture and table is a file first (PNGs drawn by :mod:`smallmed.report.plots`, CSVs written
here), so a run without W&B keeps the same report; these functions then log that same file to
every ``WandbLogger`` of the trainer at its current step. W&B media and tables are sent from here only.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger


def wandb_loggers(trainer: L.Trainer) -> list[WandbLogger]:
    """Every ``WandbLogger`` of the trainer (often none: then the files are the whole report)."""
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def log_image(trainer: L.Trainer, key: str, path: Path, caption: str) -> Path:
    """Log the PNG at ``path`` as ``key`` to every ``WandbLogger``; returns ``path``."""
    for logger in wandb_loggers(trainer):
        logger.log_image(key, [str(path)], step=trainer.global_step, caption=[caption])
    return path


def log_table(trainer: L.Trainer, key: str, path: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    """Write ``rows`` to the CSV ``path`` and log them as the table ``key`` to every ``WandbLogger``.

    Returns ``path``.
    """
    write_csv(path, columns, rows)
    for logger in wandb_loggers(trainer):
        logger.log_table(key, columns=columns, data=rows, step=trainer.global_step)
    return path


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    """A CSV file with a header row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    return path
