"""Wall time of smallmed against fastai's ``fine_tune`` on the same 50-image task, in one process.

    pip install 'smallmed[peer]'
    python benchmarks/vs_fastai.py --seeds 0 1 2          # BreastMNIST, N=50, 64 px, 20 epochs

For each seed, in turn (the order alternates, so neither side always runs on a warmer process):
fastai 2.8 ``vision_learner(...).fine_tune(20)`` (see ``fastai_peer.py``: same subset, backbone,
ImageNet weights, image size, batch and epochs), smallmed's paper recipe as a ``train.py`` run
(checkpoints and report pictures written), and the same run as a study cell (best weights kept in
memory, no pictures). smallmed's time is the whole run: config parsing, data set-up, model
creation, training, validation and the test; fastai's starts at its DataLoaders. Prints each run's
wall time and test AUC, the medians, the ratios smallmed / fastai (0.5 = twice as fast) of the
medians and of each seed's pair of runs, and the machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fastai_peer import fastai_fine_tune  # noqa: E402

from smallmed.study.runs import RunSpec, csv_logger, run_spec  # noqa: E402


def smallmed_run(
    data: str, weights: str, seed: int, train_size: int, log_dir: str, study_cell: bool, overrides: Mapping[str, Any] | None = None,
    epochs: int = 20,
) -> dict[str, float]:
    """The paper recipe on ``data`` as a ``train.py`` run or a study cell; its test AUC and wall time."""
    spec = RunSpec([str(REPO / "configs/paper_recipe.yaml")], data, {
        "data.init_args.train_size": train_size, "data.init_args.seed": seed, "seed_everything": seed,
        "model.init_args.pretrained": weights, "trainer.logger": csv_logger(log_dir), "trainer.max_epochs": epochs,
        **(overrides or {}),
    })
    metrics = run_spec(spec, lean=study_cell)
    return {"test_auroc": metrics["test/auroc"], "wall_s": metrics["wall_s"]}


def task_arguments(doc: str) -> argparse.ArgumentParser:
    """The 50-image task's options: data, weights, N and seeds (BreastMNIST, ImageNet lite0, 50, 0-2)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/breastmnist_28.npz")
    parser.add_argument("--weights", default="weights/tf_efficientnet_lite0.safetensors")
    parser.add_argument("--train-size", type=int, default=50)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="both sides' epochs (20: the paper recipe's; fewer for a smoke run)")
    return parser


def alternate(
    seeds: Sequence[int], names: Sequence[str], run_one: Callable[[str, int], dict[str, float]],
) -> dict[str, list[dict[str, float]]]:
    """Run each named variant once per seed, the order reversed from one seed to the next, so that no
    variant always runs on a warmer (or more tired) process; prints each run as it ends."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for i, seed in enumerate(seeds):
        for name in (list(names) if i % 2 == 0 else list(reversed(names))):
            result = run_one(name, seed)
            runs[name].append(result)
            print(f"== seed {seed} {name}: {result['wall_s']:.1f} s, test AUC {result['test_auroc']:.4f}", flush=True)
    return runs


def print_medians(runs: dict[str, list[dict[str, float]]], baseline: str, ratio_label: str, header: str) -> None:
    """Per variant: the median wall time, the mean test AUC, the ratio of medians to ``baseline``, and
    the per-seed ratios (each run against the baseline's run of the same seed, which ran next to it).

    The per-seed ratios are the steadier figure on a noisy host: a pair runs within seconds, so a host
    that slows down for a minute moves both sides of it, while it can move one side's median alone.
    """
    print(f"\n{header}")
    base = statistics.median(r["wall_s"] for r in runs[baseline])
    width = max(len(name) for name in runs)
    for name, results in runs.items():
        wall = statistics.median(r["wall_s"] for r in results)
        auc = statistics.mean(r["test_auroc"] for r in results)
        line = f"  {name:<{width}} median {wall:6.1f} s   mean test AUC {auc:.3f}   {ratio_label} {wall / base:.2f}"
        if name != baseline:
            paired = sorted(r["wall_s"] / b["wall_s"] for r, b in zip(results, runs[baseline]))
            line += f"   per seed {statistics.median(paired):.2f} ({paired[0]:.2f} to {paired[-1]:.2f})"
        print(line)


def host() -> str:
    """The GPU if there is one, the CPU's model name, its core count and torch's thread count: ratios
    differ between machines, so every printed table names the one it was measured on."""
    name = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        name = models[0] if models else name
    gpu = f"{torch.cuda.get_device_name()}, host CPU " if torch.cuda.is_available() else ""
    return f"{gpu}{name}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} threads"


def main() -> None:
    args = task_arguments(__doc__).parse_args()
    names = [f"fastai fine_tune({args.epochs})", "smallmed train.py run", "smallmed study cell"]
    with tempfile.TemporaryDirectory() as log_dir:
        def run_one(name: str, seed: int) -> dict[str, float]:
            if name.startswith("fastai"):
                return fastai_fine_tune(args.data, seed, args.train_size, args.weights, epochs=args.epochs)
            return smallmed_run(args.data, args.weights, seed, args.train_size, log_dir, name.endswith("cell"),
                                epochs=args.epochs)

        runs = alternate(args.seeds, names, run_one)
    print_medians(runs, names[0], "ratio to fastai",
                  f"{Path(args.data).stem}, N={args.train_size}, {len(args.seeds)} seeds; {host()}:")


if __name__ == "__main__":
    main()
