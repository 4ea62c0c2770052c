"""Whole-batch augmentation on the training device, for data held there once ("device-resident").

With 50 to 2,000 images a step's cost is overhead: a DataLoader that crops, flips and rotates one
image at a time on the host and copies each batch to the GPU keeps a fast GPU waiting. When the
data module is device-resident, each split is copied to the device once (uint8, a few MB), the
loaders yield only indices, and :func:`augment_batch` draws the paper's augmentations for the whole
batch on the device as **one** affine resampling: rotation, horizontal flip and random crop composed
into one ``2 x 3`` matrix per image, then a single ``grid_sample``. Nothing in it reads a value back
to the host, so the training step never waits for the GPU to drain.

The composed transform matches the per-image path (:func:`smallmed.datamodules.transforms.train_transform`:
rotate about the centre with zero fill, flip, crop at an integer offset); with no rotation and no
flip it samples exactly the stored pixels of the crop.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class IndexDataset(Dataset):
    """Items are ``(index, label)``: the images stay on the device and are gathered by index there."""

    def __init__(self, labels) -> None:
        self.labels = torch.as_tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return index, self.labels[index]


def centre_crop_offset(stored: int, size: int) -> int:
    """Top / left offset of a centred crop, rounded as torchvision's ``center_crop`` rounds it."""
    return int(round((stored - size) / 2.0))


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Centre crop of a ``(N, C, R, R)`` stack (the eval view), as one slice."""
    top = centre_crop_offset(images.shape[-2], size)
    left = centre_crop_offset(images.shape[-1], size)
    return images[..., top : top + size, left : left + size]


def augmentation_matrices(
    batch: int, stored: int, size: int, rotation: float, hflip: bool, device: torch.device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random ``(B, 2, 3)`` matrices for :func:`affine_matrices`: integer crop offsets, angles, flips."""
    kw = {"device": device, "generator": generator}
    offsets = torch.randint(0, stored - size + 1, (batch, 2), **kw)
    angles = (torch.rand(batch, **kw) * 2 - 1) * rotation if rotation else torch.zeros(batch, device=device)
    flips = torch.rand(batch, **kw) < 0.5 if hflip else torch.zeros(batch, dtype=torch.bool, device=device)
    return affine_matrices(offsets, angles, flips, stored, size)


def affine_matrices(offsets: torch.Tensor, angles: torch.Tensor, flips: torch.Tensor, stored: int, size: int) -> torch.Tensor:
    """``(B, 2, 3)`` matrices for ``affine_grid``: output crop coordinates -> stored image coordinates.

    The forward transform is rotate by ``angles`` (degrees, about the centre, as ``v2.functional.rotate``),
    then flip where ``flips``, then crop ``size`` pixels at integer ``offsets`` ``(top, left)``. In the
    normalised coordinates of ``align_corners=False`` the crop is ``q = (size / stored) * v + c``
    (``c`` the crop centre); undoing the flip negates ``q_x``; undoing the rotation rotates back
    about the image centre, the origin.
    """
    scale = size / stored
    centre = (2 * offsets.float() + size) / stored - 1
    cx, cy = centre[:, 1], centre[:, 0]
    flip = 1 - 2 * flips.float()
    radians = torch.deg2rad(angles.float())
    cos, sin = torch.cos(radians), torch.sin(radians)
    # Image y points down, so a counter-clockwise rotation on screen maps q to R(-a) q in (x, y);
    # its inverse is R(a): u = [[cos, -sin], [sin, cos]] @ diag(flip, 1) @ (scale * v + c).
    row0 = torch.stack([cos * flip * scale, -sin * scale, cos * flip * cx - sin * cy], dim=1)
    row1 = torch.stack([sin * flip * scale, cos * scale, sin * flip * cx + cos * cy], dim=1)
    return torch.stack([row0, row1], dim=1)


def augment_batch(
    images: torch.Tensor, size: int, rotation: float = 10.0, hflip: bool = True, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random rotation (+-``rotation`` degrees), flip and ``size`` crop of a uint8 ``(B, C, R, R)`` batch.

    Returns float images in 0..1 (the model's ``preprocess`` takes them as they are), resampled
    bilinearly with zero fill outside the image, like ``v2.RandomRotation``.
    """
    batch, channels, stored, _ = images.shape
    theta = augmentation_matrices(batch, stored, size, rotation, hflip, images.device, generator)
    grid = F.affine_grid(theta, [batch, channels, size, size], align_corners=False)
    x = images.float().div_(255)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
