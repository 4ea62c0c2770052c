"""Per-layer-group learning rates: the paper's ``lr x (1/9, 1/3, 1)``, fastai's ``slice``, timm's layer decay.

The callback is the one home of the multipliers. How they reach the optimizer depends on the module:

* **Modules that build their own per-layer param groups** (smallmed's classifier, or any module
  that calls :func:`~smallmed.callbacks.layer_param_groups` in ``configure_optimizers`` with
  :func:`lr_multipliers`) get the multipliers *before* the optimizer exists: the scheduler sees the
  scaled LRs from its first step and nothing is rewritten later. The callback only checks them.
* **Other modules** (``AdamW(self.parameters())``): at fit start, before any step or checkpoint
  restore, each param group is split into one named group per layer group and every per-group
  value the scheduler reads is scaled with it. Schedulers whose values cannot all be scaled
  (``CosineAnnealingLR`` with ``eta_min > 0``: one floor for every group; a scheduler class this
  callback does not know) are refused by name, with the fix: build the groups in
  ``configure_optimizers`` with :func:`~smallmed.callbacks.layer_param_groups`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.optim import Optimizer, lr_scheduler
from typing_extensions import override

from smallmed.callbacks.layer_groups import GroupCount, GroupPatterns, LayerGroups, group_parameters_by_id, resolve_layer_groups

PAPER_RATIO = 1 / 3
"""The paper's LR ratio between neighbouring layer groups (early body, late body, head)."""

# Per-group LR values schedulers keep inside each param group, and per-group lists they keep on themselves.
GROUP_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
SCHEDULER_LR_LISTS = ("base_lrs", "min_lrs", "max_lrs")
SCHEDULER_PER_GROUP_LISTS = ("lr_lambdas", "base_momentums", "max_momentums")
# Schedulers whose every per-group value is scaled by the adapter (with CosineAnnealing* only at eta_min=0).
ADAPTED_SCHEDULERS = (
    lr_scheduler.LambdaLR, lr_scheduler.MultiplicativeLR, lr_scheduler.StepLR, lr_scheduler.MultiStepLR,
    lr_scheduler.ConstantLR, lr_scheduler.LinearLR, lr_scheduler.ExponentialLR, lr_scheduler.PolynomialLR,
    lr_scheduler.CosineAnnealingLR, lr_scheduler.CosineAnnealingWarmRestarts, lr_scheduler.OneCycleLR,
    lr_scheduler.CyclicLR, lr_scheduler.ReduceLROnPlateau, lr_scheduler.SequentialLR, lr_scheduler.ChainedScheduler,
)
BUILD_THEM = (
    "build the param groups in configure_optimizers with "
    "`smallmed.callbacks.layer_param_groups(self, groups, lr, multipliers=lr_multipliers(self.trainer, self))`, "
    "so the scheduler sees the scaled LRs from the start"
)


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

    At most one of ``ratio``, ``lr_mult`` or ``multipliers`` sets the multipliers; with none, the
    paper's ratio 1/3. The head keeps the optimizer's LR (multiplier 1), earlier groups get less.

    Args:
        ratio: LR ratio between neighbouring groups (the paper: 1/3). Over one group per timm block
            (``num_groups="blocks"``) this is timm's layer-wise LR decay.
        lr_mult: fastai's ``lr_mult``: the head's LR over the first group's, spaced geometrically.
        multipliers: one explicit multiplier per group, input to head.
        groups: regex patterns, one entry per group (input to head), for modules with neither
            ``layer_groups()`` nor a timm model.
        num_groups: how to cut a timm model the module holds when it has no ``layer_groups()``:
            a number (default 3), ``"stages"`` or ``"blocks"``.

    Example:
        >>> trainer = L.Trainer(callbacks=[DiscriminativeLR()])  # the paper's 1/9, 1/3, 1  # doctest: +SKIP
    """

    def __init__(
        self,
        ratio: float | None = None,
        lr_mult: float | None = None,
        multipliers: Sequence[float] | None = None,
        groups: GroupPatterns | None = None,
        num_groups: GroupCount | None = None,
    ) -> None:
        given = [name for name, v in (("ratio", ratio), ("lr_mult", lr_mult), ("multipliers", multipliers)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"give at most one of ratio, lr_mult or multipliers (got {', '.join(given)})")
        if not given:
            ratio = PAPER_RATIO
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

    def multipliers_for(self, pl_module: L.LightningModule) -> dict[str, float]:
        """``{layer group: multiplier}`` for ``pl_module``'s groups (input to head)."""
        self.layer_groups = resolve_layer_groups(pl_module, self.patterns, self.num_groups, caller="DiscriminativeLR")
        names = list(self.layer_groups)
        if self.explicit is not None:
            if len(self.explicit) != len(names):
                raise ValueError(f"{len(self.explicit)} multipliers given for {len(names)} layer groups {names}")
            values = self.explicit
        elif self.ratio is not None:
            values = ratio_multipliers(len(names), self.ratio)
        else:
            values = lr_mult_multipliers(len(names), self.lr_mult)
        self.multipliers = dict(zip(names, values))
        return dict(self.multipliers)

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":  # fail before training if the groups or multipliers do not fit the model
            self.multipliers_for(pl_module)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After configure_optimizers, before the optimizer/scheduler state of a checkpoint is loaded.
        self.multipliers_for(pl_module)
        if self._restored is not None and not _same(self._restored.get("multipliers") or {}, self.multipliers):
            raise ValueError(
                f"resuming with different per-group LR multipliers: checkpoint {self._restored.get('multipliers')}, "
                f"now {self.multipliers}. HINT: resume with the callback's original settings"
            )
        owner = group_parameters_by_id(pl_module, self.layer_groups)
        for optimizer in trainer.optimizers:
            schedulers = [cfg.scheduler for cfg in trainer.lr_scheduler_configs if getattr(cfg.scheduler, "optimizer", None) is optimizer]
            if _built_per_layer_group(optimizer):
                self._check_built(optimizer)
                continue
            for scheduler in schedulers:
                check_adaptable(scheduler)
            origin, scale = split_and_scale(optimizer, owner, self.multipliers)
            for scheduler in schedulers:
                rescale_scheduler(scheduler, origin, scale)

    def _check_built(self, optimizer: Optimizer) -> None:
        """Groups built by ``layer_param_groups``: their multipliers must be this callback's."""
        built = {g["layer_group"]: g["lr_multiplier"] for g in optimizer.param_groups}
        expected = {name: self.multipliers[name] for name in built if name in self.multipliers}
        if set(built) - set(self.multipliers) or not _same(built, expected):
            raise ValueError(
                f"the optimizer's param groups were built with LR multipliers {built}, but DiscriminativeLR gives "
                f"{self.multipliers}. HINT: pass `multipliers=lr_multipliers(self.trainer, self)` to layer_param_groups"
            )

    # ---------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"multipliers": dict(self.multipliers), "groups": list(self.layer_groups)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)


def lr_multipliers(trainer: L.Trainer | None, pl_module: L.LightningModule) -> dict[str, float]:
    """The multipliers the trainer's :class:`DiscriminativeLR` gives ``pl_module``'s layer groups; ``{}`` without one.

    For ``configure_optimizers``: pass the result to :func:`~smallmed.callbacks.layer_param_groups`.
    """
    found = [cb for cb in (trainer.callbacks if trainer is not None else []) if isinstance(cb, DiscriminativeLR)]
    if len(found) > 1:
        raise ValueError(f"{len(found)} DiscriminativeLR callbacks given; keep one")
    return found[0].multipliers_for(pl_module) if found else {}


def _same(a: dict[str, float], b: dict[str, float]) -> bool:
    return set(a) == set(b) and all(math.isclose(a[k], b[k], rel_tol=1e-9) for k in a)


def _built_per_layer_group(optimizer: Optimizer) -> bool:
    marked = ["layer_group" in g for g in optimizer.param_groups]
    if any(marked) and not all(marked):
        raise ValueError(
            "some of the optimizer's param groups were built by layer_param_groups and some were not; "
            "HINT: build them all with layer_param_groups, or none"
        )
    return all(marked)


def check_adaptable(scheduler: Any) -> None:
    """Raise, naming the scheduler and the fix, when splitting its optimizer's groups cannot keep every ratio."""
    name = type(scheduler).__name__
    if not isinstance(scheduler, ADAPTED_SCHEDULERS):
        raise ValueError(f"DiscriminativeLR cannot scale the per-group values of {name} (a scheduler it does not know). HINT: {BUILD_THEM}")
    if isinstance(scheduler, (lr_scheduler.CosineAnnealingLR, lr_scheduler.CosineAnnealingWarmRestarts)) and scheduler.eta_min:
        raise ValueError(
            f"{name}(eta_min={scheduler.eta_min}) ends every layer group on the same floor, so the LR ratios would not "
            f"hold. HINT: eta_min=0, or {BUILD_THEM}"
        )
    for child in getattr(scheduler, "_schedulers", []) or []:  # SequentialLR, ChainedScheduler: no public accessor
        check_adaptable(child)


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
    # What get_last_lr() returns until the next step: the split groups' own LRs.
    scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
    for child in getattr(scheduler, "_schedulers", []) or []:  # SequentialLR, ChainedScheduler
        rescale_scheduler(child, origin, scale)
