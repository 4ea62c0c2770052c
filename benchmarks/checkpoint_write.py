"""Writing a run's best checkpoints: smallmed's DirectFileCheckpointIO against Lightning's TorchCheckpointIO.

    python benchmarks/checkpoint_write.py                      # lite0 + Adam state (41 MB), 9 saves, 5 rounds

A 50-image ``train.py`` run saves its best checkpoint each time the validation AUC improves (9 times
in 20 epochs for BreastMNIST seed 0), each time a new file, the previous best removed, as
``ModelCheckpoint`` does. This script replays that with both CheckpointIO plugins on the same
checkpoint (a model's weights and its Adam state after one step), alternating rounds, into a
fresh temporary folder (``--dir`` picks its parent), and prints each round's time, the medians and
the ratio smallmed / Lightning (below 1: smallmed's is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from vs_fastai import host  # noqa: E402

from smallmed.checkpoint_io import DirectFileCheckpointIO  # noqa: E402


def model_checkpoint(model_name: str) -> dict:
    """Weights and Adam state of ``model_name`` after one step: the bulk of a Lightning checkpoint."""
    model = timm.create_model(model_name, pretrained=False, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    optimizer.step()
    return {"epoch": 0, "global_step": 1, "state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}


def save_round(io, checkpoint: dict, folder: Path, saves: int) -> float:
    """``saves`` best checkpoints the way ModelCheckpoint writes them (a new file, then the old one
    removed); the wall time in seconds."""
    start = time.perf_counter()
    previous = None
    for i in range(saves):
        path = folder / f"best-epoch{i:02d}.ckpt"
        io.save_checkpoint(checkpoint, path)
        if previous is not None:
            io.remove_checkpoint(previous)
        previous = path
    elapsed = time.perf_counter() - start
    io.remove_checkpoint(previous)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--saves", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="parent of the temporary folder (default: the system's)")
    args = parser.parse_args()
    checkpoint = model_checkpoint(args.model)
    size = sum(t.numel() * t.element_size() for t in _tensors(checkpoint)) / 2**20
    print(f"{host()}\n{args.model}: {size:.1f} MB of tensors per checkpoint, {args.saves} saves per round")
    plugins = {"lightning": TorchCheckpointIO(), "smallmed": DirectFileCheckpointIO()}
    times: dict[str, list[float]] = {name: [] for name in plugins}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for r in range(args.rounds):
            for name in (list(plugins) if r % 2 == 0 else list(reversed(plugins))):
                times[name].append(save_round(plugins[name], checkpoint, Path(folder), args.saves))
                print(f"== round {r} {name}: {times[name][-1] * 1000:.0f} ms", flush=True)
        print(f"same contents: {'yes' if same_contents(plugins, checkpoint, Path(folder)) else 'NO'}")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name}: median {value * 1000:.0f} ms per round ({value / args.saves * 1000:.1f} ms per save)")
    print(f"smallmed / lightning: {medians['smallmed'] / medians['lightning']:.2f}")


def same_contents(plugins: dict, checkpoint: dict, folder: Path) -> bool:
    """Whether every plugin's file loads back to the same tensors (what the faster writer must keep)."""
    loaded = []
    for name, io in plugins.items():
        path = folder / f"{name}.ckpt"
        io.save_checkpoint(checkpoint, path)
        loaded.append(list(_tensors(io.load_checkpoint(path))))
        io.remove_checkpoint(path)
    first = loaded[0]
    return all(len(other) == len(first) and all(torch.equal(a, b) for a, b in zip(first, other)) for other in loaded[1:])


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


if __name__ == "__main__":
    main()
