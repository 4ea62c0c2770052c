"""Class-activation heatmaps (Grad-CAM, LayerCAM) for any timm CNN, by forward hooks, and overlays.

Why hand-written rather than the ``grad-cam`` package: that package pulls in OpenCV and ``ttach``
for what is, for timm CNNs, a forward hook and one ``torch.autograd.grad`` call; and its layer choice
is left to the caller, while small medical images need a choice made for them (below).

**Which layer.** Grad-CAM is usually taken at the last feature map, which for a 224 px input is 7x7.
smallmed trains on 28 to 64 px images, where that map is 1x1 or 2x2: one colour over the whole image,
nothing to look at. ``layer="auto"`` therefore takes the deepest stage (from timm's ``feature_info``)
whose map is still at least ``min_size`` pixels across: the last feature map at 224 px, the stride-8
stage at 64 px. ``layer="final"`` forces the output of ``forward_features`` (EfficientNet's
``conv_head`` included); any module name (``"layer3"``, ``"blocks.4"``, ``"stages.2"``) picks that
module's output.

**Which method.** ``layercam`` (Jiang et al. 2021, the default) weighs every position by its own
positive gradient; it was made for the shallower layers that small images need, where Grad-CAM's one
weight per channel often sums to nothing but negative evidence (an all-zero map after the ReLU) and
loses the detail. At the last layer of a large input the two agree closely. ``gradcam`` (Selvaraju et
al. 2017) weighs each channel by its mean gradient. Both are ReLU'd, upsampled bilinearly to the
input size and scaled to ``[0, 1]`` per image (an all-zero map stays zero: no positive evidence).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CamMethod = Literal["gradcam", "layercam"]
CAM_METHODS = ("gradcam", "layercam")


def target_layer(model: nn.Module, input_size: int, min_size: int = 7) -> str:
    """The module name ``layer="auto"`` picks: the deepest stage whose map is ``>= min_size`` across.

    Args:
        model: a timm model (its ``feature_info`` lists the stages and their strides).
        input_size: input height / width in pixels.
        min_size: smallest useful map size in cells.

    Returns:
        ``"final"`` (the output of ``forward_features``) when the last stage is large enough or the
        model lists no stages; else the module name of the chosen stage.

    Example:
        >>> target_layer(timm.create_model("test_resnet"), 64)  # doctest: +SKIP
        'layer2'
    """
    info = [f for f in getattr(model, "feature_info", None) or [] if isinstance(f, dict) and "module" in f]
    if not info or input_size / info[-1]["reduction"] >= min_size:
        return "final"
    for entry in reversed(info):
        if input_size / entry["reduction"] >= min_size:
            return entry["module"]
    return info[0]["module"]


class NoFeatureMapError(ValueError):
    """The chosen layer gives no ``(B, C, h, w)`` feature map (a vision transformer's tokens, say)."""


def class_activation_maps(
    model: nn.Module,
    inputs: torch.Tensor,
    score: Callable[[torch.Tensor], torch.Tensor],
    layer: str = "auto",
    method: CamMethod = "layercam",
    min_size: int = 7,
) -> torch.Tensor:
    """Heatmaps ``(B, H, W)`` in ``[0, 1]`` of ``score(logits)`` (one value per image) over ``inputs``.

    Args:
        model: a timm CNN (``forward_features`` / ``forward_head``); its mode is left as it is.
        inputs: the normalised network input ``(B, C, H, W)``.
        score: maps the logits ``(B, K)`` to the ``(B,)`` scores to explain, e.g. one class's logit.
        layer: ``auto``, ``final`` or a module name (see the module docstring).
        method: ``gradcam`` or ``layercam``.
        min_size: for ``auto``: smallest map size in cells.

    Raises:
        ValueError: an unknown method or layer.
        NoFeatureMapError: the layer's output is not a ``(B, C, h, w)`` map (a vision transformer's tokens).

    Example:
        >>> m = timm.create_model("test_resnet", num_classes=2).eval()  # doctest: +SKIP
        >>> class_activation_maps(m, torch.randn(2, 3, 64, 64), lambda z: z[:, 1]).shape  # doctest: +SKIP
        torch.Size([2, 64, 64])
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    name = target_layer(model, inputs.shape[-1], min_size) if layer == "auto" else layer
    with torch.inference_mode(False), torch.enable_grad():
        # A fresh leaf that needs grad: the graph exists even when every parameter is frozen, and
        # inference tensors from a predict / test loop are copied out of inference mode.
        x = inputs.detach().clone().requires_grad_(True)
        if name == "final":
            activation = model.forward_features(x)
            logits = model.forward_head(activation)
        else:
            modules = dict(model.named_modules())
            if name not in modules:
                raise ValueError(f"no module {name!r} in {type(model).__name__}; e.g. {', '.join(list(modules)[1:6])}")
            captured: list[torch.Tensor] = []
            handle = modules[name].register_forward_hook(lambda _m, _i, out: captured.append(out))
            try:
                logits = model(x)
            finally:
                handle.remove()
            activation = captured[-1]
        if not isinstance(activation, torch.Tensor) or activation.ndim != 4:
            shape = tuple(activation.shape) if isinstance(activation, torch.Tensor) else type(activation).__name__
            raise NoFeatureMapError(
                f"layer {name!r} of {type(model).__name__} gives {shape}, not a (B, C, h, w) feature map; "
                "class-activation maps need a CNN layer"
            )
        scores = score(logits)
        (grads,) = torch.autograd.grad(scores.sum(), activation)
    activation, grads = activation.detach(), grads.detach()
    if method == "gradcam":
        cam = (grads.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True)
    else:
        cam = (grads.clamp(min=0) * activation).sum(1, keepdim=True)
    cam = F.interpolate(cam.relu().float(), size=inputs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    low = cam.amin(dim=(1, 2), keepdim=True)
    span = cam.amax(dim=(1, 2), keepdim=True) - low
    return torch.where(span > 0, (cam - low) / span.clamp(min=1e-12), torch.zeros_like(cam))


def classifier_heatmaps(
    classifier: nn.Module,
    images: torch.Tensor,
    classes: Sequence[int] | torch.Tensor,
    layer: str = "auto",
    method: CamMethod = "layercam",
) -> torch.Tensor:
    """Heatmaps ``(B, H, W)`` of a :class:`~smallmed.model.SmallMedClassifier` for one class per image.

    Takes the images as the classifier does (uint8 or 0..1 float), so callers hand over what the data
    module yields. For ``binary`` (one logit) class 1 is explained by the logit and class 0 by its
    negative; otherwise the class's own logit. The classifier is put in eval mode meanwhile.

    Example:
        >>> heat = classifier_heatmaps(model, images_uint8, classes=[1, 0])  # doctest: +SKIP
    """
    # Plain ints: a tensor made in a test / predict loop is an inference tensor, which autograd refuses.
    class_list = [int(c) for c in torch.as_tensor(classes).reshape(-1).tolist()]
    was_training = classifier.training
    classifier.eval()
    try:
        inputs = classifier.preprocess(images.detach().clone())
        binary = getattr(classifier, "task", None) == "binary"

        def score(logits: torch.Tensor) -> torch.Tensor:
            index = torch.tensor(class_list, device=logits.device)
            if binary:
                return logits[:, 0] * (index.to(logits.dtype) * 2 - 1)
            return logits.gather(1, index[:, None])[:, 0]

        return class_activation_maps(classifier.backbone, inputs, score, layer=layer, method=method)
    finally:
        classifier.train(was_training)


def overlay(image: torch.Tensor | np.ndarray, heat: torch.Tensor | np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image in grey (or its colours) under the heatmap in matplotlib's ``jet``: RGB uint8 ``(H, W, 3)``.

    Args:
        image: uint8 ``(C, H, W)`` with 1 or 3 channels.
        heat: ``(H, W)`` in ``[0, 1]``, same size as the image.
        alpha: heatmap opacity.

    Example:
        >>> overlay(torch.zeros(1, 8, 8, dtype=torch.uint8), torch.ones(8, 8)).shape
        (8, 8, 3)
    """
    from matplotlib import colormaps

    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if img.shape[0] == 1:
        img = np.repeat(img, 3, axis=0)
    img = img.transpose(1, 2, 0) / 255.0
    h = np.asarray(heat.detach().cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32)
    if h.shape != img.shape[:2]:
        raise ValueError(f"heatmap {h.shape} and image {img.shape[:2]} differ in size")
    colour = colormaps["jet"](np.clip(h, 0, 1))[..., :3]
    mixed = (1 - alpha) * img + alpha * colour
    return np.clip(np.rint(mixed * 255), 0, 255).astype(np.uint8)
