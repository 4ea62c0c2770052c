"""Reusable fine-tuning callbacks (installed as ``smallmed.callbacks``).

They work on any LightningModule: layer groups come from its ``layer_groups()``, from a timm model
it holds, or from explicit regex patterns (see :mod:`smallmed.callbacks.layer_groups`). None of them
imports smallmed's own model.

    from smallmed.callbacks import GradualUnfreezing, DiscriminativeLR, HeadReparameterization
    trainer = Trainer(callbacks=[HeadReparameterization(), DiscriminativeLR(), GradualUnfreezing()])

With no arguments they are the paper's recipe: a re-initialised head with the class prior as its
bias, LRs x (1/9, 1/3, 1) over three layer groups, the late and early body unfrozen at 10% and 20%
of the training steps.
"""

from smallmed.callbacks.best_weights import BestWeightsInMemory
from smallmed.callbacks.discriminative_lr import DiscriminativeLR, lr_multipliers
from smallmed.callbacks.gradual_unfreezing import GradualUnfreezing, first_unfreezing_step
from smallmed.callbacks.head_reparameterization import CosineClassifier, HeadReparameterization
from smallmed.callbacks.layer_groups import LayerGroups, resolve_layer_groups, timm_layer_groups
from smallmed.callbacks.param_groups import layer_param_groups
from smallmed.callbacks.random_states import RandomStates
from smallmed.callbacks.weight_averaging import UniformWeightAveraging
from smallmed.callbacks.wise_ft import WiSEFT

__all__ = [
    "BestWeightsInMemory",
    "CosineClassifier",
    "DiscriminativeLR",
    "GradualUnfreezing",
    "HeadReparameterization",
    "LayerGroups",
    "RandomStates",
    "UniformWeightAveraging",
    "WiSEFT",
    "first_unfreezing_step",
    "layer_param_groups",
    "lr_multipliers",
    "resolve_layer_groups",
    "timm_layer_groups",
]
