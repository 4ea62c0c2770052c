"""Per-layer-group learning rates that hold at every step of any scheduler.

The paper trains the early body at lr/9, the late body at lr/3 and the head at lr; fastai spreads
``slice(lo, hi)`` geometrically; timm scales each stage by ``decay ** depth``. Setting the LRs once
does not survive a scheduler, which rewrites every group's LR from its own *base* values each step.
So this callback scales what schedulers read (``base_lrs``, OneCycleLR's ``initial_lr``/``max_lr``/
``min_lr``, ReduceLROnPlateau's ``min_lrs``, ...), and the ratios hold at every step.

When the optimizer has one param group for the whole model (``AdamW(self.parameters())``), the group
is split into one named group per layer group *once, at fit start, before any step or checkpoint
restore*: the same split happens on resume, so checkpoints load, and groups are never added in the
middle of training (which breaks schedulers and resume in other tools).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.optim import Optimizer
from typing_extensions import override

from smallmed.callbacks.layer_groups import GroupPatterns, LayerGroups, group_parameters_by_id, resolve_layer_groups


# Per-group LR values schedulers keep inside each param group, and per-group lists they keep on themselves.
GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
SCHEDULER_LR_LISTS = ("base_lrs", "_last_lr", "min_lrs", "max_lrs", "base_values")
SCHEDULER_PER_GROUP_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")


def ratio_multipliers(num_groups: int, ratio: float) -> list[float]:
    """``ratio ** depth`` from the head: ``[r**(K-1), ..., r, 1]``; the paper's 1/3 gives ``[1/9, 1/3, 1]``.

    This is also timm's layer decay (``decay ** (num_layers - layer_id)``) over the same groups.
    """
    return [ratio ** (num_groups - 1 - i) for i in range(num_groups)]


def lr_mult_multipliers(num_groups: int, lr_mult: float) -> list[float]:
    """fastai's ``slice(hi / lr_mult, hi)``: geometric from ``1 / lr_mult`` (first group) to 1 (head)."""
    if num_groups == 1:
        return [1.0]
    return [math.exp(-math.log(lr_mult) * (num_groups - 1 - i) / (num_groups - 1)) for i in range(num_groups)]


class DiscriminativeLR(Callback):
    """Scale each layer group's learning rate by a fixed multiplier, under any scheduler.

    Exactly one of ``ratio``, ``lr_mult`` or ``multipliers`` sets the multipliers; the head keeps the
    optimizer's LR (multiplier 1), earlier groups get less.

    Args:
        ratio: LR ratio between neighbouring groups (the paper: 1/3). Also timm's layer decay when the
            groups are timm's stages (``num_groups=None``).
        lr_mult: fastai's ``lr_mult``: the head's LR over the first group's, spaced geometrically.
        multipliers: one explicit multiplier per group, input to head.
        groups: regex patterns, one entry per group (input to head), for modules with neither
            ``layer_groups()`` nor a timm model.
        num_groups: groups to cut a timm model into when the module has no ``layer_groups()``
            (``None``: one per timm stage).

    Example:
        >>> trainer = L.Trainer(callbacks=[DiscriminativeLR(ratio=1 / 3)])  # doctest: +SKIP
    """

    def __init__(
        self,
        ratio: float | None = None,
        lr_mult: float | None = None,
        multipliers: Sequence[float] | None = None,
        groups: GroupPatterns | None = None,
        num_groups: int | None = 3,
    ) -> None:
        given = [name for name, v in (("ratio", ratio), ("lr_mult", lr_mult), ("multipliers", multipliers)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of ratio, lr_mult or multipliers (got {given or 'none'})")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1]: earlier groups train slower than the head; got {ratio}")
        if lr_mult is not None and lr_mult < 1:
            raise ValueError(f"lr_mult must be >= 1 (head LR / first group LR); got {lr_mult}")
        if multipliers is not None and any(m <= 0 for m in multipliers):
            raise ValueError(f"multipliers must be positive; got {list(multipliers)}")
        self.ratio = ratio
        self.lr_mult = lr_mult
        self.explicit = list(multipliers) if multipliers is not None else None
        self.patterns = groups
        self.num_groups = num_groups
        self.layer_groups: LayerGroups = {}
        self.multipliers: dict[str, float] = {}
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # fail before training if the groups or multipliers do not fit the model
            self._resolve(pl_module)

    def _resolve(self, pl_module: L.LightningModule) -> None:
        self.layer_groups = resolve_layer_groups(pl_module, self.patterns, self.num_groups)
        names = list(self.layer_groups)
        if self.explicit is not None:
            if len(self.explicit) != len(names):
                raise ValueError(
                    f"{len(self.explicit)} multipliers given for {len(names)} layer groups {names}"
                )
            values = self.explicit
        elif self.ratio is not None:
            values = ratio_multipliers(len(names), self.ratio)
        else:
            values = lr_mult_multipliers(len(names), self.lr_mult)
        self.multipliers = dict(zip(names, values))

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After configure_optimizers, before the optimizer/scheduler state of a checkpoint is loaded.
        # Resolved again: another callback's setup may have added head parameters (a cosine scale).
        self._resolve(pl_module)
        if self._restored is not None and self._restored.get("multipliers") != self.multipliers:
            raise ValueError(
                f"resuming with different per-group LR multipliers: checkpoint {self._restored.get('multipliers')}, "
                f"now {self.multipliers}. HINT: resume with the callback's original settings"
            )
        owner = group_parameters_by_id(pl_module, self.layer_groups)
        schedulers = [cfg.scheduler for cfg in trainer.lr_scheduler_configs]
        for optimizer in trainer.optimizers:
            origin, scale = split_and_scale(optimizer, owner, self.multipliers)
            for sched in schedulers:
                if getattr(sched, "optimizer", None) is optimizer:
                    rescale_scheduler(sched, origin, scale)

    # ---------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": dict(self.multipliers), "groups": list(self.layer_groups)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)


def split_and_scale(optimizer: Optimizer, owner: dict[int, str], multipliers: dict[str, float]) -> tuple[list[int], list[float]]:
    """Split each param group by layer group (named, ordered) and scale its LR values in place.

    Returns, per new group, the index of the group it came from and its multiplier, so schedulers'
    per-group lists can be rebuilt to match.
    """
    old_groups = list(optimizer.param_groups)
    order = {name: i for i, name in enumerate(multipliers)}
    new_groups: list[dict] = []
    origin: list[int] = []
    scale: list[float] = []
    for gi, group in enumerate(old_groups):
        buckets: dict[str, list] = {}
        for p in group["params"]:
            buckets.setdefault(owner.get(id(p), "other"), []).append(p)
        single = len(old_groups) == 1 or len(buckets) == 1
        for layer in sorted(buckets, key=lambda n: order.get(n, len(order))):
            new = {k: v for k, v in group.items() if k != "params"}
            new["params"] = buckets[layer]
            base_name = group.get("name")
            if single and (base_name is None or len(old_groups) == 1):
                new["name"] = layer
            else:
                new["name"] = f"{base_name or f'pg{gi}'}/{layer}"
            m = multipliers.get(layer, 1.0)
            for key in GROUP_LR_KEYS:
                if isinstance(new.get(key), (int, float)):
                    new[key] = new[key] * m
            new_groups.append(new)
            origin.append(gi)
            scale.append(m)
    optimizer.param_groups.clear()
    for group in new_groups:
        optimizer.add_param_group(group)
    return origin, scale


def rescale_scheduler(scheduler: Any, origin: list[int], scale: list[float]) -> None:
    """Rebuild a scheduler's per-group lists for the split groups, scaling the LR-valued ones."""
    for attr in SCHEDULER_LR_LISTS + SCHEDULER_PER_GROUP_LISTS:
        values = getattr(scheduler, attr, None)
        if not isinstance(values, list) or len(values) != max(origin) + 1:
            continue
        rebuilt = [values[o] for o in origin]
        if attr in SCHEDULER_LR_LISTS:
            rebuilt = [v * s if isinstance(v, (int, float)) else v for v, s in zip(rebuilt, scale)]
        setattr(scheduler, attr, rebuilt)
    for child in getattr(scheduler, "_schedulers", []) or []:  # SequentialLR, ChainedScheduler
        rescale_scheduler(child, origin, scale)
