"""The source val AUC per epoch of a study's source stages, from their CSV logs, as one CSV.

A source stage's checkpoint is cached, but the curve that chose it lives only in the study's log folder;
this writes it next to the study's results (``docs/results/source_stages_val.csv``) so that what a stage
reached on its source is a committed figure.

    python benchmarks/source_stage_curves.py configs/study_source_stages.yaml docs/results/source_stages_val.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from smallmed.run_folder import newest_metrics_log  # noqa: E402
from smallmed.study.config import load_study_config  # noqa: E402

FIELDS = ["stage", "config", "epochs", "epoch", "val_auroc"]


def stage_curves(study_config: Path) -> list[dict[str, str]]:
    """One row per (stage, epoch) of every source stage of ``study_config`` with a log; the latest log wins."""
    config = load_study_config(study_config)
    rows = []
    for name, stage in config.source_stages.items():
        log = newest_metrics_log(Path(config.out_dir) / "logs" / "sources" / name)
        if log is None:
            print(f"{name}: no log under {config.out_dir}/logs/sources/{name}; skipped", file=sys.stderr)
            continue
        with log.open(newline="") as f:
            epochs = [m for m in csv.DictReader(f) if m.get("val/auroc")]
        recipe = Path(stage.configs[-1]).stem
        max_epochs = stage.all_overrides.get("trainer.max_epochs", "")
        rows += [{"stage": name, "config": recipe, "epochs": str(max_epochs), "epoch": m["epoch"],
                  "val_auroc": f"{float(m['val/auroc']):.4f}"} for m in epochs]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_config", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    rows = stage_curves(args.study_config)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} epochs of {len({r['stage'] for r in rows})} stage(s) written to {args.out}")


if __name__ == "__main__":
    main()
