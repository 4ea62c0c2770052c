"""Data modules for small medical image sets (installed as ``smallmed.datamodules``)."""

from smallmed.datamodules.base import SmallImageDataModule, Split, TensorImageDataset
from smallmed.datamodules.npz import NpzDataModule
from smallmed.datamodules.sampling import SubsetTooLargeError, class_counts, sample_subset, subset_order

__all__ = [
    "NpzDataModule",
    "SmallImageDataModule",
    "Split",
    "SubsetTooLargeError",
    "TensorImageDataset",
    "class_counts",
    "sample_subset",
    "subset_order",
]
