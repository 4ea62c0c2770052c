"""Fold each BatchNorm into the convolution before it, for evaluation passes.

In eval mode a BatchNorm is a fixed affine map per channel, so after a convolution it can be folded
into the convolution's weight and bias: one operation instead of two, and one tensor pass fewer.
On the 2-core CPU, BatchNorm took 27% of a tf_efficientnet_lite0 eval pass (78 images, 64 px), and a
50-image run validates after each of its 20 epochs (``docs/speed.md`` has the figures).

The model itself is never changed. The convolution and BatchNorm modules are swapped for folded
stand-ins only for the length of one forward pass (:meth:`BatchNormFolding.__call__`) and put back
in a ``finally``, so ``state_dict``, checkpoints, optimizers and other callbacks never see them.
Each call folds afresh (about 300 small tensor operations for lite0, 2-3 ms): no cache key would be
sound, because torch's fused optimizer kernels and BatchNorm's running-statistic updates change
tensors in place without bumping their version counters.

Which pairs fold is found, not assumed: the first call runs the plain forward pass on the batch's
first two images, with hooks of its own and the model's hooks set aside, and pairs a BatchNorm with
a convolution when the BatchNorm's input *is* that convolution's output tensor (post-norm blocks; a
pre-activation DenseNet's norm-before-conv is left alone). The folded pass is then checked against
the plain one on those images, and a model whose output folding changes (a convolution's output
also used elsewhere, say) is evaluated unfolded, with a warning. Only exact module types whose
forward is known are folded: ``nn.Conv2d`` and timm's ``Conv2dSame`` (and their small-map
depthwise subclasses), ``nn.BatchNorm2d`` and timm's ``BatchNormAct2d`` (its dropout and activation
stay). BatchNorms in training mode are left unfolded, and so is any pair with a forward hook on its
convolution or BatchNorm, so that each hook fires on the module it was put on; hooks elsewhere (a
head's dropout, a feature grabber) fire as usual, once per call. A global module hook makes the
whole pass plain.
"""

from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from timm.layers import BatchNormAct2d, Conv2dSame
from timm.layers.conv2d_same import conv2d_same
from torch import nn

from smallmed.small_map_depthwise import SWAPS as _SMALL_MAP_SWAPS

FOLDABLE_CONVS = (nn.Conv2d, Conv2dSame, *_SMALL_MAP_SWAPS.values())
FOLDABLE_NORMS = (nn.BatchNorm2d, BatchNormAct2d)


class _FoldedConv(nn.Module):
    """The convolution ``conv`` with the folded weight and bias: same stride, padding, groups."""

    def __init__(self, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.conv = (conv,)  # a tuple, so the original is not registered as a submodule
        self.weight, self.bias = weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv[0]
        if isinstance(conv, Conv2dSame):
            if conv.dilation != (1, 1):
                return conv2d_same(x, self.weight, self.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
            weight, padding = self._padded_weight(x.shape[-2], x.shape[-1])
            return torch.nn.functional.conv2d(x, weight, self.bias, conv.stride, padding, 1, conv.groups)
        return conv._conv_forward(x, self.weight, self.bias)

    def _padded_weight(self, height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """TF "same" padding without padding the input. timm pads the input by ``(p, p + 1)`` when
        the total is odd, a copy of the whole tensor (lite0's 32 px stride-2 layer, 78 images: 3.2 ms
        for pad and convolution, 0.9 ms this way); a kernel with one zero row (column) in front and a
        symmetric padding of ``p + 1`` reads the same inputs with the same weights: exact."""
        extra, padding = [], []
        for size, k, s in zip((height, width), self.weight.shape[-2:], self.conv[0].stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            extra.append(total % 2)
            padding.append(total - total // 2)
        if not any(extra):
            return self.weight, tuple(padding)
        weight = torch.nn.functional.pad(self.weight, [extra[1], 0, extra[0], 0])
        if self.weight.is_contiguous(memory_format=torch.channels_last):
            weight = weight.contiguous(memory_format=torch.channels_last)
        return weight, tuple(padding)


def _after_norm(norm: nn.Module) -> nn.Module:
    """What is left of ``norm`` once its affine map moved into the convolution."""
    if type(norm) is BatchNormAct2d:
        return nn.Sequential(norm.drop, norm.act)
    return nn.Identity()


@dataclass
class _Pair:
    conv_name: str
    norm_name: str
    conv: nn.Conv2d
    norm: nn.BatchNorm2d
    after_norm: nn.Module

    def foldable_now(self) -> bool:
        """Not a norm in training mode, and no hook on either module (it would not fire)."""
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in (self.conv, self.norm))
        return not hooked and not self.norm.training and self.norm.running_mean is not None

    @torch.no_grad()
    def folded_conv(self) -> _FoldedConv:
        norm, conv = self.norm, self.conv
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -norm.running_mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        weight = conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype)
        return _FoldedConv(conv, weight, shift.to(conv.weight.dtype))


class BatchNormFolding:
    """An eval-mode forward of ``module`` with every BatchNorm folded into its convolution.

    Call it like the module: ``folding(x)`` gives ``module(x)`` up to float rounding. Use it only
    where the module is in eval mode (validation, test, prediction); BatchNorms in training mode are
    never folded.

    Args:
        module: any ``nn.Module``; pairs are found on the first call.
        rtol: how far (relative to the largest output) the folded output of the first batch may be
            from the plain one before folding is turned off for this module.

    Example:
        >>> import timm
        >>> net = timm.create_model("test_efficientnet", num_classes=2).eval()
        >>> folding = BatchNormFolding(net)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(folding(x), net(x), atol=1e-5)
        True
    """

    def __init__(self, module: nn.Module, rtol: float = 1e-4) -> None:
        self.module = module
        self.rtol = rtol
        self.pairs: list[_Pair] | None = None  # None until the first call finds them
        self.enabled = True

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return self.module(x)  # a hook on every module: nothing may be swapped out from under it
        if self.pairs is None:
            self._find_pairs(x[:2])
        if not self.enabled:
            return self.module(x)
        return self._folded_forward(x)

    # ----------------------------------------------------------------- folding
    def _folded_forward(self, x: torch.Tensor) -> torch.Tensor:
        if not all(self._in_place(p.conv_name, p.conv) and self._in_place(p.norm_name, p.norm) for p in self.pairs):
            self._find_pairs(x[:2])  # a module was replaced since: find the pairs again
            if not self.enabled:
                return self.module(x)
        swapped: list[tuple[nn.Module, str, nn.Module]] = []
        try:
            for pair in self.pairs:
                if pair.foldable_now():
                    swapped.append(self._swap(pair.conv_name, pair.folded_conv()))
                    swapped.append(self._swap(pair.norm_name, pair.after_norm))
            return self.module(x)
        finally:
            for parent, name, original in reversed(swapped):
                setattr(parent, name, original)

    def _in_place(self, name: str, module: nn.Module) -> bool:
        try:
            return self.module.get_submodule(name) is module
        except AttributeError:
            return False

    def _swap(self, name: str, standin: nn.Module) -> tuple[nn.Module, str, nn.Module]:
        parent_name, _, attr = name.rpartition(".")
        parent = self.module.get_submodule(parent_name)
        original = getattr(parent, attr)
        setattr(parent, attr, standin)
        return parent, attr, original

    # --------------------------------------------------------- finding pairs
    def _find_pairs(self, probe: torch.Tensor) -> None:
        """Run the plain forward on ``probe`` (the batch's first images) with hooks, pair each
        BatchNorm fed directly by a convolution, and keep the pairs only if the folded forward gives
        the same output. The model's own hooks are set aside meanwhile, so they fire only on the
        real batch, once."""
        names = {id(m): n for n, m in self.module.named_modules()}
        conv_outputs: dict[int, tuple[weakref.ref, nn.Module]] = {}
        found: list[_Pair] = []

        def after_conv(conv, _inputs, output):
            conv_outputs[id(output)] = (weakref.ref(output), conv)

        def before_norm(norm, inputs):
            entry = conv_outputs.get(id(inputs[0]))
            if entry is not None and entry[0]() is inputs[0]:
                conv = entry[1]
                if conv.out_channels == norm.num_features and names.get(id(conv)) and names.get(id(norm)):
                    found.append(_Pair(names[id(conv)], names[id(norm)], conv, norm, _after_norm(norm)))

        # The check is about the graph, not precision: no autocast, and a tolerance that follows
        # the dtype of the model's own weights (bf16-true models round at 8 bits).
        with _hooks_set_aside(self.module), torch.autocast(probe.device.type, enabled=False):
            handles = []
            for module in self.module.modules():
                if type(module) in FOLDABLE_CONVS:
                    handles.append(module.register_forward_hook(after_conv))
                elif type(module) in FOLDABLE_NORMS:
                    handles.append(module.register_forward_pre_hook(before_norm))
            try:
                plain = self.module(probe)
            finally:
                for handle in handles:
                    handle.remove()
            used = [id(p.conv) for p in found] + [id(p.norm) for p in found]
            self.pairs = [p for p in found if used.count(id(p.conv)) == 1 and used.count(id(p.norm)) == 1]
            if not self.pairs:
                self.enabled = False
                return
            folded = self._folded_forward(probe)
        if not _close(plain, folded, self.rtol):
            warnings.warn(
                f"BatchNorm folding changed the output of {type(self.module).__name__}; it is evaluated unfolded",
                stacklevel=3,
            )
            self.enabled = False


@contextmanager
def _hooks_set_aside(model: nn.Module):
    """Every module's forward hooks removed for the block, and put back after it."""
    saved = [(m, m._forward_hooks, m._forward_pre_hooks) for m in model.modules()]
    try:
        for m, _, _ in saved:
            m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
        yield
    finally:
        for m, hooks, pre_hooks in saved:
            m._forward_hooks, m._forward_pre_hooks = hooks, pre_hooks


def _close(a, b, rtol: float) -> bool:
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape:
            return False
        if a.is_floating_point():
            rtol = max(rtol, 16 * torch.finfo(a.dtype).eps)
        scale = a.detach().abs().max().clamp_min(1.0) if a.numel() else 1.0
        return bool(((a.float() - b.float()).abs() <= rtol * scale).all())
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_close(u, v, rtol) for u, v in zip(a, b))
    return a == b
