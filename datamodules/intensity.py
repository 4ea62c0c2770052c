"""An intensity augmentation policy for grey medical images: TrivialAugment's idea, anatomy kept.

TrivialAugment draws one operation per image at a random strength. Its colour, posterise and
solarise operations have no meaning for a grey scan and its large shears bend anatomy; MedAugment
(arXiv 2306.17466) left such operations out and did better on medical sets. Here each training image
gets one of: identity, brightness, contrast, gamma (a detector's response curve), sharpness (a
reconstruction kernel), blur (a softer detector), noise (a low-dose exposure), at a strength drawn
up to ``strength``; the paper's rotation, flip and crop are applied as before. Works on a whole
``(B, C, H, W)`` float batch in 0..1, on its device, so the device-resident path stays one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_image(m: torch.Tensor) -> torch.Tensor:
    return m.view(-1, 1, 1, 1)


def _brightness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x + _per_image(m) * 0.3


def _contrast(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (1 + _per_image(m) * 0.5) + mean


def _gamma(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1).pow(torch.exp(_per_image(m) * 0.5))


def _sharpness(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x + _per_image(m.abs()) * (x - _box_blur(x))


def _blur(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x + _per_image(m.abs()) * (_box_blur(x) - x)


def _noise(x: torch.Tensor, m: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + _per_image(m.abs()) * 0.05 * torch.randn(x.shape, device=x.device, generator=generator)


def _box_blur(x: torch.Tensor) -> torch.Tensor:
    channels = x.shape[1]
    kernel = torch.full((channels, 1, 3, 3), 1 / 9, device=x.device, dtype=x.dtype)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)


OPERATIONS: dict[str, Op] = {
    "identity": lambda x, m: x, "brightness": _brightness, "contrast": _contrast, "gamma": _gamma,
    "sharpness": _sharpness, "blur": _blur, "noise": _noise,
}


def grey_trivial_augment(x: torch.Tensor, strength: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random intensity operation per image of a float ``(B, C, H, W)`` batch in 0..1 (see the module docstring).

    Strengths are drawn uniformly in ``[-strength, strength]`` (sign chooses darker / brighter, lower /
    higher contrast...); the result is clamped back to 0..1.
    """
    batch = x.shape[0]
    kw = {"device": x.device, "generator": generator}
    choice = torch.randint(0, len(OPERATIONS), (batch,), **kw)
    magnitude = (torch.rand(batch, **kw) * 2 - 1) * strength
    out = x
    for k, (name, op) in enumerate(OPERATIONS.items()):  # every op on the whole batch: no value read back to the host
        if name == "identity":
            continue
        changed = _noise(x, magnitude, generator) if name == "noise" else op(x, magnitude)
        out = torch.where(_per_image(choice == k), changed, out)
    return out.clamp(0, 1)


class GreyTrivialAugment(torch.nn.Module):
    """The same policy for one image (the per-image torchvision path): uint8 or float ``(C, H, W)`` in, float out."""

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        self.strength = strength

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float().div(255) if image.dtype == torch.uint8 else image.float()
        return grey_trivial_augment(x.unsqueeze(0), self.strength)[0]
