"""What each of smallmed's fast-path defaults buys on the CPU, measured on one 50-image study cell.

    python benchmarks/cpu_fast_path.py --seeds 0 1 2          # BreastMNIST, N=50, 64 px, paper recipe

Times the same study cell (``vs_fastai.py``'s) seven ways, in one process: with the settings the runs
in ``docs/results.md`` used (NCHW, torch's loop Adam, per-image torchvision augmentation, plain
eval passes, in-place activations), then turning on ``channels_last``, the fused optimizer kernel,
device-resident batched augmentation, BatchNorm folding in eval passes and copy-free activations one
after the other (that row is today's defaults), and last the opt-in small-map depthwise weight
gradient. The order alternates from seed to seed. Prints
each run's wall time and test AUC, then per row the median wall time, the mean test AUC and the
ratio to the first row. The AUC moves from row to row (other rounding and another augmentation
stream); whether it moves on average is a question for many seeds (``compare_recipes.py``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_fastai import alternate, host, print_medians, smallmed_run, task_arguments  # noqa: E402

FLAGS = {
    "channels_last": ["--model.init_args.channels_last", "false"],
    "fused": ["--model.init_args.fused_optimizer", "false"],
    "batched": ["--data.init_args.device_resident", "false"],
    "folding": ["--model.init_args.fold_batchnorm", "false"],
    "copy_free": ["--model.init_args.copy_free_activations", "false"],
    "small_map": ["--model.init_args.small_map_depthwise", "true"],
}
EARLIER = ["channels_last", "fused", "batched", "folding", "copy_free"]
ROWS = {  # the flags each row passes: the earlier settings, then one default after another
    "earlier settings (NCHW, loop Adam, per image)": EARLIER,
    "+ channels_last": EARLIER[1:],
    "+ fused Adam": EARLIER[2:],
    "+ batched augmentation": EARLIER[3:],
    "+ BatchNorm folded for eval": EARLIER[4:],
    "+ copy-free activations (the defaults)": [],
    "+ small-map depthwise gradient (opt-in)": ["small_map"],
}

def main() -> None:
    args = task_arguments(__doc__).parse_args()
    with tempfile.TemporaryDirectory() as log_dir:
        def run_one(row: str, seed: int) -> dict[str, float]:
            extra = [flag for name in ROWS[row] for flag in FLAGS[name]]
            return smallmed_run(args.data, args.weights, seed, args.train_size, log_dir, True, extra, epochs=args.epochs)

        runs = alternate(args.seeds, list(ROWS), run_one)
    print_medians(runs, next(iter(ROWS)), "ratio", f"{Path(args.data).stem}, N={args.train_size}, study cell, "
                  f"{len(args.seeds)} seeds; {host()}:")


if __name__ == "__main__":
    main()
