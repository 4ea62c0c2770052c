"""Optimizer param groups built per layer group, once, when the optimizer is made.

Building the groups up front is what makes per-layer-group LRs safe: every scheduler sees the
scaled LRs from its first step and nothing is rewritten later, so checkpoints, resume and any
scheduler work unchanged. A module calls :func:`layer_param_groups` in ``configure_optimizers``
(smallmed's classifier does); :class:`~smallmed.callbacks.DiscriminativeLR` recognises such groups
by their ``layer_group`` key and leaves them alone.

Weight decay follows timm's rule (``param_groups_weight_decay``): parameters with one dimension or
fewer (biases, norm affines, a learned scale) and the names a timm model lists in
``no_weight_decay()`` get none, since decaying them only shrinks offsets and gains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from smallmed.callbacks.layer_groups import LayerGroups, find_timm_model

NO_DECAY_SUFFIX = "/no_decay"


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Parameter names of ``module`` that take no weight decay: 1-D ones and a timm model's own list."""
    names = {n for n, p in module.named_parameters() if p.ndim <= 1}
    found = find_timm_model(module)
    if found is not None:
        prefix, model = found
        listed = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else set()
        names |= {f"{prefix}.{n}" if prefix else n for n in listed}
    return names


def layer_param_groups(
    module: nn.Module,
    layer_groups: LayerGroups,
    lr: float,
    multipliers: Mapping[str, float] | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """One named param group per layer group, at ``lr * multiplier``, for ``torch.optim`` optimizers.

    With ``weight_decay > 0`` each layer group is split in two: ``<group>`` with decay and
    ``<group>/no_decay`` without (see the module docstring). Every group carries ``layer_group``
    (its layer group's name) and ``lr_multiplier``, so callbacks can tell they were built here.

    Args:
        module: the module whose ``named_parameters()`` the groups name.
        layer_groups: ordered ``{group: [parameter names]}`` (e.g. ``module.layer_groups()``).
        lr: the head's LR (multiplier 1).
        multipliers: LR multiplier per layer group (missing groups: 1).
        weight_decay: decay of the parameters that take it.

    Example:
        >>> groups = layer_param_groups(model, model.layer_groups(), lr=1e-3, multipliers={"early": 1 / 9})  # doctest: +SKIP
        >>> torch.optim.AdamW(groups)  # doctest: +SKIP
    """
    multipliers = dict(multipliers or {})
    unknown = sorted(set(multipliers) - set(layer_groups))
    if unknown:
        raise ValueError(f"LR multipliers given for unknown layer groups {unknown}; the groups are {list(layer_groups)}")
    params = dict(module.named_parameters())
    skip_decay = no_weight_decay_names(module) if weight_decay > 0 else set()
    out: list[dict[str, Any]] = []
    for group, names in layer_groups.items():
        m = float(multipliers.get(group, 1.0))
        decay = [params[n] for n in names if n not in skip_decay]
        no_decay = [params[n] for n in names if n in skip_decay]
        for name, members, wd in ((group, decay, weight_decay), (group + NO_DECAY_SUFFIX, no_decay, 0.0)):
            if members:
                out.append({"params": members, "name": name, "lr": lr * m, "weight_decay": wd,
                            "layer_group": group, "lr_multiplier": m})
    return out
