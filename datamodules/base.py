"""In-memory data module for small image sets: decode once, sample a seeded subset, augment per epoch.

Subclasses only say how to read the three splits (:meth:`SmallImageDataModule.load_splits`); the
subset sampling, resizing, augmentation, class bookkeeping and loaders live here, so an npz file and
a folder of images train exactly the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import RunningStage
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from smallmed.datamodules.device_batches import IndexDataset, augment_batch, centre_crop
from smallmed.datamodules.intensity import GreyTrivialAugment, grey_trivial_augment
from smallmed.datamodules.sampling import Sampling, class_counts, fold_out, hold_out, sample_subset
from smallmed.datamodules.transforms import eval_transform, resize_uint8, train_transform

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split held in memory: ``images`` uint8 ``(N, C, H, W)``, ``labels`` int ``(N,)`` or multi-hot ``(N, K)``."""

    images: torch.Tensor
    labels: np.ndarray


class TensorImageDataset(Dataset):
    """uint8 images held in memory, with a per-sample transform."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, transform=None) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


class SmallImageDataModule(L.LightningDataModule):
    """Base for smallmed's data modules (see the module docstring).

    Args:
        train_size: training images to draw from the train split (``None``: all).
        sampling: ``balanced`` (N/C per class, the paper's choice), ``stratified`` or ``random``.
        class_counts: explicit ``{class index: count}`` instead of ``train_size``.
        seed: subset seed; subsets of one seed are nested across ``train_size``.
        image_size: network input size (pixels, square).
        resize_to: size images are stored at before the random / centre crop (default
            ``image_size * 17 / 16``, about the paper's 250 -> 234 ratio).
        rotation: random rotation range in degrees (0 turns it off).
        hflip: random horizontal flips.
        augment: ``paper`` (rotation, flip, crop) or ``grey_trivial``: the same, then one random
            intensity operation per image that keeps anatomy (:mod:`smallmed.datamodules.intensity`).
        augment_strength: the largest strength of ``grey_trivial``'s operations.
        inner_val: hold out this fraction of each class of the training subset as the validation
            split, in place of the data's own val split: model selection (and a study's ``auto``
            choice) then sees the N training images only. The test split is unchanged.
        inner_folds, inner_fold: instead of ``inner_val``, hold out fold ``inner_fold`` of
            ``inner_folds`` stratified folds of the training subset: the folds' runs together
            validate on every one of the N images once (a study's ``auto: {inner_folds: k}``).
        batch_size: training batch size (the paper uses 16).
        eval_batch_size: batch size for val / test / predict.
        num_workers: loader workers of the per-image path (``device_resident=False``); 0 is fastest
            for in-memory uint8 tensors at small sizes.
        num_classes: expected classes; derived from the labels when ``None``, checked when given.
        class_names: names of the classes, in label order.
        task: ``binary``, ``multiclass`` or ``multilabel``; derived from the labels when ``None``.
        device_resident: copy each split to the training device once, let the loaders yield only
            indices and augment whole batches there (:mod:`smallmed.datamodules.device_batches`).
            ``None`` (default): on whenever a Trainer drives the loaders, on the CPU too, where one
            batched affine resample per step replaced 16 per-image torchvision transforms and saved
            about 0.6 s of a 50-image run; off when the loaders are used without a Trainer, so
            they yield images there. ``False``: the per-image torchvision path in loader workers
            (the CPU runs in ``docs/results.md`` used it).
    """

    def __init__(
        self,
        train_size: int | None = None,
        sampling: Sampling = "balanced",
        class_counts: Mapping[int, int] | None = None,
        seed: int = 0,
        image_size: int = 64,
        resize_to: int | None = None,
        rotation: float = 10.0,
        hflip: bool = True,
        augment: Literal["paper", "grey_trivial"] = "paper",
        augment_strength: float = 1.0,
        inner_val: float | None = None,
        inner_folds: int | None = None,
        inner_fold: int = 0,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        task: Literal["binary", "multiclass", "multilabel"] | None = None,
        device_resident: bool | None = None,
    ) -> None:
        super().__init__()
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        self.train_size = train_size
        self.sampling = sampling
        self.per_class = dict(class_counts) if class_counts is not None else None
        self.seed = seed
        self.image_size = image_size
        self.resize_to = resize_to or max(image_size, round(image_size * 17 / 16))
        if self.resize_to < image_size:
            raise ValueError(f"resize_to ({self.resize_to}) must be at least image_size ({image_size})")
        self.rotation = rotation
        self.hflip = hflip
        if augment not in ("paper", "grey_trivial"):
            raise ValueError(f"augment must be 'paper' or 'grey_trivial', got {augment!r}")
        self.augment = augment
        self.augment_strength = augment_strength
        if inner_val is not None and not 0.0 < inner_val < 1.0:
            raise ValueError(f"inner_val is the fraction of the training subset held out for validation, in (0, 1); got {inner_val}")
        self.inner_val = inner_val
        if inner_folds is not None:
            if inner_val is not None:
                raise ValueError("give inner_val (one held-out fraction) or inner_folds (k folds), not both")
            if inner_folds < 2 or not 0 <= inner_fold < inner_folds:
                raise ValueError(f"inner_folds needs 2 or more folds and inner_fold one of 0..inner_folds-1; "
                                 f"got inner_folds={inner_folds}, inner_fold={inner_fold}")
        self.inner_folds = inner_folds
        self.inner_fold = inner_fold
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self._num_classes = num_classes
        self._class_names = list(class_names) if class_names is not None else None
        self._task = task
        self.splits: dict[str, Split] = {}
        self.train_indices: np.ndarray | None = None
        self.inner_val_indices: np.ndarray | None = None
        self._labels_cache: dict[str, np.ndarray] | None = None
        self.device_resident = device_resident
        self._index_loaders: set[str] = set()  # splits whose loader yields indices (device-resident)
        self._on_device: dict[str, torch.Tensor] = {}
        # The training order's own random stream (shuffling, loader worker seeds), saved in checkpoints:
        # Lightning makes the first training iterator before a resumed run's global random states
        # could be put back, but after the data module's state is loaded.
        self.shuffle_generator = torch.Generator()
        self.shuffle_generator.manual_seed(torch.initial_seed() + 1_000_003 * seed)

    # --------------------------------------------------------- for subclasses
    def load_splits(self) -> dict[str, Split]:
        """Read the train, val and test splits (uint8 images, labels). Called once per process."""
        raise NotImplementedError

    def load_labels(self) -> dict[str, np.ndarray]:
        """Labels of every split, cheaply (no image decoding); used before ``setup`` for ``num_classes``."""
        return {name: split.labels for name, split in self.load_splits().items()}

    def source_name(self) -> str:
        """What the data came from, for messages."""
        return type(self).__name__

    # ------------------------------------------------------- class bookkeeping
    def _labels(self) -> dict[str, np.ndarray]:
        if self._labels_cache is None:
            self._labels_cache = self.load_labels()
            self._check_labels(self._labels_cache)
        return self._labels_cache

    def _check_labels(self, labels: dict[str, np.ndarray]) -> None:
        derived = self._derived_num_classes(labels)
        expected = self._num_classes if self._num_classes is not None else derived
        for split, y in labels.items():
            if y.ndim > 1:
                if y.shape[1] != expected:
                    raise ValueError(
                        f"{self.source_name()}: {split} labels have {y.shape[1]} columns, num_classes is {expected}"
                    )
                continue
            bad = np.unique(y[(y < 0) | (y >= expected)])
            if bad.size:
                raise ValueError(
                    f"{self.source_name()}: {split} labels {bad.tolist()[:10]} do not fit num_classes={expected} "
                    f"(valid labels are 0..{expected - 1})"
                )
        if self._class_names is not None and len(self._class_names) != expected:
            raise ValueError(
                f"{self.source_name()}: {len(self._class_names)} class_names given for {expected} classes"
            )
        self._check_every_class_is_evaluated(labels)

    def _check_every_class_is_evaluated(self, labels: dict[str, np.ndarray]) -> None:
        """A class with no image in val or test cannot be selected on or measured (its AUC is undefined,
        and averaging it in as 0 misleads): raise, naming it, before anything trains."""
        if any(y.ndim > 1 for y in labels.values()):
            return
        present = set(np.unique(np.concatenate(list(labels.values()))).tolist())
        for split in ("val", "test"):
            missing = sorted(present - set(np.unique(labels.get(split, np.array([]))).tolist()))
            if missing:
                names = [self._class_names[c] if self._class_names else str(c) for c in missing]
                raise ValueError(
                    f"{self.source_name()}: class(es) {names} have no image in the {split} split, so their AUC cannot be "
                    f"measured there. HINT: add images of them, fix their labels, or keep them out of the data"
                )

    @staticmethod
    def _derived_num_classes(labels: dict[str, np.ndarray]) -> int:
        first = next(iter(labels.values()))
        if first.ndim > 1:
            return int(first.shape[1])
        return int(max(int(y.max()) for y in labels.values() if y.size) + 1)

    @property
    def num_classes(self) -> int:
        """Classes (labels for multi-label data); the model reads it from here."""
        if self._num_classes is None:
            self._num_classes = self._derived_num_classes(self._labels())
        else:
            self._labels()
        return self._num_classes

    @property
    def task(self) -> str:
        if self._task is None:
            first = next(iter(self._labels().values()))
            self._task = "multilabel" if first.ndim > 1 else ("binary" if self.num_classes == 2 else "multiclass")
        return self._task

    @property
    def class_names(self) -> list[str]:
        count = self.num_classes  # reads the labels first: a data module may learn the names there
        return self._class_names or [str(i) for i in range(count)]

    # -------------------------------------------------------------- lightning
    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # safe to call twice (fit then test)
            return
        self._labels()
        splits = self.load_splits()
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise ValueError(f"{self.source_name()} lacks the split(s) {missing}")
        train = splits["train"]
        self.train_indices = sample_subset(
            train.labels,
            size=self.train_size,
            seed=self.seed,
            sampling=self.sampling if train.labels.ndim == 1 else "random",
            per_class=self.per_class,
            class_names=self.class_names,
        )
        self._check_every_class_trains(train.labels, self.train_indices)
        if self.inner_val is not None or self.inner_folds is not None:
            self._hold_out_inner_val(train.labels)
            val = torch.as_tensor(self.inner_val_indices)
            splits["val"] = Split(train.images[val], train.labels[self.inner_val_indices])
        index = torch.as_tensor(self.train_indices)
        splits["train"] = Split(train.images[index], train.labels[self.train_indices])
        self.splits = {name: Split(resize_uint8(s.images, self.resize_to), s.labels) for name, s in splits.items()}
        print(self.summary_text())

    def _hold_out_inner_val(self, labels: np.ndarray) -> None:
        """Split the drawn subset into the images trained on and the inner validation split."""
        drawn = labels[self.train_indices]
        setting = f"inner_val={self.inner_val}" if self.inner_folds is None else f"inner_folds={self.inner_folds}"
        least = 2 if self.inner_folds is None else self.inner_folds
        if drawn.ndim == 1:
            small = [self.class_names[c] for c, n in enumerate(class_counts(drawn, self.num_classes)) if n < least]
            if small:
                why, hint = (("one to train on and one to validate on", "no inner_val") if self.inner_folds is None
                             else ("one for each fold to validate on", "fewer inner_folds"))
                raise ValueError(
                    f"{self.source_name()}: {setting} needs at least {least} training images of each class, "
                    f"{why}; class(es) {small} have fewer in the subset "
                    f"(train_size={self.train_size}, seed {self.seed}). HINT: a larger train_size, or {hint}"
                )
        if self.inner_folds is None:
            kept, held = hold_out(drawn, self.inner_val, self.seed)
        else:
            kept, held = fold_out(drawn, self.inner_folds, self.inner_fold, self.seed)
        self.train_indices, self.inner_val_indices = self.train_indices[kept], self.train_indices[held]

    def _check_every_class_trains(self, labels: np.ndarray, chosen: np.ndarray) -> None:
        """A single-label classifier cannot learn a class it never sees: raise, naming each class with
        no image in the training subset, before a run that would silently train on fewer classes."""
        if labels.ndim > 1:
            return
        available = class_counts(labels, self.num_classes)
        drawn = class_counts(labels[chosen], self.num_classes)
        empty = [c for c, n in enumerate(drawn) if n == 0]
        if not empty:
            return
        names = ", ".join(f"{self.class_names[c]!r} (label {c}, {available[c]} in the training split)" for c in empty)
        if any(available[c] == 0 for c in empty):
            hint = "the training split itself has none: check the labels or class folders"
        elif self.per_class is not None:
            hint = "give every class a count of at least 1 in data.init_args.class_counts"
        else:
            hint = f"use data.init_args.train_size >= {self.num_classes} with data.init_args.sampling: balanced"
        how = f"train_size={self.train_size}, {self.sampling} sampling"
        if self.per_class is not None:
            how = f"class_counts={self.per_class}"
        raise ValueError(
            f"{self.source_name()}: the training subset ({how}, seed {self.seed}) has no image of class {names}. HINT: {hint}"
        )

    def summary(self) -> dict[str, list[int]]:
        """Images per class per split, after subset sampling."""
        return {name: class_counts(s.labels, self.num_classes) for name, s in self.splits.items()}

    def summary_text(self) -> str:
        held = f", val = {self.inner_val:g} of the training subset held out" if self.inner_val is not None else ""
        rows = [f"{self.source_name()}: seed {self.seed}, {self.sampling} subset{held}, {self.image_size}px"]
        rows.append("  split  " + " ".join(f"{n:>10}" for n in self.class_names) + "      total")
        for split, counts in self.summary().items():
            rows.append(f"  {split:<6} " + " ".join(f"{c:>10}" for c in counts) + f" {len(self.splits[split].labels):>10}")
        return "\n".join(rows)

    def dataset(self, split: str) -> TensorImageDataset:
        s = self.splits[split]
        if split == "train":
            transform = train_transform(self.image_size, self.rotation, self.hflip)
            if self.augment == "grey_trivial":
                transform = v2.Compose([transform, GreyTrivialAugment(self.augment_strength)])
        else:
            transform = eval_transform(self.image_size)
        return TensorImageDataset(s.images, s.labels, transform)

    # ----------------------------------------------------- device-resident path
    def uses_device_batches(self) -> bool:
        """Whether loaders yield indices into device-held splits (see ``device_resident``)."""
        if self.device_resident is not None:
            return self.device_resident
        return self.trainer is not None

    def _loader_dataset(self, split: str) -> Dataset:
        if self.uses_device_batches():
            self._index_loaders.add(split)
            return IndexDataset(self.splits[split].labels)
        self._index_loaders.discard(split)
        return self.dataset(split)

    def _pin(self) -> bool:
        trainer = self.trainer
        return self.uses_device_batches() and trainer is not None and trainer.strategy.root_device.type == "cuda"

    def device_images(self, split: str, device: torch.device) -> torch.Tensor:
        """The split's uint8 images on ``device``, copied once (eval splits centre-cropped first)."""
        held = self._on_device.get(split)
        if held is None or held.device != device:
            images = self.splits[split].images
            if split != "train":
                images = centre_crop(images, self.image_size)
            held = self._on_device[split] = images.to(device).contiguous()
        return held

    @staticmethod
    def _split_of_stage(stage: RunningStage | None) -> str | None:
        return {
            RunningStage.TRAINING: "train",
            RunningStage.SANITY_CHECKING: "val",
            RunningStage.VALIDATING: "val",
            RunningStage.TESTING: "test",
            RunningStage.PREDICTING: "test",
        }.get(stage)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Device-resident loaders yield ``(indices, labels)``: gather the images on the device, augment the training batch."""
        if not self._index_loaders or self.trainer is None:
            return batch
        split = self._split_of_stage(self.trainer.state.stage)
        if split not in self._index_loaders:
            return batch
        indices, labels = batch
        images = self.device_images(split, indices.device)[indices]
        if split == "train":
            images = augment_batch(images, self.image_size, self.rotation, self.hflip)
            if self.augment == "grey_trivial":
                images = grey_trivial_augment(images, self.augment_strength)
            return images, labels
        return images, labels

    # -------------------------------------------------------------- loaders
    def state_dict(self) -> dict[str, Any]:
        """The training order's random state, so that a resumed run draws the batches the uninterrupted one drew."""
        return {"shuffle_generator": self.shuffle_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "shuffle_generator" in state_dict:
            self.shuffle_generator.set_state(state_dict["shuffle_generator"])

    def train_dataloader(self) -> DataLoader:
        resident = self.uses_device_batches()
        return DataLoader(
            self._loader_dataset("train"),
            batch_size=min(self.batch_size, len(self.splits["train"].labels)),
            shuffle=True,
            generator=self.shuffle_generator,
            drop_last=len(self.splits["train"].labels) > self.batch_size,
            num_workers=0 if resident else self.num_workers,
            persistent_workers=self.num_workers > 0 and not resident,
            pin_memory=self._pin(),
        )

    def _eval_loader(self, split: str) -> DataLoader:
        resident = self.uses_device_batches()
        return DataLoader(
            self._loader_dataset(split), batch_size=self.eval_batch_size,
            num_workers=0 if resident else self.num_workers, pin_memory=self._pin(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
