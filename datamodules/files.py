"""Shared base of the data modules that read image *files* (folders, CSV manifests).

A subclass only lists the files (:meth:`ImageFilesDataModule.build_catalog`: path, label, optional
patient ID and given split per image). Everything else is the same for every layout and lives here:

1. **Splits.** Given splits are kept (and checked: no patient in two); otherwise the whole labelled
   pool is split once by ``split_seed``, stratified and grouped by patient (see
   :mod:`~smallmed.datamodules.splits`). This happens before, and independently of, the training
   subset, so val and test never change with ``train_size`` or ``seed``, and the base class's subset
   sampling stays nested.
2. **Decode once.** Every file is decoded, resized to ``resize_to`` (squashed to a square, keeping
   the whole field of view) and kept as uint8 in memory, so epochs only crop, flip and rotate small
   tensors: ``C * resize_to**2`` bytes per image. During setup the whole pool is held once; after it,
   only the drawn training subset, val and test. Unreadable files stop the run naming the file, or
   with ``on_bad_image: skip`` are left out and listed in one warning.
3. **Leakage check.** The sha256 of every file's bytes is compared across splits: the same image in
   train and test is an error naming both files.
4. **Counts.** Images per class per split are printed at setup and sent to the trainer's loggers as
   hyperparameters (``data/<split>/<class>``), so every run records what it trained and tested on.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from smallmed.datamodules.base import SPLITS, SmallImageDataModule, Split
from smallmed.datamodules.images import BadImageError, read_image_and_digest
from smallmed.datamodules.splits import (
    LeakageError,
    check_no_shared_groups,
    check_no_shared_images,
    stratified_group_split,
)
from smallmed.datamodules.transforms import resize_uint8

OnBadImage = Literal["error", "skip"]


def data_path(module: str, path: str | None, old_name: str, old_value: str | None, what: str) -> Path:
    """The data's location, ``path`` in every data module; ``old_name`` is its deprecated alias."""
    if old_value is not None:
        warnings.warn(
            f"{module}({old_name}=...) is deprecated: every data module takes its data's location as `path`. "
            f"HINT: data.init_args.path: {old_value}",
            FutureWarning,
            stacklevel=3,
        )
        if path is not None and str(path) != str(old_value):
            raise ValueError(f"{module} got both path={path!r} and the deprecated {old_name}={old_value!r}; give path only")
        path = old_value
    if path is None:
        raise ValueError(f"{module} needs `path`: {what}. HINT: data.init_args.path: ...")
    return Path(path)
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)  # ITU-R 601, as Pillow's convert("L")


@dataclass
class ImageCatalog:
    """The labelled image files of a data set, before any decoding.

    Attributes:
        paths: one file per image.
        labels: class index per image ``(N,)`` int64, or multi-hot ``(N, K)``.
        class_names: names in label order (``None``: the labels are bare indices).
        groups: patient ID per image, or ``None`` when unknown.
        given_splits: ``"train"``/``"val"``/``"test"`` per image when the data set comes split, else ``None``.
        origin: how the splits were obtained, for the printed summary.
        where: where each image was listed (``labels.csv row 14``), for messages; default its path.
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str] | None = None
    groups: np.ndarray | None = None
    given_splits: np.ndarray | None = None
    origin: str = ""
    where: list[str] | None = None

    def location(self, i: int) -> str:
        return self.where[i] if self.where is not None else str(self.paths[i])


class ImageFilesDataModule(SmallImageDataModule):
    """Base of the file-reading data modules (see the module docstring); subclasses implement :meth:`build_catalog`.

    Args:
        val_fraction: share of the pool for validation when the module makes the splits; with given
            splits that lack a val split, the share of the given train split held out for validation.
        test_fraction: share of the pool for testing when the module makes the splits.
        split_seed: seed of the splits the module makes. Separate from ``seed`` (the subset seed) on
            purpose: varying the subset seed must not move val or test images.
        on_bad_image: ``error`` stops at the first unreadable file, naming it; ``skip`` leaves such
            files out and lists them in one warning.
        value_range: ``[low, high]`` mapped to 0..255 for 16-bit PNG values or DICOM modality values
            (e.g. HU), instead of each image's min..max or the DICOM file's own window.
        channels: 1 or 3 to force the stored channels; ``None`` keeps grey images (also grey ones
            saved as RGB) as one channel, and stores all as RGB only when some image has colour.
        min_class_images: a class with fewer images than this, beside a class with at least this many
            and three times as many, is an error naming its images (a label typo such as ``bacterail``
            would otherwise train as a class of its own); 0 accepts any class.
        **kwargs: see :class:`~smallmed.datamodules.base.SmallImageDataModule`.
    """

    def __init__(
        self,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        on_bad_image: OnBadImage = "error",
        value_range: tuple[float, float] | None = None,
        channels: Literal[1, 3] | None = None,
        min_class_images: int = 5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be in (0, 1) and leave "
                "images for training"
            )
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
        if value_range is not None and (len(value_range) != 2 or not value_range[1] > value_range[0]):
            raise ValueError(f"value_range must be [low, high] with high > low, got {value_range}")
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.on_bad_image = on_bad_image
        self.value_range = tuple(value_range) if value_range is not None else None
        self.channels = channels
        self.min_class_images = min_class_images
        self.skipped: list[tuple[Path, str]] = []
        self._catalog: ImageCatalog | None = None
        self._split_indices: dict[str, np.ndarray] | None = None

    # --------------------------------------------------------- for subclasses
    def build_catalog(self) -> ImageCatalog:
        """List the labelled files (no decoding). Called once per instance."""
        raise NotImplementedError

    # ---------------------------------------------------------------- catalog
    @property
    def catalog(self) -> ImageCatalog:
        """The labelled files, listed once (no decoding) and checked against ``num_classes``."""
        if self._catalog is None:
            catalog = self.build_catalog()
            if not catalog.paths:
                raise ValueError(f"{self.source_name()}: no images found")
            if catalog.labels.ndim == 1:
                found = len(catalog.class_names) if catalog.class_names is not None else len(np.unique(catalog.labels))
                if found < 2:
                    names = catalog.class_names or np.unique(catalog.labels).tolist()
                    raise ValueError(f"{self.source_name()}: found {found} class {names}: a classifier needs at least 2")
            if catalog.class_names is not None and self._num_classes is not None:
                if len(catalog.class_names) != self._num_classes:
                    raise ValueError(
                        f"{self.source_name()}: found {len(catalog.class_names)} classes {catalog.class_names}, "
                        f"but num_classes is {self._num_classes}"
                    )
            if catalog.class_names is not None and self._class_names is None:
                self._class_names = list(catalog.class_names)
            self._check_small_classes(catalog)
            self._catalog = catalog
        return self._catalog

    def _check_small_classes(self, catalog: ImageCatalog) -> None:
        """A class far rarer than ``min_class_images`` is almost always a typo: name its images and the
        class it is closest to, instead of training a class from one image."""
        if catalog.labels.ndim != 1 or not self.min_class_images:
            return
        counts = np.bincount(catalog.labels, minlength=len(catalog.class_names or []))
        names = catalog.class_names or [str(c) for c in range(len(counts))]
        largest = int(counts.max())
        small = [c for c, n in enumerate(counts) if n < self.min_class_images and largest >= max(self.min_class_images, 3 * n)]
        if not small:
            return
        problems = []
        for c in small:
            listed = [catalog.location(i) for i in np.flatnonzero(catalog.labels == c)[:5]]
            close = difflib.get_close_matches(names[c], [n for k, n in enumerate(names) if k not in small], n=1, cutoff=0.7)
            guess = f" Did you mean {close[0]!r}?" if close else ""
            found = f"{counts[c]} image(s) ({'; '.join(listed)})" if listed else "no image"
            problems.append(f"class {names[c]!r} has {found}.{guess}")
        others = [int(n) for c, n in enumerate(counts) if c not in small]
        rest = f"; the other classes have {min(others)} to {max(others)}" if others else ""
        raise ValueError(
            f"{self.source_name()}: {' '.join(problems)} That is fewer than min_class_images={self.min_class_images}{rest}. "
            "HINT: fix the labels; or list the classes to keep in data.init_args.classes; or set "
            "data.init_args.min_class_images: 0 to train on it anyway"
        )

    def split_indices(self) -> dict[str, np.ndarray]:
        """Indices into the catalog per split: the given splits, or ones made by ``split_seed`` (cached)."""
        if self._split_indices is None:
            self._split_indices = self._make_splits(self.catalog)
        return self._split_indices

    def _make_splits(self, catalog: ImageCatalog) -> dict[str, np.ndarray]:
        if catalog.given_splits is None:
            train = 1 - self.val_fraction - self.test_fraction
            fractions = {"train": train, "val": self.val_fraction, "test": self.test_fraction}
            return stratified_group_split(catalog.labels, fractions, catalog.groups, seed=self.split_seed)
        given = np.asarray(catalog.given_splits)
        out = {s: np.flatnonzero(given == s) for s in SPLITS}
        for s in ("train", "test"):
            if out[s].size == 0:
                raise ValueError(f"{self.source_name()}: the given splits hold no {s} images")
        if out["val"].size == 0:  # carve val out of the given train split, by patient
            train = out["train"]
            groups = catalog.groups[train] if catalog.groups is not None else None
            fractions = {"train": 1 - self.val_fraction, "val": self.val_fraction}
            parts = stratified_group_split(catalog.labels[train], fractions, groups, seed=self.split_seed)
            out = {"train": train[parts["train"]], "val": train[parts["val"]], "test": out["test"]}
        if catalog.groups is not None:
            check_no_shared_groups({s: catalog.groups[idx] for s, idx in out.items()})
        return out

    # -------------------------------------------------- SmallImageDataModule
    def load_labels(self) -> dict[str, np.ndarray]:
        labels = self.catalog.labels
        out = {s: labels[idx] for s, idx in self.split_indices().items()}
        if labels.ndim == 1:
            missing = sorted(set(np.unique(labels).tolist()) - set(np.unique(out["train"]).tolist()))
            if missing:
                names = [self._name(c) for c in missing]
                raise ValueError(f"{self.source_name()}: no training images of class(es) {names}")
        return out

    def _name(self, c: int) -> str:
        names = self.catalog.class_names
        return names[c] if names is not None and c < len(names) else str(c)

    @property
    def class_names(self) -> list[str]:
        self._labels()  # the catalog names the classes
        return super().class_names

    def load_splits(self) -> dict[str, Split]:
        catalog = self.catalog
        indices = self.split_indices()
        size = self.resize_to
        print(f"{self.source_name()}: decoding {sum(len(i) for i in indices.values())} images once, stored at {size}px")
        # Decoded straight into one uint8 buffer per split, so the peak stays near one copy of the data.
        channels = self.channels or 1
        buffers = {s: torch.empty((len(idx), channels, size, size), dtype=torch.uint8) for s, idx in indices.items()}
        kept: dict[str, list[int]] = {s: [] for s in indices}
        files: dict[str, list[tuple[Path, str]]] = {s: [] for s in indices}
        self.skipped = []
        for split, idx in indices.items():
            for i in idx:
                path = catalog.paths[i]
                try:
                    image, digest = read_image_and_digest(path, self.value_range)
                except BadImageError as err:
                    if self.on_bad_image == "error":
                        hint = "HINT: set data.init_args.on_bad_image: skip to leave unreadable files out"
                        raise BadImageError(path, f"{err.reason}. {hint}") from err
                    self.skipped.append((path, err.reason))
                    continue
                image = self._store(image)
                if image.shape[0] == 3 and channels == 1 and self.channels is None:
                    channels = 3  # the first colour image: every image is stored as RGB from here on
                    buffers = {s: b.expand(-1, 3, -1, -1).contiguous() for s, b in buffers.items()}
                buffers[split][len(kept[split])] = _to_channels(image, channels)
                kept[split].append(int(i))
                files[split].append((path, digest))
        if self.skipped:
            listing = "; ".join(f"{p} ({reason})" for p, reason in self.skipped)
            message = f"{self.source_name()}: skipped {len(self.skipped)} unreadable image(s): {listing}"
            warnings.warn(message, UserWarning, stacklevel=2)
        try:
            check_no_shared_images(files)
        except LeakageError as err:
            if catalog.given_splits is None:
                hint = "or give patient IDs, so that copies from one patient stay in one split"
                raise LeakageError(f"{err} ({hint})") from err
            raise
        out = {}
        for split, rows in kept.items():
            if not rows:
                raise ValueError(f"{self.source_name()}: no readable images left in the {split} split")
            images = buffers[split] if len(rows) == len(buffers[split]) else buffers[split][: len(rows)].clone()
            out[split] = Split(images, catalog.labels[np.asarray(rows, dtype=np.int64)])
        return out

    def _store(self, image: torch.Tensor) -> torch.Tensor:
        """One decoded image as stored: grey kept as one channel, resized once to ``resize_to``."""
        if image.shape[0] == 3 and torch.equal(image[0], image[1]) and torch.equal(image[0], image[2]):
            image = image[:1]  # grey saved as RGB: a third of the memory, and a true 1-channel input
        return resize_uint8(image[None], self.resize_to)[0]

    # ---------------------------------------------------------------- summary
    def setup(self, stage: str | None = None) -> None:
        fresh = not self.splits
        super().setup(stage)
        if fresh:
            self.log_counts()

    def summary_text(self) -> str:
        return super().summary_text() + f"\n  splits: {self.split_origin()}"

    def split_origin(self) -> str:
        """Where the val / test splits came from, in words."""
        catalog = self.catalog
        grouped = "no patient IDs"
        if catalog.groups is not None:
            grouped = f"{len(np.unique(catalog.groups.astype(str)))} patients, none in two splits"
        if catalog.given_splits is not None:
            held_out = ""
            if not np.any(catalog.given_splits == "val"):
                held_out = f", val = {self.val_fraction:.0%} of the given train split"
            return f"{catalog.origin or 'given'}{held_out} ({grouped})"
        train = 1 - self.val_fraction - self.test_fraction
        return (
            f"made by the module, stratified {train:.0%}/{self.val_fraction:.0%}/{self.test_fraction:.0%} with "
            f"split_seed {self.split_seed} ({grouped})"
        )

    def counts_as_hparams(self) -> dict[str, int]:
        """``{"data/<split>/<class>": images, "data/<split>/total": images}`` after subset sampling."""
        out: dict[str, int] = {}
        for split, counts in self.summary().items():
            for name, count in zip(self.class_names, counts):
                out[f"data/{split}/{name}"] = count
            out[f"data/{split}/total"] = len(self.splits[split].labels)
        return out

    def log_counts(self) -> None:
        """Send the counts per class per split to the attached trainer's loggers (if any)."""
        trainer = getattr(self, "trainer", None)
        for logger in getattr(trainer, "loggers", None) or []:
            logger.log_hyperparams(self.counts_as_hparams())


def _to_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    if image.shape[0] == channels:
        return image
    if channels == 3:
        return image.expand(3, -1, -1)
    grey = (image.float() * LUMA).sum(dim=0, keepdim=True)
    return grey.round_().clamp_(0, 255).to(torch.uint8)
