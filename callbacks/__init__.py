"""Reusable fine-tuning callbacks (installed as ``smallmed.callbacks``).

They work on any LightningModule: layer groups come from its ``layer_groups()``, from a timm model
it holds, or from explicit regex patterns (see :mod:`smallmed.callbacks.layer_groups`). None of them
imports smallmed's own model.

    from smallmed.callbacks import GradualUnfreezing, DiscriminativeLR, HeadReparameterization
    trainer = Trainer(callbacks=[HeadReparameterization(), DiscriminativeLR(ratio=1 / 3),
                                 GradualUnfreezing(milestones=[0.1, 0.2])])
"""

from smallmed.callbacks.best_weights import BestWeightsInMemory
from smallmed.callbacks.discriminative_lr import DiscriminativeLR
from smallmed.callbacks.gradual_unfreezing import GradualUnfreezing
from smallmed.callbacks.head_reparameterization import CosineClassifier, HeadReparameterization
from smallmed.callbacks.layer_groups import LayerGroups, resolve_layer_groups, timm_layer_groups

__all__ = [
    "BestWeightsInMemory",
    "CosineClassifier",
    "DiscriminativeLR",
    "GradualUnfreezing",
    "HeadReparameterization",
    "LayerGroups",
    "resolve_layer_groups",
    "timm_layer_groups",
]
