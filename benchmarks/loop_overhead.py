"""smallmed's training loop against a raw PyTorch loop: images per second on the same model and data.

    python benchmarks/loop_overhead.py                       # CPU, tf_efficientnet_lite0, 64 px, batch 16
    python benchmarks/loop_overhead.py --model densenet121 --size 224 --batch 128 --precision bf16-mixed

Both loops train the same model from the same initial weights on the same in-memory uint8 images
(the paper's augmentations off in both, so only the loops differ): the raw loop is
``preprocess -> forward -> loss -> backward -> Adam step``; smallmed's is ``SmallMedClassifier`` in a
Lightning ``Trainer`` with the paper's callbacks (``DiscriminativeLR``, ``GradualUnfreezing``), its
logging and its metrics, but no validation or checkpoints. One warm-up epoch each is not timed.
Prints images/s of each and their ratio (smallmed / raw; 1.0 means no overhead).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallmed import SmallMedClassifier, tasks  # noqa: E402
from smallmed.callbacks import DiscriminativeLR, GradualUnfreezing  # noqa: E402


class Timer(L.Callback):
    def __init__(self) -> None:
        self.start = None
        self.end = None

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self._sync(pl_module)
        self.end = time.perf_counter()

    @staticmethod
    def _sync(pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()


def raw_loop(model: SmallMedClassifier, loader: DataLoader, epochs: int, device: torch.device, bf16: bool) -> float:
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    start = None
    for epoch in range(epochs + 1):
        if epoch == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        for images, target in loader:
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = tasks.loss("binary", model(images), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(accelerator)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.images, 1, args.size, args.size), dtype=torch.uint8)
    labels = torch.arange(args.images) % 2
    loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch, shuffle=True, drop_last=True)
    base = SmallMedClassifier(args.model, pretrained=False, lr=1e-4, lr_schedule="one_cycle")

    raw_s = raw_loop(copy.deepcopy(base), loader, args.epochs, device, args.precision == "bf16-mixed")

    timer = Timer()
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=args.precision, max_epochs=args.epochs + 1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, callbacks=[DiscriminativeLR(ratio=1 / 3), GradualUnfreezing(milestones=[0.0, 0.0]), timer],
    )
    trainer.fit(copy.deepcopy(base), train_dataloaders=loader)
    smallmed_s = timer.end - timer.start

    seen = args.epochs * (args.images // args.batch) * args.batch
    raw_ips, smallmed_ips = seen / raw_s, seen / smallmed_s
    card = torch.cuda.get_device_name() if accelerator == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.model} {args.size}px batch {args.batch} {args.precision} on {card}")
    print(f"raw PyTorch loop: {raw_ips:8.1f} images/s")
    print(f"smallmed (Lightning Trainer + callbacks): {smallmed_ips:8.1f} images/s")
    print(f"ratio smallmed / raw: {smallmed_ips / raw_ips:.3f}")


if __name__ == "__main__":
    main()
