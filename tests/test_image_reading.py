"""read_image on real pixels written at run time: 8-bit and 16-bit PNG, JPEG, DICOM windows, broken files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_images import BREAST, KERMANY, real, save, truncate, write_dicom

from smallmed.datamodules import BadImageError, read_image
from smallmed.datamodules.images import to_uint8


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    """One real 64 px chest X-ray (uint8)."""
    return real(KERMANY)["train_images"][0]


@pytest.fixture(scope="module")
def ultrasound() -> np.ndarray:
    return real(BREAST)["train_images"][0]


def pixels(path, **kwargs) -> np.ndarray:
    image = read_image(path, **kwargs)
    assert image.dtype == torch.uint8 and image.ndim == 3
    return image.numpy()


def assert_display(out: np.ndarray, expected: np.ndarray) -> None:
    """Equal grey levels, up to a rounding tie (x.5) landing one level apart."""
    diff = np.abs(out.astype(np.int64) - np.asarray(expected, dtype=np.int64))
    assert diff.max() <= 1, diff.max()
    assert (diff == 0).mean() > 0.95


def linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255, written out independently of pydicom."""
    scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255
    return np.clip(np.rint(scaled), 0, 255)


# ----------------------------------------------------------------- PNG / JPEG


def test_8bit_grey_png_is_exact(tmp_path, ultrasound):
    out = pixels(save(tmp_path / "a.png", ultrasound))
    assert out.shape == (1, 28, 28)
    np.testing.assert_array_equal(out[0], ultrasound)


def test_rgb_jpeg_has_three_channels(tmp_path, xray):
    rgb = np.stack([xray, np.flipud(xray), 255 - xray], axis=-1)
    out = pixels(save(tmp_path / "c.jpg", rgb, quality=95))
    assert out.shape == (3, 64, 64)
    assert np.abs(out.transpose(1, 2, 0).astype(int) - rgb).mean() < 6  # lossy, but the same picture


@pytest.mark.parametrize("mode", ["RGBA", "P"])
def test_alpha_and_palette_become_rgb(tmp_path, xray, mode):
    from PIL import Image

    image = Image.fromarray(np.stack([xray] * 3, axis=-1)).convert(mode)
    image.save(tmp_path / "x.png")
    assert pixels(tmp_path / "x.png").shape == (3, 64, 64)


def test_16bit_png_uses_the_full_grey_range_and_keeps_order(tmp_path, xray):
    rng = np.random.default_rng(0)
    values = xray.astype(np.uint16) * 16 + rng.integers(0, 16, xray.shape, dtype=np.uint16)  # a 12-bit detector
    path = save(tmp_path / "x16.png", values)
    out = pixels(path)[0]
    assert out.min() == 0 and out.max() == 255  # per-image window: all 256 levels, not a dark image
    order = np.argsort(values, axis=None, kind="stable")
    assert np.all(np.diff(out.ravel()[order].astype(int)) >= 0)  # brighter stays brighter
    assert_display(out, np.rint((values - values.min()) / (values.max() - values.min()) * 255))
    # a fixed range is used as given (here the full 16 bits: the 12-bit image is nearly black)
    fixed = pixels(path, value_range=(0, 65535))[0]
    assert fixed.max() <= 16
    assert_display(fixed, np.rint(values / 65535 * 255))


def test_constant_16bit_image_is_black(tmp_path):
    out = pixels(save(tmp_path / "flat.png", np.full((8, 8), 1000, np.uint16)))
    assert out.max() == 0


def test_to_uint8_rejects_an_empty_range():
    with pytest.raises(ValueError, match=r"value_range must be \[low, high\] with high > low"):
        to_uint8(np.zeros(4), (5, 5))


# ---------------------------------------------------------------------- DICOM


def modality(xray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12-bit stored values from a real X-ray, and their modality values under slope 0.5, intercept -1024."""
    stored = xray.astype(np.int64) * 16
    return stored, stored * 0.5 - 1024


def test_dicom_rescale_then_window(tmp_path, xray):
    stored, values = modality(xray)
    path = write_dicom(tmp_path / "w.dcm", stored, slope=0.5, intercept=-1024, window=(0, 1024))
    out = pixels(path)
    assert out.shape == (1, 64, 64)
    assert_display(out[0], linear_window(values, 0, 1024))
    assert (out == 0).any() and (out == 255).any()  # the window clips, unlike a min..max stretch


def test_dicom_monochrome1_is_inverted(tmp_path, xray):
    stored, values = modality(xray)
    plain = pixels(write_dicom(tmp_path / "m2.dcm", stored, slope=0.5, intercept=-1024, window=(0, 1024)))
    inverted = pixels(
        write_dicom(tmp_path / "m1.dcm", stored, slope=0.5, intercept=-1024, window=(0, 1024), photometric="MONOCHROME1")
    )
    np.testing.assert_array_equal(inverted, 255 - plain)
    assert_display(inverted[0], 255 - linear_window(values, 0, 1024))


def test_dicom_without_window_stretches_min_to_max(tmp_path, xray):
    stored, values = modality(xray)
    out = pixels(write_dicom(tmp_path / "n.dcm", stored, slope=0.5, intercept=-1024))[0]
    assert_display(out, np.rint((values - values.min()) / (values.max() - values.min()) * 255))


def test_dicom_voi_lut_sequence(tmp_path, xray):
    stored = xray.astype(np.int64) * 16
    lut = np.rint(np.sqrt(np.arange(4096) / 4095) * 65535).astype(np.int64)  # a gamma-like display curve
    out = pixels(write_dicom(tmp_path / "lut.dcm", stored, voi_lut=(0, 16, lut.tolist()), window=(2048, 4096)))[0]
    assert_display(out, np.rint(lut[stored] / 65535 * 255))  # the LUT wins over the window


def test_dicom_value_range_in_modality_units_overrides_the_window(tmp_path, xray):
    stored = xray.astype(np.int64) * 4  # CT-like: HU = stored - 1024, in -1024..-4
    path = write_dicom(tmp_path / "ct.dcm", stored, slope=1, intercept=-1024, window=(40, 400))
    np.testing.assert_array_equal(pixels(path)[0], np.zeros_like(xray))  # soft-tissue window: all air, black
    out = pixels(path, value_range=(-1024, 0))[0]
    assert_display(out, np.rint(stored / 1024 * 255))


def test_signed_dicom(tmp_path, xray):
    stored = xray.astype(np.int64) * 4 - 512
    out = pixels(write_dicom(tmp_path / "s.dcm", stored, signed=True, slope=1, intercept=-512))[0]
    assert_display(out, np.rint((stored - stored.min()) / (stored.max() - stored.min()) * 255))


def test_dicom_without_suffix_is_recognised(tmp_path, xray):
    stored, _ = modality(xray)
    path = write_dicom(tmp_path / "IM0001.dcm", stored)
    bare = path.rename(tmp_path / "IM0001")
    np.testing.assert_array_equal(pixels(bare), pixels(write_dicom(tmp_path / "b.dcm", stored)))


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("cut.png", "truncate", r"corrupt or truncated"),
        ("cut.jpg", "truncate", r"corrupt or truncated"),
        ("junk.png", "junk", r"not a valid PNG or JPEG file"),
        ("junk.dcm", "junk", r"not a readable DICOM file"),
        ("cut.dcm", "truncate", r"DICOM"),
        ("empty.png", "empty", r"the file is empty"),
    ],
)
def test_broken_files_name_the_file(tmp_path, xray, name, damage, message):
    path = tmp_path / name
    if name.endswith(".dcm"):
        write_dicom(path, xray.astype(np.int64) * 16)
    else:
        save(path, xray)
    if damage == "truncate":
        truncate(path, 0.6)
    elif damage == "junk":
        path.write_bytes(b"this is not an image" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(BadImageError, match=rf"cannot read image {path}: .*{message}") as err:
        read_image(path)
    assert err.value.path == path


def test_unknown_type_and_missing_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(BadImageError, match=r"unknown image type '.txt'"):
        read_image(notes)
    with pytest.raises(BadImageError, match=rf"cannot read image {tmp_path / 'absent.png'}: cannot open the file"):
        read_image(tmp_path / "absent.png")


def test_multi_frame_dicom_is_refused(tmp_path, xray):
    import pydicom

    path = write_dicom(tmp_path / "mf.dcm", np.concatenate([xray, xray]).astype(np.int64))
    ds = pydicom.dcmread(path)
    ds.Rows = 64
    ds.NumberOfFrames = 2
    ds.save_as(path)
    with pytest.raises(BadImageError, match=r"multi-frame DICOM \(2 frames\)"):
        read_image(path)


def test_dicom_sigmoid_window_and_several_windows(tmp_path, xray):
    import pydicom

    stored, values = modality(xray)
    path = write_dicom(tmp_path / "sig.dcm", stored, slope=0.5, intercept=-1024)
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = [0, 500], [1024, 100]  # the first window is the default view
    ds.VOILUTFunction = "SIGMOID"
    ds.save_as(path)
    out = pixels(path)[0]
    assert_display(out, np.rint(255 / (1 + np.exp(-4 * values / 1024))))
