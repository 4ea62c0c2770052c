"""New images to predict: every file under a folder, read and sized exactly as at evaluation time.

``python train.py predict --config FILE --ckpt_path BEST.ckpt --predictions.images new_images/`` swaps the
run's data module for :class:`PredictFolderDataModule` (built by :meth:`PredictFolderDataModule.like`
from it), so a new image goes through the same steps as a test image: decoded by
:func:`~smallmed.datamodules.images.read_image` (PNG, JPEG, 16-bit PNG, DICOM, with the training data
module's ``value_range``), grey kept as one channel, resized to ``resize_to`` and centre-cropped to
``image_size``. The training data are never loaded.

A file that cannot be read does not stop the run: the loader yields a blank stand-in with the
reason, and :class:`~smallmed.prediction.PredictionWriter` lists it instead of a prediction.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from smallmed.datamodules.images import BadImageError, image_files, read_image
from smallmed.datamodules.transforms import eval_transform, resize_uint8


def list_files(root: str | Path) -> list[Path]:
    """The image files under ``root`` (recursively, sorted, as training finds them); ``root`` itself when
    it is a file. Files of other types (a ``manifest.csv``, ``Thumbs.db``) are left out, in one warning.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no image files.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder of images to predict: {root}")
    files, others = image_files(root)
    if others:
        shown = ", ".join(p.relative_to(root).as_posix() for p in others[:3]) + (" ..." if len(others) > 3 else "")
        warnings.warn(f"{root}: left out {len(others)} file(s) that are not PNG, JPEG or DICOM images ({shown})", UserWarning,
                      stacklevel=2)
    if not files:
        raise FileNotFoundError(f"{root} holds no image files to predict (PNG, JPEG or DICOM)")
    return files


class ImagesToPredict(Dataset):
    """The files under ``root`` as ``(image uint8 (C, S, S), index, error)``; ``error`` is ``""`` when read.

    Args:
        root: a folder (searched recursively) or one file.
        image_size: network input size; images are centre-cropped to it.
        resize_to: size images are resized to before the crop (default ``image_size * 17 / 16``, as
            the data modules store them).
        value_range: ``[low, high]`` for 16-bit PNG / DICOM values (see ``read_image``).

    Example:
        >>> ds = ImagesToPredict("new_images/", image_size=64)  # doctest: +SKIP
        >>> image, index, error = ds[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int,
        resize_to: int | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> None:
        self.root = Path(root)
        self.files = list_files(self.root)
        self.image_size = image_size
        self.resize_to = resize_to or max(image_size, round(image_size * 17 / 16))
        self.value_range = value_range
        self.crop = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        """The file's path relative to ``root`` (``/``-separated), as written in the CSV."""
        path = self.files[index]
        return path.name if path == self.root else path.relative_to(self.root).as_posix()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, str]:
        try:
            image = read_image(self.files[index], self.value_range)
        except BadImageError as err:
            return torch.zeros(1, self.image_size, self.image_size, dtype=torch.uint8), index, err.reason
        if image.shape[0] == 3 and torch.equal(image[0], image[1]) and torch.equal(image[0], image[2]):
            image = image[:1]  # grey saved as RGB, stored as the data modules store it
        return self.crop(resize_uint8(image[None], self.resize_to)[0]), index, ""


def collate_predict(items: list[tuple[torch.Tensor, int, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Stack a batch; grey images are repeated to 3 channels when the batch also holds colour ones."""
    channels = max(image.shape[0] for image, _, _ in items)
    images = torch.stack([image if image.shape[0] == channels else image.expand(channels, -1, -1) for image, _, _ in items])
    return images, torch.tensor([index for _, index, _ in items]), [error for _, _, error in items]


class PredictFolderDataModule(L.LightningDataModule):
    """A predict-only data module over a folder of new images (see the module docstring).

    Args:
        root: a folder (searched recursively) or one image file.
        image_size, resize_to, value_range: as the training data module's.
        batch_size: images per predict batch.
        num_workers: loader workers.

    Example:
        >>> dm = PredictFolderDataModule.like("new_images/", training_datamodule)  # doctest: +SKIP
        >>> trainer.predict(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        image_size: int = 64,
        resize_to: int | None = None,
        value_range: tuple[float, float] | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.image_size = image_size
        self.resize_to = resize_to
        self.value_range = value_range
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.dataset: ImagesToPredict | None = None

    @classmethod
    def like(cls, root: str | Path, datamodule: Any, batch_size: int | None = None) -> PredictFolderDataModule:
        """Sized and scaled like ``datamodule`` (a :class:`SmallImageDataModule`; plain defaults otherwise)."""
        return cls(
            str(root),
            image_size=getattr(datamodule, "image_size", 64),
            resize_to=getattr(datamodule, "resize_to", None),
            value_range=getattr(datamodule, "value_range", None),
            batch_size=batch_size or getattr(datamodule, "eval_batch_size", 64),
            num_workers=getattr(datamodule, "num_workers", 0),
        )

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.dataset = ImagesToPredict(self.root, self.image_size, self.resize_to, self.value_range)

    def predict_dataloader(self) -> DataLoader:
        self.setup("predict")
        return DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers, collate_fn=collate_predict)
