"""In-place activations that do not copy their input while autograd records them.

timm builds its activations in place (``nn.ReLU6(inplace=True)`` in tf_efficientnet_lite0,
``nn.SiLU`` in the EfficientNets, ``nn.Hardswish`` in MobileNetV3) to save memory. But torch's
autograd formulas for ``hardtanh_`` (ReLU6), ``silu_``, ``hardswish_``, ``hardsigmoid_`` and
``mish_`` need the activation's *input*, so while autograd records, each in-place call first clones
its input and then overwrites the original (for ``hardtanh_`` a regression since torch 1.10,
pytorch/pytorch#95432, still open; the other four were checked here the same way): a full
extra copy of every such activation map in every training step, and no memory saved, since the
clone is kept for the backward pass. Run out of place instead, the same values come out bit for bit
with one pass over memory fewer. In a tf_efficientnet_lite0 training step (64 px, batch 16) the
profiler put lite0's 33 clones at about 9 ms on one CPU thread. Timed, a step went from 194 to
189 ms on one thread and from 139 to 135 ms on two (medians of 20 alternating rounds; the paired
ratios' medians were 0.99 and 1.00): a small gain, within this host's noise. On a launch-bound GPU
it is 33 kernels fewer a step (not measured).

:func:`use_copy_free_activations` switches a model's in-place activations of those kinds to
subclasses that run out of place exactly when autograd records the call (gradients on and the
input requiring grad) and in place otherwise: eval passes, prediction and frozen layers keep the
in-place memory saving. ReLU, ELU and LeakyReLU are left alone: their formulas use the output, so
their in-place versions never copied. ``SmallMedClassifier(copy_free_activations=True)`` (the
default) turns it on for the backbone; parameters and ``state_dict`` are untouched (activations
have none).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from smallmed.class_swaps import swap_classes


def _in_place(module: nn.Module, x: torch.Tensor) -> bool:
    """In place unless autograd records this call (then in place would mean a clone first)."""
    return module.inplace and not (torch.is_grad_enabled() and x.requires_grad)


def _hardtanh(module: nn.Hardtanh, x: torch.Tensor, inplace: bool) -> torch.Tensor:
    return F.hardtanh(x, module.min_val, module.max_val, inplace)


class _CopyFree:
    """The shared forward: the activation's functional form, in place only when nothing records."""

    function: Callable[[nn.Module, torch.Tensor, bool], torch.Tensor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return type(self).function(self, x, _in_place(self, x))


class CopyFreeHardtanh(_CopyFree, nn.Hardtanh):
    function = staticmethod(_hardtanh)


class CopyFreeReLU6(_CopyFree, nn.ReLU6):
    function = staticmethod(_hardtanh)


class CopyFreeSiLU(_CopyFree, nn.SiLU):
    function = staticmethod(lambda module, x, inplace: F.silu(x, inplace))


class CopyFreeHardswish(_CopyFree, nn.Hardswish):
    function = staticmethod(lambda module, x, inplace: F.hardswish(x, inplace))


class CopyFreeHardsigmoid(_CopyFree, nn.Hardsigmoid):
    function = staticmethod(lambda module, x, inplace: F.hardsigmoid(x, inplace))


class CopyFreeMish(_CopyFree, nn.Mish):
    function = staticmethod(lambda module, x, inplace: F.mish(x, inplace))


SWAPS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Hardtanh: CopyFreeHardtanh,
    nn.ReLU6: CopyFreeReLU6,
    nn.SiLU: CopyFreeSiLU,
    nn.Hardswish: CopyFreeHardswish,
    nn.Hardsigmoid: CopyFreeHardsigmoid,
    nn.Mish: CopyFreeMish,
}
"""Exact activation type -> its copy-free subclass: the kinds whose in-place autograd clones."""


def use_copy_free_activations(model: nn.Module, enabled: bool = True) -> int:
    """Switch the in-place activations of ``model`` listed in :data:`SWAPS` to their copy-free
    subclasses (``enabled=False``: back); returns how many were switched. Only exact types are
    switched, so a subclass with a forward of its own is never bypassed, and only modules built
    with ``inplace=True``: an out-of-place one has nothing to save."""
    return swap_classes(model, SWAPS, enabled, lambda module: module.inplace)
