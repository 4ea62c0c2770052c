"""Evaluate through a copy of the backbone with each BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a fixed per-channel affine map, so after a convolution it folds into the
convolution's weight and bias (torch's ``fuse_conv_bn_weights``): one operation fewer per pair.

:class:`FoldedCopy` shares every tensor with the live model except the folded convolutions' new
weights and biases, which :meth:`FoldedCopy.refresh` recomputes from the live weights and running
statistics (once per eval epoch: about 50 small tensor operations for lite0). The live model is never
changed. Pairs are found, not assumed: one forward pass with hooks pairs a BatchNorm with the
convolution whose output tensor *is* its input, and the folded copy must give the live model's
logits on a probe batch, or it is not used.
"""

from __future__ import annotations

import copy
import itertools

import torch
from timm.layers import BatchNormAct2d, Conv2dSame
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

FOLDABLE_CONVS = (nn.Conv2d, Conv2dSame)  # exact types: a subclass may use its weight differently
FOLDABLE_NORMS = (nn.BatchNorm2d, BatchNormAct2d)


class FoldingMismatch(RuntimeError):
    """The folded copy did not reproduce the model's output (a convolution's output used twice, say)."""


def conv_norm_pairs(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, str]]:
    """``(convolution, norm)`` module names where the norm's input is the convolution's output tensor."""
    made_by: dict[int, tuple[str, torch.Tensor]] = {}  # the tensor is kept so its id is not reused
    pairs: list[tuple[str, str]] = []
    handles = []
    for name, module in model.named_modules():
        if type(module) in FOLDABLE_CONVS:
            handles.append(module.register_forward_hook(lambda m, a, out, name=name: made_by.__setitem__(id(out), (name, out))))
        elif type(module) in FOLDABLE_NORMS and module.running_mean is not None:
            def before_norm(m, args, name=name):
                conv = made_by.get(id(args[0]))
                if conv is not None:
                    pairs.append((conv[0], name))
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return pairs


def _after_norm(norm: nn.Module) -> nn.Module:
    """What is left of a folded norm: nothing, or timm's BatchNormAct2d's dropout and activation."""
    if isinstance(norm, BatchNormAct2d):
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


class FoldedCopy:
    """An eval-only copy of ``model`` with its conv + BatchNorm pairs folded (see the module docstring).

    Args:
        model: the live model, in eval mode.
        probe: an input batch for finding the pairs and checking the folded output.
        rtol: tolerance of that check, relative to the largest logit.

    Raises:
        FoldingMismatch: the folded copy's output differs from the model's on ``probe``.
    """

    def __init__(self, model: nn.Module, probe: torch.Tensor, rtol: float = 1e-3) -> None:
        self.model = model
        self.pairs = conv_norm_pairs(model, probe)
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        self.copy = copy.deepcopy(model, shared)
        for conv_name, norm_name in self.pairs:
            parent, _, attr = norm_name.rpartition(".")
            owner = self.copy.get_submodule(parent) if parent else self.copy
            setattr(owner, attr, _after_norm(owner.get_submodule(attr)))
        self.refresh()
        with torch.no_grad():
            expected, got = model(probe), self.copy(probe)
        scale = expected.abs().max().clamp_min(1e-6)
        if not torch.allclose(got, expected, rtol=0, atol=float(rtol * scale)):
            raise FoldingMismatch(f"folding changed the output by up to {float((got - expected).abs().max()):.3g}")

    @torch.no_grad()
    def refresh(self) -> nn.Module:
        """Recompute the folded weights from the live model's current weights and statistics."""
        for conv_name, norm_name in self.pairs:
            conv, norm = self.model.get_submodule(conv_name), self.model.get_submodule(norm_name)
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
            )
            target = self.copy.get_submodule(conv_name)
            target.weight = nn.Parameter(weight.contiguous(memory_format=_layout(conv.weight)), requires_grad=False)
            target.bias = nn.Parameter(bias, requires_grad=False)
        return self.copy


def _layout(tensor: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if tensor.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
