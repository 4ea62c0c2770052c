"""Class-activation heatmaps: shapes and range on timm CNN families, the layer choice for small
images, heat that follows the object a model learned, and use inside Lightning's inference mode."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers_head import single_thread

from smallmed.model import SmallMedClassifier
from smallmed.report.gradcam import class_activation_maps, classifier_heatmaps, overlay, target_layer

CNNS = ("test_resnet", "test_efficientnet", "test_convnext", "tf_efficientnet_lite0")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", CNNS)
@pytest.mark.parametrize("method", ["layercam", "gradcam"])
def test_maps_have_the_input_size_and_lie_in_0_1(name, method):
    model = timm.create_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, 48, 40)
    heat = class_activation_maps(model, x, lambda logits: logits[:, 2], method=method)
    assert heat.shape == (2, 48, 40)
    assert heat.dtype == torch.float32
    assert float(heat.min()) >= 0.0 and float(heat.max()) <= 1.0
    for h in heat:  # each map is scaled on its own: its top is 1 unless there is no positive evidence
        assert float(h.max()) in (0.0, 1.0)
    if method == "layercam":  # post-ReLU stage outputs x positive gradients: never all zero here
        assert all(float(h.max() - h.min()) > 0.1 for h in heat)


def test_auto_layer_keeps_maps_of_at_least_7_cells():
    resnet = timm.create_model("test_resnet")  # strides 2, 4, 8, 16, 32 (act1, layer1..layer4)
    assert target_layer(resnet, 224) == "final"  # 7x7: the classic last feature map
    assert target_layer(resnet, 64) == "layer2"  # 8x8, where the last map would be 2x2
    assert target_layer(resnet, 32) == "layer1"
    assert target_layer(resnet, 8) == "act1"  # nothing reaches 7 cells: the finest stage
    assert target_layer(timm.create_model("tf_efficientnet_lite0"), 64) == "blocks.2"


def test_final_layer_is_the_forward_features_map():
    """``final`` takes EfficientNet's conv_head output (1280 channels), beyond the last listed stage."""
    model = timm.create_model("tf_efficientnet_lite0", num_classes=2).eval()
    captured = {}

    def record(module, inputs, output) -> None:
        captured["conv_head"] = output.shape

    model.conv_head.register_forward_hook(record)
    heat = class_activation_maps(model, torch.randn(1, 3, 64, 64), lambda z: z[:, 0], layer="final")
    assert captured["conv_head"][-2:] == (2, 2)  # the map explained: coarse at 64 px, hence "auto"
    assert heat.shape == (1, 64, 64)


def squares(n: int, size: int = 32, side: int = 8, generator: torch.Generator | None = None):
    """Class 1: a bright square at a random place on faint noise; class 0: the noise alone."""
    x = torch.rand(n, 1, size, size, generator=generator) * 0.3
    y = torch.arange(n) % 2
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    corners = torch.randint(0, size - side, (n, 2), generator=generator)
    for i in torch.nonzero(y).reshape(-1).tolist():
        r, c = corners[i].tolist()
        x[i, :, r : r + side, c : c + side] = 1.0
        mask[i, r : r + side, c : c + side] = True
    return x.expand(-1, 3, -1, -1), y, mask


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_heat_is_on_the_object_the_model_learned(name):
    with single_thread():  # one thread, as this test was tuned with; restored for the tests after it
        _heat_is_on_the_object(name)


def _heat_is_on_the_object(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    model = timm.create_model(name, num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(40):
        x, y, _ = squares(32, generator=g)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x, y, mask = squares(32, generator=g)
    x, mask = x[y == 1], mask[y == 1]
    # hotter inside the square than around it, for most images (chance: half); LayerCAM is the sharper
    for method, share in (("layercam", 0.9), ("gradcam", 0.75)):
        heat = class_activation_maps(model, x, lambda logits: logits[:, 1], method=method)
        inside = torch.stack([h[m].mean() for h, m in zip(heat, mask)])
        outside = torch.stack([h[~m].mean() for h, m in zip(heat, mask)])
        assert float((inside > outside).float().mean()) >= share, (method, inside, outside)
        assert float(inside.mean()) > 2 * float(outside.mean()), method


def test_classifier_heatmaps_inside_inference_mode_with_frozen_weights():
    """As in Lightning's test / predict loops: inference mode on, every parameter frozen."""
    model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        heat = classifier_heatmaps(model, images, classes=[1, 0, 1])
    assert heat.shape == (3, 32, 32) and float(heat.max()) == 1.0
    assert model.training  # mode restored


def test_binary_class_0_is_explained_by_the_negative_logit():
    """One logit: Grad-CAM of class 0 is that of ``-logit``, i.e. the complementary evidence."""
    model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False).eval()
    images = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8)
    both = classifier_heatmaps(model, images.repeat(2, 1, 1, 1), classes=[1, 1, 0, 0], method="gradcam")
    pos, neg = both[:2], both[2:]
    x = model.preprocess(images.clone())
    expected_neg = class_activation_maps(model.backbone, x, lambda z: -z[:, 0], method="gradcam")
    torch.testing.assert_close(neg, expected_neg)
    assert not torch.allclose(pos, neg)


def test_vision_transformers_are_refused_with_a_reason():
    model = timm.create_model("test_vit", num_classes=2).eval()
    with pytest.raises(ValueError, match=r"not a \(B, C, h, w\) feature map; class-activation maps need a CNN layer"):
        class_activation_maps(model, torch.randn(1, 3, 64, 64), lambda z: z[:, 0])


def test_unknown_layer_and_method_are_errors():
    model = timm.create_model("test_resnet", num_classes=2).eval()
    with pytest.raises(ValueError, match=r"no module 'layer9' in ResNet"):
        class_activation_maps(model, torch.randn(1, 3, 32, 32), lambda z: z[:, 0], layer="layer9")
    with pytest.raises(ValueError, match=r"unknown CAM method 'cam\+\+'"):
        class_activation_maps(model, torch.randn(1, 3, 32, 32), lambda z: z[:, 0], method="cam++")


def test_overlay_colours_hot_and_cold_places_differently():
    image = torch.full((1, 16, 16), 128, dtype=torch.uint8)
    heat = torch.zeros(16, 16)
    heat[:8] = 1.0
    out = overlay(image, heat)
    assert out.shape == (16, 16, 3) and out.dtype.name == "uint8"
    hot, cold = out[0, 0].astype(int), out[15, 15].astype(int)
    assert hot[0] > hot[2] and cold[2] > cold[0]  # jet: red where hot, blue where cold
    rgb = overlay(torch.zeros(3, 16, 16, dtype=torch.uint8), heat, alpha=0.0)
    assert rgb.max() == 0  # alpha 0: the image itself
    with pytest.raises(ValueError, match=r"heatmap \(8, 8\) and image \(16, 16\) differ in size"):
        overlay(image, torch.zeros(8, 8))
