"""BatchNorm folding for eval passes: same output, model untouched, pairs found and checked."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from smallmed.batchnorm_folding import BatchNormFolding


def trained_stats(model: nn.Module, size: int = 32, in_chans: int = 3) -> nn.Module:
    """Running statistics and affine weights away from their initial 0/1, so folding has work to do."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(3):
            model(torch.randn(8, in_chans, size, size) * 2 + 0.5)
    return model.eval()


def ready(name: str) -> tuple[nn.Module, BatchNormFolding, torch.Tensor]:
    """A timm test model with trained statistics, its folding past the first call, and an input."""
    model = trained_stats(timm.create_model(name, num_classes=2))
    folding = BatchNormFolding(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        folding(x)
    assert folding.pairs
    return model, folding, x


def snapshot(model: nn.Module) -> tuple[list, dict]:
    return [(n, type(m)) for n, m in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "name, kwargs",
    [("test_efficientnet", {}), ("test_efficientnet", {"pad_type": "same"}), ("test_resnet", {})],
    ids=["efficientnet", "efficientnet-tf-same", "resnet"],
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_folded_forward_gives_the_plain_output_and_leaves_the_model_as_it_was(name, kwargs, channels_last):
    model = trained_stats(timm.create_model(name, num_classes=3, **kwargs))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    before_modules, before_state = snapshot(model)
    folding = BatchNormFolding(model)
    x = torch.randn(5, 3, 37, 30).contiguous(memory_format=fmt)  # odd and even sizes: both TF-same paddings
    with torch.no_grad():
        plain = model(x)
        first, folded = folding(x), folding(x)
    assert folding.enabled and len(folding.pairs) > 3
    torch.testing.assert_close(folded, plain, atol=1e-5, rtol=1e-4)
    assert torch.equal(first, folded)  # the call that found the pairs already returns the folded output
    after_modules, after_state = snapshot(model)
    assert after_modules == before_modules
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], before_state[k]) for k in before_state)


def test_tf_same_padding_path_is_exact_for_each_padding_parity():
    model = trained_stats(timm.create_model("test_efficientnet", pad_type="same", num_classes=2))
    folding = BatchNormFolding(model)
    for size in (32, 33, 34, 35):
        x = torch.randn(2, 3, size, size + 1)
        with torch.no_grad():
            torch.testing.assert_close(folding(x), model(x), atol=1e-5, rtol=1e-4)


def test_each_call_folds_the_current_weights_and_statistics():
    """Fused optimizer steps and BatchNorm's running-stat updates change tensors in place without
    bumping their version counters; the folded pass must still see the new values."""
    model = trained_stats(timm.create_model("test_efficientnet", num_classes=2))
    folding = BatchNormFolding(model)
    x = torch.randn(4, 3, 32, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    for _ in range(2):
        with torch.no_grad():
            torch.testing.assert_close(folding(x), model(x), atol=1e-5, rtol=1e-4)
        model.train()
        model(torch.randn(4, 3, 32, 32) * 3).sum().backward()  # new running statistics
        optimizer.step()  # new weights, in one fused kernel
        model.eval()
    with torch.no_grad():
        model.load_state_dict(trained_stats(timm.create_model("test_efficientnet", num_classes=2)).state_dict())
        torch.testing.assert_close(folding(x), model(x), atol=1e-5, rtol=1e-4)


def test_only_a_norm_fed_directly_by_a_convolution_is_folded():
    pre_norm = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3))  # DenseNet order: norm first
    post_norm = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))  # an activation in between
    for model in (pre_norm, post_norm):
        trained_stats(model, in_chans=3)
        folding = BatchNormFolding(model)
        x = torch.randn(2, 3, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(folding(x), model(x))
        assert folding.pairs == [] and not folding.enabled


class ConvUsedTwice(nn.Module):
    """A convolution whose output feeds the norm and a skip connection: folding would change the sum."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_a_model_that_folding_would_change_is_evaluated_unfolded_with_a_warning():
    model = trained_stats(ConvUsedTwice())
    folding = BatchNormFolding(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), pytest.warns(UserWarning, match="BatchNorm folding changed the output of ConvUsedTwice"):
        first = folding(x)
    assert not folding.enabled
    with torch.no_grad():
        torch.testing.assert_close(first, model(x))
        torch.testing.assert_close(folding(x), model(x))


def test_hooks_fire_once_per_call_and_a_hooked_pair_stays_unfolded():
    model = trained_stats(timm.create_model("test_resnet", num_classes=2))
    reference = copy.deepcopy(model)
    folding = BatchNormFolding(model)
    x = torch.randn(4, 3, 32, 32)
    head_inputs, norm_outputs = [], []
    model.fc.register_forward_pre_hook(lambda m, args: head_inputs.append(args[0].shape))  # e.g. a head's dropout
    with torch.no_grad():
        first = folding(x)  # finds the pairs on a probe, with the model's hooks set aside
        assert folding.enabled and folding.pairs and head_inputs == [torch.Size([4, model.fc.in_features])]
        norm = model.layer1[0].bn1
        norm.register_forward_hook(lambda m, i, o: norm_outputs.append(o.clone()))
        second = folding(x)
        assert len(head_inputs) == 2 and len(norm_outputs) == 1  # the hooked norm ran as itself
        assert type(model.layer1[0].bn1) is nn.BatchNorm2d
        plain = reference(x)
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(second, plain, atol=1e-5, rtol=1e-4)
    assert not torch.equal(first, plain)  # folded, not the plain path


def test_a_global_hook_makes_the_model_run_unfolded():
    model, folding, x = ready("test_resnet")
    calls = []
    handle = nn.modules.module.register_module_forward_hook(lambda m, i, o: calls.append(type(m)))
    try:
        with torch.no_grad():
            out = folding(x)
    finally:
        handle.remove()
    assert nn.BatchNorm2d in calls
    with torch.no_grad():
        assert torch.equal(out, model(x))


def test_norms_in_training_mode_are_not_folded():
    model, folding, x = ready("test_resnet")
    with torch.no_grad():
        model.layer1[0].bn2.train()
        out = folding(x)
        reference = model(x)  # that norm uses the batch's statistics, in both
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-4)


def test_modules_are_put_back_when_the_forward_fails():
    model, folding, _ = ready("test_efficientnet")
    before, _ = snapshot(model)
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            folding(torch.randn(2, 5, 32, 32))  # wrong channel count fails inside the stem
    assert snapshot(model)[0] == before


def test_a_replaced_module_makes_it_find_the_pairs_again():
    model, folding, x = ready("test_efficientnet")
    with torch.no_grad():
        new_stem = nn.Conv2d(3, model.conv_stem.out_channels, 3, stride=2, padding=1, bias=False)
        model.conv_stem = new_stem
        torch.testing.assert_close(folding(x), model(x), atol=1e-5, rtol=1e-4)
    assert any(pair.conv is new_stem for pair in folding.pairs)


@pytest.mark.parametrize("mode", ["bf16-autocast", "bf16-weights"])
def test_low_precision_runs_fold_without_a_false_alarm(mode, recwarn):
    model = trained_stats(timm.create_model("test_efficientnet", num_classes=2))
    x = torch.randn(4, 3, 32, 32)
    if mode == "bf16-weights":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    reference = copy.deepcopy(model)
    folding = BatchNormFolding(model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16-autocast"):
        folded, plain = folding(x), reference(x)
    assert folding.enabled and not [w for w in recwarn if "BatchNorm folding" in str(w.message)]
    torch.testing.assert_close(folded.float(), plain.float(), atol=0.1, rtol=0.05)
