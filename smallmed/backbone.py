"""Build a timm backbone by name, with errors that say what to type instead."""

from __future__ import annotations

import difflib

import timm
from torch import nn


class UnknownBackboneError(ValueError):
    """The backbone name is not a timm architecture."""


def check_backbone_name(name: str) -> None:
    """Raise :class:`UnknownBackboneError` with the closest timm names when ``name`` is unknown."""
    if timm.is_model(name):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    if not close:
        close = [m for m in known if name.lower().split("_")[0] in m][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownBackboneError(
        f"unknown backbone {name!r}: timm {timm.__version__} has no such architecture.{hint} "
        "HINT: `python -c \"import timm; print(timm.list_models('*lite*'))\"` lists names"
    )


def create_backbone(name: str, num_outputs: int, in_chans: int, drop_rate: float) -> nn.Module:
    """A randomly initialised timm model with a fresh ``num_outputs`` head (weights load separately)."""
    check_backbone_name(name)
    return timm.create_model(name, pretrained=False, num_classes=num_outputs, in_chans=in_chans, drop_rate=drop_rate)


def normalization_stats(model: nn.Module, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std (on the 0..1 scale) the backbone's pretrained weights expect, for ``in_chans`` inputs.

    A 1-channel model made from 3-channel weights (timm sums the RGB kernels) sees a grey image as
    if it were replicated to RGB, so it gets the average of the RGB mean and std: a real 1-channel
    normalisation rather than none.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean = tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225)))
    if in_chans == len(mean):
        return mean, std
    if in_chans == 1:
        return (sum(mean) / len(mean),), (sum(std) / len(std),)
    if len(mean) == 1:
        return mean * in_chans, std * in_chans
    raise ValueError(f"cannot derive a {in_chans}-channel normalisation from the backbone's {len(mean)}-channel one")
