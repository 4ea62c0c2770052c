"""What each speed-up buys on the CPU, measured on one 50-image study cell.

    python benchmarks/cpu_fast_path.py --seeds 0 1 2          # BreastMNIST, N=50, 64 px, paper recipe

Times the same study cell (``vs_fastai.py``'s) several ways, in one process: everything off
(``--speed.mode off``, per-image torchvision augmentation), then device-resident batched
augmentation (the data module's default), channels-last weights, BatchNorm folded into eval passes
(``--speed.mode auto``: today's defaults), and last torch's fused Adam kernel, which is measured here
but not a default. The order alternates from seed to seed. Prints each run's wall time and test AUC,
then per row the median wall time, the mean test AUC and the ratio to the first row. The AUC moves
from row to row (other rounding, another augmentation stream); whether it moves on average is a
question for many seeds (``compare_recipes.py``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vs_fastai import alternate, host, print_medians, smallmed_run, task_arguments  # noqa: E402

from smallmed.speed.channels_last import to_channels_last  # noqa: E402


class ChannelsLastOnly(Callback):
    """The channels-last half of ``SpeedUps`` alone, to time it apart from folding."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        to_channels_last(pl_module)


class FusedAdam(Callback):
    """torch's fused Adam kernel (one kernel for all parameters) on the optimizer the model built."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group.update(fused=True, foreach=False)


def extra_callback(name: str) -> dict[str, list[dict[str, str]]]:
    return {"trainer.callbacks+": [{"class_path": f"cpu_fast_path.{name}"}]}


OFF = {"speed.mode": "off"}
ROWS = {  # the config overrides of each row
    "speed off, per-image augmentation": {**OFF, "data.init_args.device_resident": False},
    "+ device-resident batched augmentation": OFF,
    "+ channels_last": {**OFF, **extra_callback("ChannelsLastOnly")},
    "+ BatchNorm folded for eval (the defaults)": {},
    "+ fused Adam (not a default)": extra_callback("FusedAdam"),
}


def main() -> None:
    args = task_arguments(__doc__).parse_args()
    with tempfile.TemporaryDirectory() as log_dir:
        def run_one(row: str, seed: int) -> dict[str, float]:
            return smallmed_run(args.data, args.weights, seed, args.train_size, log_dir, True, ROWS[row], epochs=args.epochs)

        runs = alternate(args.seeds, list(ROWS), run_one)
    print_medians(runs, next(iter(ROWS)), "ratio", f"{Path(args.data).stem}, N={args.train_size}, study cell, "
                  f"{len(args.seeds)} seeds; {host()}:")


if __name__ == "__main__":
    main()
