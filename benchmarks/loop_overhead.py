"""smallmed's training loop against a raw PyTorch loop: images per second on the same model and data.

    python benchmarks/loop_overhead.py                       # CPU, tf_efficientnet_lite0, 64 px, batch 16
    python benchmarks/loop_overhead.py --model densenet121 --size 224 --batch 128 --precision bf16-mixed --channels-last

Both loops train the same model from the same initial weights on the same in-memory uint8 images,
through the same data path, smallmed's default: the split is held on the device and each batch is
gathered and augmented there in one resampling (:mod:`smallmed.datamodules.device_batches`);
``--no-device-resident`` goes per image through a DataLoader instead. ``--channels-last`` puts both
models' weights in NHWC order (what ``SpeedUps`` does on the CPU and for 16-bit GPU runs). The raw loop is
``gather -> augment -> preprocess -> forward -> loss -> backward -> Adam step`` with no logging;
smallmed's is ``SmallMedClassifier`` + ``SmallImageDataModule`` in a Lightning ``Trainer`` with the
paper's callbacks (``DiscriminativeLR``, ``GradualUnfreezing``), the LR monitor, a CSV logger at
Lightning's default ``log_every_n_steps`` and its metrics, but no validation or checkpoints. One
warm-up epoch each is not timed (cuDNN autotuning, allocator growth). The two loops alternate
``--repeats`` times; the medians are compared.

Prints images/s of each and their ratio (smallmed / raw; 1.0 means no overhead).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallmed import SmallMedClassifier, tasks  # noqa: E402
from smallmed.callbacks import DiscriminativeLR, GradualUnfreezing  # noqa: E402
from smallmed.datamodules.base import SmallImageDataModule, Split  # noqa: E402
from smallmed.datamodules.device_batches import augment_batch  # noqa: E402
from smallmed.speed.channels_last import to_channels_last  # noqa: E402


class SyntheticData(SmallImageDataModule):
    """Random grey uint8 images, two balanced classes, held in memory like any smallmed data module."""

    def __init__(self, images: int, size: int, **kwargs) -> None:
        super().__init__(image_size=size, sampling="random", **kwargs)
        generator = torch.Generator().manual_seed(0)
        stored = self.resize_to
        self._splits = {
            name: Split(torch.randint(0, 256, (n, 1, stored, stored), dtype=torch.uint8, generator=generator), np.arange(n) % 2)
            for name, n in (("train", images), ("val", 16), ("test", 16))
        }

    def load_splits(self) -> dict[str, Split]:
        return dict(self._splits)

    def summary_text(self) -> str:
        return ""


class Timer(L.Callback):
    """Wall time from the start of the second epoch to the end of training, the device drained at both ends."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            _sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        _sync(pl_module.device)
        self.end = time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_loop(model: SmallMedClassifier, data: SyntheticData, epochs: int, device: torch.device, bf16: bool) -> float:
    """The fastest plain loop over the same data path; seconds for ``epochs`` after one warm-up epoch."""
    model = model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)  # torch's default kernels, as smallmed's
    batch = data.batch_size
    labels = torch.as_tensor(data.splits["train"].labels).to(device)
    resident = data.uses_device_batches()
    if resident:
        images = data.device_images("train", device)
        steps = len(labels) // batch
    else:
        loader = DataLoader(data.dataset("train"), batch_size=batch, shuffle=True, drop_last=True)
    start = 0.0
    for epoch in range(epochs + 1):
        if epoch == 1:
            _sync(device)
            start = time.perf_counter()
        if resident:
            order = torch.randperm(len(labels), device=device)
            batches = ((augment_batch(images[i], data.image_size, data.rotation, data.hflip), labels[i])
                       for i in (order[k * batch : (k + 1) * batch] for k in range(steps)))
        else:
            batches = iter(loader)
        for x, y in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = tasks.loss("binary", model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return time.perf_counter() - start


def smallmed_loop(model: SmallMedClassifier, data: SyntheticData, epochs: int, accelerator: str, precision: str, log_dir: str) -> float:
    timer = Timer()
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_epochs=epochs + 1, benchmark=accelerator == "cuda",
        logger=CSVLogger(log_dir, name="loop_overhead"), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[DiscriminativeLR(ratio=1 / 3), GradualUnfreezing(milestones=[0.0, 0.0]),
                   LearningRateMonitor(logging_interval="step"), timer],
    )
    trainer.fit(model, datamodule=data)
    return timer.end - timer.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="alternate raw / smallmed this many times; medians compared")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device-resident", action=argparse.BooleanOptionalAction, default=True,
                        help="data held on the device, batches augmented there (smallmed's default)")
    args = parser.parse_args()
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(accelerator)
    if accelerator == "cuda":
        torch.backends.cudnn.benchmark = True
    data = SyntheticData(args.images, args.size, batch_size=args.batch, device_resident=args.device_resident)
    data.setup("fit")
    torch.manual_seed(0)
    base = SmallMedClassifier(args.model, pretrained=False, lr=1e-4, lr_schedule="one_cycle")
    if args.channels_last:
        to_channels_last(base)
    raw_times, smallmed_times = [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.repeats):
            raw_times.append(raw_loop(copy.deepcopy(base), data, args.epochs, device, args.precision == "bf16-mixed"))
            smallmed_times.append(smallmed_loop(copy.deepcopy(base), data, args.epochs, accelerator, args.precision, log_dir))
    seen = args.epochs * (args.images // args.batch) * args.batch
    raw_ips, smallmed_ips = seen / statistics.median(raw_times), seen / statistics.median(smallmed_times)
    card = torch.cuda.get_device_name() if accelerator == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"{args.model} {args.size}px batch {args.batch} {args.precision} {layout} on {card}, "
          f"{seen} images timed x {args.repeats}")
    print(f"raw PyTorch loop: {raw_ips:8.1f} images/s  (runs: {', '.join(f'{seen / t:.0f}' for t in raw_times)})")
    print(f"smallmed (Lightning Trainer + callbacks): {smallmed_ips:8.1f} images/s  (runs: {', '.join(f'{seen / t:.0f}' for t in smallmed_times)})")
    print(f"ratio smallmed / raw: {smallmed_ips / raw_ips:.3f}")


if __name__ == "__main__":
    main()
