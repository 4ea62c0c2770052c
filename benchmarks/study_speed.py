"""How fast the study runner gets through a grid: cells per minute with 1 and with several workers.

    python benchmarks/study_speed.py --workers 1 8 --seeds 4        # on a GPU
    python benchmarks/study_speed.py --workers 1 2 --seeds 1 --sizes 50 --methods paper   # CPU smoke

Runs the same sample of the study grid (target x source x method x N x seed, 30 epochs by default,
the paper's 50-image fine-tune among them) once per worker count, each into a fresh folder, through
:func:`smallmed.study.run_study` exactly as ``train.py study`` runs it, and prints for each:
wall time, cells per minute, the wall time of a warm 50-image cell and of each worker's first
(cold) cell, and the time the issue's 720-run grid (20 seeds x 4 sources x 3 sizes x 3 methods)
would take at that rate. It also prints the mean test AUC per method and N of the runs it timed,
so a speed-up that costs quality shows. Sources here are ImageNet and none: a source changes the
starting weights, not the cost of a cell.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from vs_fastai import host  # noqa: E402

from smallmed.study import StudyConfig, run_study  # noqa: E402

METHODS = {
    "paper": "configs/paper_recipe.yaml",
    "finetune_constant": "configs/finetune_constant.yaml",
    "feature_extractor": "configs/feature_extractor.yaml",
}


def study_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The cells' settings: epochs, precision, the loss read back every 50 steps, and the speed-ups
    (``--speed-mode``: ``auto``, as ``train.py study`` runs, or ``off``)."""
    return {"trainer.max_epochs": args.epochs, "trainer.log_every_n_steps": 50, "trainer.enable_model_summary": False,
            "trainer.precision": args.precision, "speed.mode": args.speed_mode}


def run(args: argparse.Namespace, workers: int, out_dir: Path) -> dict:
    config = StudyConfig(
        targets={"target": args.data},
        sizes=args.sizes,
        methods={m: str(REPO / METHODS[m]) for m in args.methods},
        sources={"imagenet": args.weights, "none": False},
        seeds=args.seeds,
        overrides=study_overrides(args),
        out_dir=str(out_dir),
        workers=workers,
    )
    start = time.perf_counter()
    run_study(config)
    wall = time.perf_counter() - start
    with (out_dir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {"workers": workers, "wall": wall, "rows": rows}


def report(result: dict, grid: int) -> None:
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    failed = len(result["rows"]) - len(rows)
    per_min = 60 * len(rows) / result["wall"]
    n50 = [float(r["wall_s"]) for r in rows if r["train_size"] == "50"]
    print(f"\n== {result['workers']} worker(s): {len(rows)} cells ok ({failed} failed) in {result['wall']:.1f} s, "
          f"{per_min:.1f} cells/min; the {grid}-run grid would take {grid / per_min:.1f} min")
    if n50:
        print(f"   50-image cell, seconds inside a worker: median {statistics.median(n50):.2f}, "
              f"min {min(n50):.2f}, max {max(n50):.2f}")
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["source"], int(r["train_size"]))].append(float(r["test_auroc"]))
    for (method, source, size), aucs in sorted(by.items()):
        print(f"   {method:<18} {source:<9} N={size:<4} test AUC {statistics.mean(aucs):.3f} ({len(aucs)} runs)")


def arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/kermany_target_B_bacterial_vs_viral_64.npz")
    parser.add_argument("--weights", default="weights/tf_efficientnet_lite0.safetensors")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--speed-mode", default="auto", choices=["auto", "off"], help="the cells' --speed.mode")
    parser.add_argument("--grid", type=int, default=720, help="grid size to project the wall time for")
    parser.add_argument("--keep", default=None, help="folder to keep the runs' results in (default: a temporary one)")
    return parser


def main() -> None:
    args = arguments().parse_args()
    cells = args.seeds * len(args.sizes) * len(args.methods) * 2
    print(f"study speed on {host()}: {cells} cells per worker count ({args.epochs} epochs, sizes {args.sizes}, "
          f"methods {args.methods}, {args.precision}, speed {args.speed_mode})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        results = [run(args, w, root / f"workers{w}") for w in args.workers]
    for result in results:
        report(result, args.grid)


if __name__ == "__main__":
    main()
