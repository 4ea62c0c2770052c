"""A faster CPU weight gradient for depthwise convolutions on tiny feature maps.

At 64 px, tf_efficientnet_lite0's last stage works on 2x2 maps: four depthwise convolutions with
1,152 channels and 5x5 or 3x3 kernels. oneDNN's weight gradient for them took 2.4 ms (5x5) and
1.1 ms (3x3) on 2 CPU cores, for at most 1.8 million multiply-adds; in the whole training step the
four took about 16 ms of 105 (``docs/speed.md``). For a map of ``P`` output and ``Q`` input positions
the gradient of the ``T`` kernel taps of channel ``c`` is

    dW[c, t] = sum over (p, q) of S[t, p, q] * G[c, p, q],    G[c] = dY[c] X[c]^T  (a sum over the batch),

with ``S`` the fixed 0/1 map of which input position each tap reads for each output position. That
is one batched matmul per call plus one matmul with ``S``: 0.21 and 0.16 ms for those shapes. On
4x4 maps it already lost to oneDNN (3.7 against 2.0 ms), so only maps of at most
:data:`MAX_POSITIONS` input positions take it. The forward pass and the input gradient stay
oneDNN's, bit for bit; the weight gradient differs by summation order only.

:func:`use_small_map_depthwise` switches a model's depthwise ``nn.Conv2d`` (and timm's
``Conv2dSame``) modules to subclasses that route such calls through :class:`SmallMapDepthwiseConv`;
parameters, ``state_dict`` and every other call (GPU, no gradient, larger maps, autocast) are
unchanged. ``SmallMedClassifier(small_map_depthwise=True)`` turns it on; it is off by default
(see that argument for why).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn
from torch.autograd.function import once_differentiable

from smallmed.class_swaps import swap_classes

MAX_POSITIONS = 4
"""Input maps of at most this many positions (2x2) take the matmul weight gradient."""


@lru_cache(maxsize=64)
def tap_map(height: int, width: int, out_height: int, out_width: int, kernel: tuple[int, int],
            stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """``S`` as a ``(P * Q, T)`` matrix: 1 where tap ``t`` reads input ``q`` for output ``p``."""
    taps = torch.zeros(out_height, out_width, height, width, kernel[0], kernel[1])
    for i in range(out_height):
        for j in range(out_width):
            for a in range(kernel[0]):
                y = i * stride[0] + a * dilation[0] - padding[0]
                for b in range(kernel[1]):
                    x = j * stride[1] + b * dilation[1] - padding[1]
                    if 0 <= y < height and 0 <= x < width:
                        taps[i, j, y, x, a, b] = 1.0
    return taps.reshape(out_height * out_width * height * width, kernel[0] * kernel[1])


class SmallMapDepthwiseConv(torch.autograd.Function):
    """A depthwise ``conv2d`` (no bias) whose weight gradient is two matmuls (see the module doc)."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        channels = weight.shape[0]
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, stride, padding, dilation, False, [0, 0], channels, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            n, _, h, w = x.shape
            oh, ow = grad_out.shape[-2:]
            taps = tap_map(h, w, oh, ow, tuple(weight.shape[-2:]), stride, padding, dilation).to(grad_out)
            g = grad_out.permute(1, 2, 3, 0).reshape(channels, oh * ow, n)  # (C, P, N)
            xs = x.permute(1, 0, 2, 3).reshape(channels, n, h * w)  # (C, N, Q)
            grad_weight = (torch.bmm(g, xs).reshape(channels, -1) @ taps).view(weight.shape).to(weight.dtype)
        return grad_x, grad_weight, None, None, None


def _takes_small_map_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.shape[-2] * x.shape[-1] <= MAX_POSITIONS
        and torch.is_grad_enabled()
        and weight.requires_grad
        and not torch.is_autocast_enabled("cpu")
    )


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` (depthwise, no bias) with the small-map weight gradient."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if bias is None and self.padding_mode == "zeros" and _takes_small_map_path(x, weight):
            return SmallMapDepthwiseConv.apply(x, weight, self.stride, self.padding, self.dilation)
        return super()._conv_forward(x, weight, bias)


class SmallMapDepthwiseConv2dSame(Conv2dSame):
    """timm's TF-"same" ``Conv2dSame`` (depthwise, no bias) with the small-map weight gradient."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None and _takes_small_map_path(x, self.weight):
            x = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation)
            return SmallMapDepthwiseConv.apply(x, self.weight, self.stride, (0, 0), self.dilation)
        return super().forward(x)


SWAPS = {nn.Conv2d: SmallMapDepthwiseConv2d, Conv2dSame: SmallMapDepthwiseConv2dSame}
"""Exact module type -> its small-map subclass."""


def is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1


def use_small_map_depthwise(model: nn.Module, enabled: bool = True) -> int:
    """Switch the depthwise convolutions of ``model`` to (or, ``enabled=False``, back from) the
    small-map subclasses; returns how many were switched. Only exact ``nn.Conv2d`` / ``Conv2dSame``
    modules are switched, so a subclass with a forward of its own is never bypassed."""
    return swap_classes(model, SWAPS, enabled, is_depthwise)
