"""What each speed-up buys on the CPU, measured on one 50-image study cell.

    python benchmarks/cpu_fast_path.py --seeds 0 1 2          # BreastMNIST, N=50, 64 px, paper recipe

Times the same study cell (``vs_fastai.py``'s) several ways, in one process: everything off
(``--speed.mode off``, per-image torchvision augmentation), then device-resident batched
augmentation (the data module's default), channels-last weights, torch's fused Adam kernel, and
BatchNorm folded into eval passes (``--speed.mode auto``: today's defaults). The order alternates
from seed to seed. Prints each run's wall time and test AUC, then per row the median wall time, the mean test AUC and the ratio to the first row. The AUC moves
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
from smallmed.speed.fused_optimizer import use_fused_kernel  # noqa: E402


class ChannelsLastOnly(Callback):
    """The channels-last half of ``SpeedUps`` alone, to time it apart from folding."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        to_channels_last(pl_module)


class FusedAdamOnly(Callback):
    """The fused-kernel part of ``SpeedUps`` alone, to time it apart from folding."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            use_fused_kernel(optimizer)


def extra_callbacks(*names: str) -> dict[str, list[dict[str, str]]]:
    return {"trainer.callbacks+": [{"class_path": f"cpu_fast_path.{name}"} for name in names]}


OFF = {"speed.mode": "off"}
ROWS = {  # the config overrides of each row
    "speed off, per-image augmentation": {**OFF, "data.init_args.device_resident": False},
    "+ device-resident batched augmentation": OFF,
    "+ channels_last": {**OFF, **extra_callbacks("ChannelsLastOnly")},
    "+ fused Adam": {**OFF, **extra_callbacks("ChannelsLastOnly", "FusedAdamOnly")},
    "+ BatchNorm folded for eval (the defaults)": {},
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
