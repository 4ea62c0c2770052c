"""MedMNIST-layout ``.npz`` files: ``{train,val,test}_images`` and ``{train,val,test}_labels``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from smallmed.datamodules.base import SPLITS, SmallImageDataModule, Split

REQUIRED_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
# Class names of the MedMNIST sets and the shared data (../shared/data/README.md), by file name without
# its size suffix: a file named like one of them, with as many classes, gets its names.
KNOWN_CLASS_NAMES = {
    "breastmnist": ["malignant", "benign"],  # MedMNIST: 1 is "normal, benign"
    "pneumoniamnist": ["normal", "pneumonia"],
    "pneumoniamnist_reconstructed": ["normal", "pneumonia"],
    "kermany_source_A": ["normal", "pneumonia"],
    "kermany_target_B_bacterial_vs_viral": ["bacterial", "viral"],
    "knee_oa_kl": ["KL0", "KL1", "KL2", "KL3", "KL4"],
}


class NpzDataModule(SmallImageDataModule):
    """A MedMNIST-layout ``.npz`` file, with the paper's seeded small-subset sampling.

    Images may be ``(N, H, W)`` grey or ``(N, H, W, C)`` colour uint8; labels ``(N,)``, ``(N, 1)`` or
    multi-hot ``(N, K)``. The classes are named by ``class_names`` here, else by a ``class_names``
    array in the file, else by the known names of the MedMNIST and shared sets (``breastmnist_28.npz``:
    malignant, benign), else ``0, 1, ...``: predictions and per-class metrics say ``malignant``, not ``0``. The official val and test splits are kept whatever ``train_size`` is: model
    selection uses val, and results are reported on the full test split.

    Args:
        path: the ``.npz`` file.
        download: fetch a missing MedMNIST file with the ``medmnist`` package (needs network).
        **kwargs: see :class:`~smallmed.datamodules.base.SmallImageDataModule`.

    Example:
        >>> dm = NpzDataModule("../shared/data/breastmnist_28.npz", train_size=50, seed=0)  # doctest: +SKIP
        >>> dm.setup(); len(dm.splits["train"].labels)  # doctest: +SKIP
        50
    """

    def __init__(self, path: str, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.download = download

    def source_name(self) -> str:
        return str(self.path)

    def prepare_data(self) -> None:
        if not self.path.is_file() and self.download:
            download_medmnist(self.path)

    def _open(self) -> np.lib.npyio.NpzFile:
        if not self.path.is_file():
            if self.download:
                download_medmnist(self.path)
            else:
                raise FileNotFoundError(
                    f"npz data file not found: {self.path}. HINT: put the file there (the shared copies live in "
                    "../shared/data), or set `data.init_args.download: true` with the `medmnist` package and a network"
                )
        try:
            data = np.load(self.path)
        except Exception as err:
            raise ValueError(f"{self.path} is not a readable .npz file: {err}") from err
        missing = [k for k in REQUIRED_KEYS if k not in data.files]
        if missing:
            raise KeyError(
                f"{self.path} lacks the key(s) {missing}; a MedMNIST-layout file holds {list(REQUIRED_KEYS)} "
                f"(this one has {data.files})"
            )
        return data

    def load_labels(self) -> dict[str, np.ndarray]:
        with self._open() as data:
            labels = {s: _labels(data[f"{s}_labels"], self.path, s) for s in SPLITS}
            if self._class_names is None:
                self._class_names = self._names_for(data, self._derived_num_classes(labels))
            return labels

    def _names_for(self, data: np.lib.npyio.NpzFile, num_classes: int) -> list[str] | None:
        if "class_names" in data.files:
            return [str(name) for name in data["class_names"].reshape(-1)]
        stem = re.sub(r"_\d+$", "", self.path.stem)
        known = KNOWN_CLASS_NAMES.get(stem)
        return list(known) if known is not None and len(known) == (self._num_classes or num_classes) else None

    def load_splits(self) -> dict[str, Split]:
        out = {}
        with self._open() as data:
            for s in SPLITS:
                images = _images(data[f"{s}_images"], self.path, s)
                labels = _labels(data[f"{s}_labels"], self.path, s)
                if len(images) != len(labels):
                    raise ValueError(f"{self.path}: {s} has {len(images)} images but {len(labels)} labels")
                out[s] = Split(images, labels)
        return out


def _labels(y: np.ndarray, path: Path, split: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim not in (1, 2):
        raise ValueError(f"{path}: {split}_labels has shape {y.shape}; expected (N,), (N, 1) or multi-hot (N, K)")
    return y.astype(np.int64)


def _images(x: np.ndarray, path: Path, split: str) -> torch.Tensor:
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: {split}_images are {x.dtype}; expected uint8")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise ValueError(f"{path}: {split}_images has shape {x.shape}; expected (N, H, W) or (N, H, W, C)")
    return torch.from_numpy(np.ascontiguousarray(x))


def download_medmnist(path: Path) -> None:
    """Fetch a MedMNIST file named like ``breastmnist_28.npz`` (or ``breastmnist.npz``) to ``path``."""
    try:
        import medmnist
    except ImportError as err:
        raise FileNotFoundError(
            f"npz data file not found: {path}, and the `medmnist` package that could download it is not installed. "
            "HINT: pip install medmnist, or copy the file there"
        ) from err
    flag, _, size = path.stem.partition("_")
    info = medmnist.INFO.get(flag)
    if info is None:
        raise FileNotFoundError(f"npz data file not found: {path}; {flag!r} is not a MedMNIST data set name")
    dataset_cls = getattr(medmnist, info["python_class"])
    kwargs = {"size": int(size)} if size.isdigit() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset_cls(split="train", download=True, root=str(path.parent), **kwargs)
    fetched = path.parent / (f"{flag}_{size}.npz" if size and size != "28" else f"{flag}.npz")
    if fetched != path and fetched.is_file():
        fetched.rename(path)
