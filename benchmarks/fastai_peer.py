"""The peer run: fastai 2.8's ``vision_learner(...).fine_tune(epochs)`` on exactly smallmed's subsets.

Same training subset (smallmed's seeded, balanced, nested sampling), same backbone and ImageNet
weights (``tf_efficientnet_lite0`` from the offline conversion), same image size, batch size and
epochs, val split for fastai's validation, full official test split for the reported ROC AUC.
fastai keeps its own recipe: its head, its default augmentations (with rotation limited to +-10
degrees, as the paper's), ``fine_tune``'s frozen epoch and LR schedule, and the final model.

    pip install 'smallmed[peer]'   # fastai 2.8
    python benchmarks/fastai_peer.py --data ../shared/data/breastmnist_28.npz --seeds 0 1 2 3 4

Prints one line per seed (test AUC, wall time) and the mean with its 95% interval; ``--out`` writes
a CSV with the same columns as the study runner's.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smallmed.datamodules import NpzDataModule  # noqa: E402
from smallmed.stats import fmt_ci, mean_ci  # noqa: E402


def augmentations(kind: str, image_size: int) -> list:
    """``fastai``: fastai's defaults (zoom, warp, lighting), rotation limited to +-10 degrees as the paper's;
    ``paper``: only the paper's flips and +-10 degree rotations, as smallmed's recipes use."""
    from fastai.vision.all import aug_transforms

    if kind == "fastai":
        return aug_transforms(size=image_size, max_rotate=10.0)
    if kind == "paper":
        return aug_transforms(size=image_size, max_rotate=10.0, max_zoom=1.0, max_lighting=0.0, max_warp=0.0)
    raise ValueError(f"unknown augment {kind!r}; choose fastai or paper")


def fastai_fine_tune(
    data: str, seed: int, train_size: int, weights: str | None, epochs: int = 20, image_size: int = 64,
    batch_size: int = 16, base_lr: float = 2e-3, arch: str = "tf_efficientnet_lite0", augment: str = "fastai",
) -> dict[str, float]:
    """One fastai ``fine_tune`` run on smallmed's subset for ``seed``; returns test AUC and wall time."""
    from fastai.vision.all import (
        CategoryBlock, DataBlock, ImageBlock, IndexSplitter, Normalize, PILImage,
        set_seed, vision_learner,
    )
    from sklearn.metrics import roc_auc_score

    from smallmed.weights import read_state_dict

    set_seed(seed, reproducible=True)
    dm = NpzDataModule(data, train_size=train_size, seed=seed, image_size=image_size, resize_to=image_size)
    dm.setup()
    train, val, test = (dm.splits[s] for s in ("train", "val", "test"))

    def rgb(images: torch.Tensor) -> list[np.ndarray]:
        return [np.repeat(im.permute(1, 2, 0).numpy(), 3 // im.shape[0], axis=2) for im in images]

    images = rgb(train.images) + rgb(val.images)
    n_fit = len(images)
    images += rgb(test.images)  # test items are indices too, so they go through the same get_x
    labels = [int(y) for y in np.concatenate([train.labels, val.labels])]
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock),
        get_x=lambda i: PILImage.create(images[i]),
        get_y=lambda i: labels[i],
        splitter=IndexSplitter(list(range(len(train.labels), n_fit))),
        batch_tfms=[*augmentations(augment, image_size), Normalize.from_stats([0.5] * 3, [0.5] * 3)],
    )
    start = time.perf_counter()
    dls = block.dataloaders(list(range(n_fit)), bs=batch_size, num_workers=0)
    learn = vision_learner(dls, arch, pretrained=False)
    if weights:
        body = learn.model[0].model  # fastai's TimmBody wraps the timm model without its head
        state = {k: v for k, v in read_state_dict(weights).items() if not k.startswith("classifier.")}
        missing, unexpected = body.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("classifier")]:
            raise RuntimeError(f"weights do not fit fastai's body: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs, base_lr=base_lr)
        test_dl = dls.test_dl(list(range(n_fit, len(images))), with_labels=False)
        probs, _ = learn.get_preds(dl=test_dl)
    wall = time.perf_counter() - start
    auc = roc_auc_score(test.labels, probs[:, 1].numpy())
    return {"test_auroc": float(auc), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/breastmnist_28.npz")
    parser.add_argument("--weights", default="weights/tf_efficientnet_lite0.safetensors")
    parser.add_argument("--train-size", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--augment", default="fastai", choices=["fastai", "paper"],
                        help="fastai's default augmentations, or only the paper's flips and rotations")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for seed in args.seeds:
        result = fastai_fine_tune(args.data, seed, args.train_size, args.weights, args.epochs, args.image_size, augment=args.augment)
        rows.append({"target": Path(args.data).stem, "method": "fastai_fine_tune", "source": "imagenet",
                     "train_size": args.train_size, "seed": seed, **result})
        print(f"== fastai fine_tune({args.epochs}) seed {seed}: test AUC {result['test_auroc']:.4f} in {result['wall_s']:.1f} s", flush=True)
    aucs = [r["test_auroc"] for r in rows]
    print(f"fastai fine_tune({args.epochs}), N={args.train_size}: test AUC {fmt_ci(*mean_ci(aucs))}, "
          f"{sum(r['wall_s'] for r in rows) / len(rows):.1f} s per run")
    if args.out:
        with open(args.out, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
