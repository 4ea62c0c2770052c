"""The paper's augmentations (rotation +-10 degrees, horizontal flip, random crop) on uint8 tensors.

Images are stored once, resized to ``resize_to`` (a little larger than the network input, as the
paper crops 234 out of 250), so each epoch only crops, flips and rotates small uint8 tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms import v2


def train_transform(image_size: int, rotation: float = 10.0, hflip: bool = True) -> v2.Transform:
    steps: list[v2.Transform] = []
    if rotation:
        steps.append(v2.RandomRotation(rotation, interpolation=v2.InterpolationMode.BILINEAR))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.RandomCrop(image_size))
    return v2.Compose(steps)


def eval_transform(image_size: int) -> v2.Transform:
    return v2.CenterCrop(image_size)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a ``(N, C, H, W)`` uint8 stack once (antialiased bilinear), in chunks to bound memory."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, len(images), 512):
        chunk = images[start : start + 512].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + 512] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out
