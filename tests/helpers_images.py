"""Real-image fixtures written at run time: PNG / JPEG folders, 16-bit PNGs, DICOM files, CSV manifests.

The pixels come from the shared real data (``../shared/data``): BreastMNIST (28 px ultrasound) and
the Kermany patient group B chest X-rays (64 px, with patient IDs in ``*_patient`` and the original
file names, ``person1000_virus_1681.jpeg``, in ``*_files``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KERMANY = "kermany_target_B_bacterial_vs_viral_64.npz"
BREAST = "breastmnist_28.npz"
KERMANY_CLASSES = ("bacterial", "viral")
BREAST_CLASSES = ("malignant", "benign")
PATIENT_PATTERN = r"person(\d+)_"


@lru_cache(maxsize=4)
def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(SHARED_DATA / name) as data:
        return {k: data[k] for k in data.files}


def real(name: str) -> dict[str, np.ndarray]:
    """The arrays of one shared data file; skips the test (naming the path) when it is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real data {name!r} is missing: expected at {path} (../shared/data; CI provides it)")
    return _load(name)


def kermany_pool() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """All Kermany B images pooled: images ``(N, 64, 64)``, labels, patient IDs, file stems."""
    d = real(KERMANY)
    splits = ("train", "val", "test")
    images = np.concatenate([d[f"{s}_images"] for s in splits])
    labels = np.concatenate([d[f"{s}_labels"] for s in splits]).astype(np.int64)
    patients = np.concatenate([d[f"{s}_patient"] for s in splits])
    stems = [Path(str(f)).stem for s in splits for f in d[f"{s}_files"]]
    return images, labels, patients, stems


def save(path: Path, array: np.ndarray, **kwargs) -> Path:
    """Write a uint8 / uint16 ``(H, W)`` or ``(H, W, 3)`` array with Pillow (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def write_class_folders(
    root: Path,
    images: Sequence[np.ndarray],
    labels: Iterable[int],
    class_names: Sequence[str],
    stems: Sequence[str] | None = None,
    suffix: str = ".png",
) -> list[Path]:
    """``root/<class>/<stem><suffix>`` for each image; returns the paths in input order."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        stem = stems[i] if stems is not None else f"img{i:05d}"
        paths.append(save(root / class_names[int(label)] / f"{stem}{suffix}", image))
    return paths


def write_manifest(path: Path, rows: Sequence[dict[str, object]], columns: Sequence[str] | None = None) -> Path:
    """A CSV manifest with a header (columns default to the first row's keys)."""
    columns = list(columns or rows[0].keys())
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_dicom(
    path: Path,
    stored: np.ndarray,
    *,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, int, Sequence[int]] | None = None,
) -> Path:
    """An uncompressed single-frame grey DICOM file written with pydicom.

    Args:
        stored: the stored pixel values ``(H, W)`` (before the modality LUT).
        window: ``(centre, width)``.
        voi_lut: ``(first mapped value, bits per entry, LUT data)`` for a VOI LUT Sequence.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0.0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        first, bits, data = voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(data), first, bits]
        item.LUTData = np.asarray(data, dtype=np.uint16).tobytes()  # OW, little endian
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (a broken transfer)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path
