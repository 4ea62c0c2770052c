"""Decode one image file (PNG, JPEG, DICOM) into the uint8 ``(C, H, W)`` tensor the data modules hold.

Every source ends as 8-bit display values because that is what a radiologist looks at and what
pretrained backbones were trained on; the conversion is done once, at load time, so training never
re-decodes a file.

- **PNG / JPEG** (Pillow): 8-bit grey or RGB as stored. Grey stays one channel (the model repeats
  it for a 3-channel backbone, or feeds it as is with ``in_chans: 1``); palette, RGBA and CMYK become
  RGB; EXIF orientation is applied as a viewer would.
- **16-bit PNG**: scaled to 0..255 by the image's own min..max unless ``value_range`` is given.
  Exports of 10- to 12-bit detectors store values in 0..1023 or 0..4095, so scaling the full
  0..65535 range would leave a nearly black image with a handful of grey levels; the per-image
  window uses all 256 levels and keeps the order of intensities (it is monotone). Give a fixed
  ``value_range`` where absolute intensities matter across images.
- **DICOM** (pydicom): the modality LUT (rescale slope / intercept, e.g. to Hounsfield units), then
  the file's VOI LUT or window centre / width (or ``value_range`` in modality units, e.g. a lung
  window ``[-1350, 150]`` HU, or else the image's min..max), then MONOCHROME1 is inverted, so bone is
  bright as on the reading screen.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

PIL_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES = PIL_SUFFIXES | DICOM_SUFFIXES

ValueRange = Sequence[float]


class BadImageError(ValueError):
    """A file that cannot be decoded into an image (corrupt, truncated, unsupported); names the file.

    Attributes:
        path: the file.
        reason: what went wrong, in words.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


def is_dicom_bytes(data: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble (hospital exports often lack a suffix)."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def image_kind(path: Path, head: bytes | None = None) -> str | None:
    """``"pil"``, ``"dicom"`` or ``None`` (not an image this module reads), from the suffix.

    A file without a suffix counts as DICOM when ``head`` (its first bytes) holds the DICOM magic.
    """
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix == "" and head is not None and is_dicom_bytes(head):
        return "dicom"
    return None


def read_image(path: str | Path, value_range: ValueRange | None = None) -> torch.Tensor:
    """Decode one image file into a uint8 ``(C, H, W)`` tensor, ``C`` 1 (grey) or 3 (RGB).

    Args:
        path: a PNG, JPEG or DICOM file (DICOM also without a suffix).
        value_range: ``[low, high]`` mapped to 0..255 for high-bit-depth data: stored values for a
            16-bit PNG, modality values (after rescale slope / intercept) for DICOM, where it replaces
            the file's own window. ``None``: per-image min..max (PNG) or the file's window (DICOM).

    Raises:
        BadImageError: the file is missing, corrupt, truncated or of a kind not supported.

    Example:
        >>> read_image("scan.dcm").shape  # doctest: +SKIP
        torch.Size([1, 512, 512])
    """
    image, _ = read_image_and_digest(path, value_range)
    return image


def read_image_and_digest(path: str | Path, value_range: ValueRange | None = None) -> tuple[torch.Tensor, str]:
    """:func:`read_image`, plus the sha256 of the file's bytes (read once, for the leakage check)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BadImageError(path, f"cannot open the file ({err.strerror or err})") from err
    digest = hashlib.sha256(data).hexdigest()
    return decode_image(data, path, value_range), digest


def decode_image(data: bytes, path: str | Path, value_range: ValueRange | None = None) -> torch.Tensor:
    """Decode the bytes of an image file (``path`` picks the decoder and names the file in errors)."""
    path = Path(path)
    if value_range is not None:
        value_range = _check_range(value_range)
    kind = image_kind(path, data[:132])
    if kind is None:
        raise BadImageError(path, f"unknown image type {path.suffix!r}; supported: {', '.join(sorted(IMAGE_SUFFIXES))}")
    if not data:
        raise BadImageError(path, "the file is empty")
    array = _decode_dicom(data, path, value_range) if kind == "dicom" else _decode_pil(data, path, value_range)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())  # a writable, contiguous copy


# ------------------------------------------------------------------ PNG / JPEG
def _decode_pil(data: bytes, path: Path, value_range: tuple[float, float] | None) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.load()  # decodes now: a truncated file fails here, naming this file
            image = ImageOps.exif_transpose(opened) if path.suffix.lower() in {".jpg", ".jpeg"} else opened.copy()
    except UnidentifiedImageError as err:
        raise BadImageError(path, "not a valid PNG or JPEG file (corrupt, or another format)") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated data, broken chunks or headers
        raise BadImageError(path, f"corrupt or truncated ({err})") from err
    mode = image.mode
    if mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
        if mode in ("1", "LA"):
            image = image.convert("L")
        elif mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    array = np.asarray(image)  # I;16*, I, F: one high-bit-depth channel
    if array.ndim != 2:
        raise BadImageError(path, f"unsupported image mode {mode!r}")
    return to_uint8(array, value_range)


# ----------------------------------------------------------------------- DICOM
def _decode_dicom(data: bytes, path: Path, value_range: tuple[float, float] | None) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as err:
        raise BadImageError(path, f"not a readable DICOM file ({err})") from err
    if "PixelData" not in ds:
        raise BadImageError(path, "the DICOM file holds no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise BadImageError(path, f"multi-frame DICOM ({frames} frames) is not supported; export single frames")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises several types: missing codec, truncated pixel data, bad tags
        raise BadImageError(
            path,
            f"cannot decode the DICOM pixel data ({err}). HINT: compressed transfer syntaxes need a codec "
            "package such as pylibjpeg",
        ) from err
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise BadImageError(path, f"unsupported DICOM photometric interpretation {photometric!r}")
        return pixels.astype(np.uint8) if pixels.dtype == np.uint8 else to_uint8(pixels, value_range)
    try:
        values = apply_modality_lut(pixels, ds)  # rescale slope / intercept (or a modality LUT)
        if value_range is not None:
            display = to_uint8(values, value_range)
        elif "VOILUTSequence" in ds or "WindowCenter" in ds:
            display = to_uint8(apply_voi_lut(values, ds, index=0), _voi_output_range(ds))
        else:
            display = to_uint8(values, None)
    except (ValueError, TypeError, IndexError, KeyError, AttributeError) as err:
        raise BadImageError(path, f"invalid DICOM rescale or window attributes ({err})") from err
    if photometric == "MONOCHROME1":  # low values are white: invert so bone is bright
        display = 255 - display
    return display


def _voi_output_range(ds) -> tuple[float, float]:
    """The values the file's VOI transform can output, which map onto 0..255.

    pydicom's window outputs span the stored bit depth (shifted by the rescale), a VOI LUT its own
    entries; passing every LUT index, or values far outside the window, through the transform finds
    the extremes without re-deriving the standard's rules here.
    """
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds:
        descriptor = ds.VOILUTSequence[0].LUTDescriptor
        entries, first = int(descriptor[0]) or 2**16, int(descriptor[1])
        probe = np.arange(first, first + entries)
    else:  # 50 widths out: the LINEAR window's clipped ends, the SIGMOID's asymptotes (without overflow)
        centre, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (ds.WindowCenter, ds.WindowWidth))
        reach = 50 * abs(width) + 1
        probe = np.array([centre - reach, centre + reach])
    out = apply_voi_lut(probe, ds, index=0)
    return float(out.min()), float(out.max())


# --------------------------------------------------------------------- scaling
def _check_range(value_range: ValueRange) -> tuple[float, float]:
    low, high = (float(v) for v in value_range)
    if not high > low:
        raise ValueError(f"value_range must be [low, high] with high > low, got {list(value_range)}")
    return low, high


def to_uint8(values: np.ndarray, value_range: ValueRange | None = None) -> np.ndarray:
    """Map ``value_range`` (default: the array's own min..max) linearly onto 0..255, clipping outside.

    A constant image (min == max) becomes all zeros rather than dividing by zero.
    """
    values = np.asarray(values, dtype=np.float64)
    if value_range is None:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    else:
        low, high = _check_range(value_range)
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under ``folder`` (recursively, sorted) and the non-hidden files of unknown type."""
    images, unknown = [], []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or not path.is_file():
            continue
        head = None
        if path.suffix == "":
            with path.open("rb") as f:
                head = f.read(132)
        (images if image_kind(path, head) else unknown).append(path)
    return images, unknown
