"""The small-map depthwise weight gradient: oneDNN's gradients, only routed where it pays."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import nn

from smallmed.small_map_depthwise import (
    SmallMapDepthwiseConv,
    SmallMapDepthwiseConv2d,
    SmallMapDepthwiseConv2dSame,
    use_small_map_depthwise,
)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [((2, 2), 5, 1, 2, 1), ((2, 2), 3, 1, 1, 1), ((1, 1), 3, 1, 1, 1), ((2, 1), 3, 2, 1, 1),
     ((2, 2), 3, 1, 2, 2), ((4, 4), 5, 1, 2, 1), ((3, 5), 3, 2, 0, 1)],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_gradients_match_torch_conv2d(size, kernel, stride, padding, dilation, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 6, *size).contiguous(memory_format=fmt).requires_grad_()
    weight = torch.randn(6, 1, kernel, kernel, requires_grad=True)
    geometry = ((stride, stride), (padding, padding), (dilation, dilation))
    ours = SmallMapDepthwiseConv.apply(x, weight, *geometry)
    reference = F.conv2d(x, weight, None, *geometry, 6)
    grad = torch.randn_like(reference)
    ours_grads = torch.autograd.grad(ours, (x, weight), grad)
    reference_grads = torch.autograd.grad(reference, (x, weight), grad)
    assert torch.equal(ours, reference)
    assert torch.equal(ours_grads[0], reference_grads[0])  # oneDNN's input gradient
    torch.testing.assert_close(ours_grads[1], reference_grads[1], atol=1e-5, rtol=1e-5)


def test_gradcheck_in_double_precision():
    x = torch.randn(2, 4, 2, 2, dtype=torch.double, requires_grad=True)
    weight = torch.randn(4, 1, 5, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: SmallMapDepthwiseConv.apply(a, w, (1, 1), (2, 2), (1, 1)), (x, weight))


def test_only_tiny_maps_with_gradients_on_the_cpu_take_the_path():
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    use_small_map_depthwise(conv)
    assert type(conv) is SmallMapDepthwiseConv2d

    def backward_node(x):
        return type(conv(x).grad_fn).__name__

    assert backward_node(torch.randn(2, 8, 2, 2)) == "SmallMapDepthwiseConvBackward"
    assert backward_node(torch.randn(2, 8, 3, 3)) == "ConvolutionBackward0"  # 9 positions: oneDNN's
    with torch.no_grad():
        assert conv(torch.randn(2, 8, 2, 2)).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert backward_node(torch.randn(2, 8, 2, 2)) != "SmallMapDepthwiseConvBackward"
    conv.weight.requires_grad_(False)  # a frozen layer: nothing to gain
    assert conv(torch.randn(2, 8, 2, 2, requires_grad=True)).grad_fn.name() == "ConvolutionBackward0"


def test_switching_a_timm_model_keeps_its_parameters_outputs_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pad_type="same", num_classes=2)
    reference = copy.deepcopy(model)
    switched = use_small_map_depthwise(model)
    kinds = {type(m) for m in model.modules()}
    assert switched == 2 and SmallMapDepthwiseConv2dSame in kinds  # this model's two depthwise layers
    assert not any(type(m) is Conv2dSame and m.groups > 1 for m in model.modules())
    assert list(model.state_dict()) == list(reference.state_dict())
    calls = []
    apply = SmallMapDepthwiseConv.apply
    monkeypatch.setattr(SmallMapDepthwiseConv, "apply", lambda *args: calls.append(args[0].shape) or apply(*args))
    x = torch.randn(2, 3, 32, 32)  # the last depthwise layer runs on a 2x2 map
    model(x).sum().backward()
    assert calls == [torch.Size([2, 192, 3, 3])]  # 2x2, padded to 3x3 for TF-same
    reference(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert pickle.loads(pickle.dumps(model)).blocks[-1][0].conv_dw.__class__ is type(model.blocks[-1][0].conv_dw)
    assert use_small_map_depthwise(model, enabled=False) == switched
    assert {type(m) for m in model.modules()} == {type(m) for m in reference.modules()}


def test_the_model_switches_when_asked_and_not_by_default():
    from smallmed.model import SmallMedClassifier

    on = SmallMedClassifier("test_efficientnet", pretrained=False, small_map_depthwise=True)
    off = SmallMedClassifier("test_efficientnet", pretrained=False)
    assert any(isinstance(m, SmallMapDepthwiseConv2d) for m in on.modules())
    assert not any(isinstance(m, SmallMapDepthwiseConv2d) for m in off.modules())
