"""Data modules for small medical image sets (installed as ``smallmed.datamodules``)."""

from smallmed.datamodules.base import SmallImageDataModule, Split, TensorImageDataset
from smallmed.datamodules.files import ImageCatalog, ImageFilesDataModule
from smallmed.datamodules.folder import ImageFolderDataModule
from smallmed.datamodules.images import BadImageError, read_image
from smallmed.datamodules.manifest import ManifestDataModule
from smallmed.datamodules.npz import NpzDataModule
from smallmed.datamodules.predict import ImagesToPredict, PredictFolderDataModule
from smallmed.datamodules.sampling import SubsetTooLargeError, class_counts, sample_subset, subset_order
from smallmed.datamodules.splits import LeakageError, stratified_group_split

__all__ = [
    "BadImageError",
    "ImageCatalog",
    "ImageFilesDataModule",
    "ImageFolderDataModule",
    "ImagesToPredict",
    "LeakageError",
    "ManifestDataModule",
    "NpzDataModule",
    "PredictFolderDataModule",
    "SmallImageDataModule",
    "Split",
    "SubsetTooLargeError",
    "TensorImageDataset",
    "class_counts",
    "read_image",
    "sample_subset",
    "stratified_group_split",
    "subset_order",
]
