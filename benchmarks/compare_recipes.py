"""Compare training recipes (config files) over several subset seeds: test AUC with 95% intervals,
paired differences against the first config, and wall time per run.

    python benchmarks/compare_recipes.py configs/paper_recipe.yaml configs/finetune_constant.yaml --seeds 0 1 2 3 4

Every run is the config with ``seed_everything`` and ``data.init_args.seed`` set to the seed (the
subset and the training seed move together), run as a study cell in this one process
(:func:`smallmed.study.run_spec`).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallmed.stats import fmt_ci, mean_ci, paired_difference  # noqa: E402
from smallmed.study.runs import RunSpec, csv_logger, flags_to_overrides, run_spec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default=None, help="CSV file for one row per run")
    args, extra = parser.parse_known_args()  # unknown flags (e.g. --trainer.max_epochs 30) go to every run
    overrides = flags_to_overrides(extra)
    os.environ.setdefault("WANDB_MODE", "offline")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            for seed in args.seeds:
                metrics = run_spec(RunSpec([config], overrides={
                    "seed_everything": seed, "data.init_args.seed": seed, "trainer.logger": csv_logger(tmp), **overrides}))
                wall = metrics["wall_s"]
                rows.append({"config": config, "seed": seed, "test_auroc": metrics["test/auroc"], "wall_s": wall})
                print(f"== {config} seed {seed}: test AUC {metrics['test/auroc']:.4f} in {wall:.1f} s", flush=True)
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    by_config = {c: {r["seed"]: r["test_auroc"] for r in rows if r["config"] == c} for c in args.configs}
    reference = args.configs[0]
    print(f"\n{'config':<40} {'test AUC, mean [95% CI]':<28} {'paired diff vs ' + Path(reference).stem:<34} wall s/run")
    for config in args.configs:
        aucs = list(by_config[config].values())
        walls = [r["wall_s"] for r in rows if r["config"] == config]
        diff = "" if config == reference else fmt_ci(*paired_difference(by_config[config], by_config[reference])[:3])
        print(f"{config:<40} {fmt_ci(*mean_ci(aucs)):<28} {diff:<34} {sum(walls) / len(walls):.1f}")


if __name__ == "__main__":
    main()
