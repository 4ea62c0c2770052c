"""Copy-free activations: out of place while autograd records, in place otherwise, same bits."""

from __future__ import annotations

import copy
import pickle

import pytest
import timm
import torch
from torch import nn
from torch.profiler import profile

from smallmed.copy_free_activations import SWAPS, use_copy_free_activations

KINDS = [nn.Hardtanh, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Mish]


def clones(fn) -> int:
    """How many ``aten::clone`` calls ``fn`` makes."""
    with profile() as prof:
        fn()
    return sum(event.name == "aten::clone" for event in prof.events())


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_torch_clones_in_place_and_the_switched_module_does_not(kind):
    """The reason for the module: if torch stops cloning (pytorch#95432 fixed), the first assert fails."""
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert clones(lambda: kind(inplace=True)(x * 1)) == 1
    assert clones(lambda: SWAPS[kind](inplace=True)(x * 1)) == 0


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_same_values_and_gradients_bit_for_bit(kind):
    torch.manual_seed(0)
    x = (torch.randn(3, 5, 6, 6) * 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(3, 5, 6, 6)
    results = []
    for module in (kind(inplace=True), SWAPS[kind](inplace=True)):
        y = module(x * 1)
        (dx,) = torch.autograd.grad(y, x, grad)
        results.append((y.detach(), dx, y.is_contiguous(memory_format=torch.channels_last)))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])
    assert results[0][2] and results[1][2]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_in_place_exactly_when_autograd_does_not_record(kind):
    module = SWAPS[kind](inplace=True)
    x = torch.randn(2, 3, 4, 4)
    before = x.clone()
    assert module(x) is x and not torch.equal(x, before)  # no gradients asked: in place, as built
    leaf = torch.randn(2, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        y = leaf * 1
        assert module(y) is y  # an eval pass
    y = leaf * 1
    kept = y.detach().clone()
    out = module(y)
    assert out is not y and torch.equal(y.detach(), kept)  # recording: out of place, input untouched
    frozen = torch.randn(2, 3, 4, 4)  # a frozen layer's output under grad mode: nothing is recorded
    assert module(frozen) is frozen


def test_only_in_place_modules_of_exact_kinds_are_switched_and_back():
    class OwnForward(nn.ReLU6):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.ReLU6(inplace=True), nn.ReLU6(), OwnForward(inplace=True), nn.ReLU(inplace=True),
                          nn.SiLU(inplace=True))
    assert use_copy_free_activations(model) == 2
    assert [type(m).__name__ for m in model] == ["CopyFreeReLU6", "ReLU6", "OwnForward", "ReLU", "CopyFreeSiLU"]
    assert type(pickle.loads(pickle.dumps(model[0]))).__name__ == "CopyFreeReLU6"
    assert use_copy_free_activations(model, enabled=False) == 2
    assert [type(m).__name__ for m in model] == ["ReLU6", "ReLU6", "OwnForward", "ReLU", "SiLU"]


@pytest.mark.parametrize("arch", ["test_efficientnet", "tf_efficientnet_lite0"])
def test_training_steps_of_a_timm_model_are_unchanged_bit_for_bit(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=2).to(memory_format=torch.channels_last)
    reference = copy.deepcopy(model)
    assert use_copy_free_activations(model) > 0
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    target = torch.tensor([0, 1, 1, 0])
    for net in (model, reference):
        optimizer = torch.optim.Adam(net.parameters(), 1e-2)
        for _ in range(2):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), target).backward()
            optimizer.step()
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(p, q), name
    model.eval()
    reference.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_the_model_switches_by_default_and_not_when_asked():
    from smallmed.model import SmallMedClassifier

    on = SmallMedClassifier("test_efficientnet", pretrained=False)
    off = SmallMedClassifier("test_efficientnet", pretrained=False, copy_free_activations=False)
    assert any(type(m) is SWAPS[nn.SiLU] for m in on.modules())
    assert not any(type(m) is SWAPS[nn.SiLU] for m in off.modules())
    assert list(on.state_dict()) == list(off.state_dict())
