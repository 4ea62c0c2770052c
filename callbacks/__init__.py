"""Reusable fine-tuning callbacks (installed as ``smallmed.callbacks``).

They work on any LightningModule: layer groups come from its ``layer_groups()``, from a timm model
it holds, or from explicit regex patterns (see :mod:`smallmed.callbacks.layer_groups`).
"""

from smallmed.callbacks.layer_groups import LayerGroups, resolve_layer_groups, timm_layer_groups

__all__ = ["LayerGroups", "resolve_layer_groups", "timm_layer_groups"]
