"""Gradual unfreezing: train the head first, then unfreeze the body group by group.

The paper's schedule trains only the head, unfreezes the late body at 10% of the training steps and
the early body at 20%, all inside one LR cycle; fastai's ``fine_tune`` trains the head for one cycle,
then unfreezes everything for a fresh one. Both are milestone lists here (``[0.1, 0.2]`` as fractions
of training; ``[1, 1]`` in epochs).

How freezing is done, and why:

* The optimizer always holds every parameter; nothing is added mid-training, so any scheduler and
  any checkpoint keep working. A frozen parameter's gradient is dropped before each optimizer step,
  so Adam/AdamW/SGD skip it: no gradient step, no weight decay, no momentum. It stays bit-for-bit
  unchanged, and it has no optimizer state when it unfreezes (any stale state is cleared).
* On one device, frozen parameters also get ``requires_grad=False`` so their backward is skipped.
  Under DDP (or any parallel strategy), ``requires_grad`` never changes after the model is wrapped:
  DDP fixes the set of synchronised parameters at wrap time, and toggling it is what breaks gradual
  unfreezing under DDP elsewhere (unsynchronised grads, reduction errors). The gradients are computed
  and all-reduced, then dropped on every rank alike.
* The phase is a pure function of the step (or epoch) counter that checkpoints restore, so a resumed
  run is in the same phase at the same step.

BatchNorm in frozen groups (``bn_policy``), which matters with batches of 16 medical images:

``train``
    fastai's default: norm layers keep updating running statistics and their affine weights keep
    training while the rest of their group is frozen.
``freeze_stats``
    BatchNorm layers of frozen groups run in eval mode (running statistics used and not updated);
    their affine weights still train.
``freeze_all``
    Eval mode and frozen affine weights: a frozen group, buffers included, is exactly unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import ParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

from smallmed.callbacks.host_scalars import log_host_scalars
from smallmed.callbacks.layer_groups import GroupCount, GroupPatterns, LayerGroups, resolve_layer_groups

Unit = Literal["fraction", "step", "epoch"]
BNPolicy = Literal["train", "freeze_stats", "freeze_all"]
NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class GradualUnfreezing(Callback):
    """Freeze all layer groups but the head, then unfreeze them from the head backwards at milestones.

    Milestone ``i`` unfreezes the ``i``-th group counted back from the head: with three groups
    (early, late, head) and ``milestones=[0.1, 0.2]``, the late body unfreezes at 10% of training and
    the early body at 20%. Groups without a milestone stay frozen (``milestones=[]`` is a feature
    extractor). Repeating a milestone unfreezes several groups at once. ``train_groups`` train from
    the start: surgical fine-tuning (Lee et al., ICLR 2023) trains one block and the head, e.g.
    ``num_groups: stages`` on the model and ``milestones: [], train_groups: [-1]`` (the last stage).

    Args:
        milestones: when each body group unfreezes, non-decreasing, in ``unit``.
        unit: ``fraction`` of the total optimizer steps, optimizer ``step``, or ``epoch``.
        bn_policy: what happens to normalisation layers of frozen groups (see the module docstring).
        groups: regex patterns, one entry per group (input to head), for modules with neither
            ``layer_groups()`` nor a timm model.
        num_groups: how to cut a timm model the module holds when it has no ``layer_groups()``:
            a number (default 3), ``"stages"`` or ``"blocks"``.
        train_groups: body groups that are never frozen (the others follow ``milestones``), by name or
            by position among the body groups (``0`` the first, ``-1`` the last).

    Example:
        >>> trainer = L.Trainer(callbacks=[GradualUnfreezing(milestones=[0.1, 0.2])])  # doctest: +SKIP
    """

    def __init__(
        self,
        milestones: Sequence[float] = (0.1, 0.2),
        unit: Unit = "fraction",
        bn_policy: BNPolicy = "train",
        groups: GroupPatterns | None = None,
        num_groups: GroupCount | None = None,
        train_groups: Sequence[str | int] = (),
    ) -> None:
        if unit not in ("fraction", "step", "epoch"):
            raise ValueError(f"unknown unit {unit!r}; choose fraction, step or epoch")
        if bn_policy not in ("train", "freeze_stats", "freeze_all"):
            raise ValueError(f"unknown bn_policy {bn_policy!r}; choose train, freeze_stats or freeze_all")
        milestones = list(milestones)
        if any(b < a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"milestones must be non-decreasing, got {milestones}")
        if any(m < 0 for m in milestones):
            raise ValueError(f"milestones must be >= 0, got {milestones}")
        if unit == "fraction" and any(m > 1 for m in milestones):
            raise ValueError(f"fraction milestones must lie in [0, 1], got {milestones}. HINT: use unit: step or epoch")
        if unit != "fraction" and any(m != int(m) for m in milestones):
            raise ValueError(f"{unit} milestones must be whole numbers, got {milestones}")
        self.milestones = milestones
        self.unit = unit
        self.bn_policy = bn_policy
        self.patterns = groups
        self.num_groups = num_groups
        self.train_groups = list(train_groups)
        self.layer_groups: LayerGroups = {}
        self.unfreeze_order: list[str] = []
        self.frozen: set[str] = set()
        self._params: dict[str, list[nn.Parameter]] = {}
        self._bn_modules: dict[str, list[nn.Module]] = {}
        self._toggle_requires_grad = True
        self._milestone_steps: list[int] | None = None

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.layer_groups = resolve_layer_groups(pl_module, self.patterns, self.num_groups, caller="GradualUnfreezing")
        names = list(self.layer_groups)
        body_names = names[:-1]
        def known(g: str | int) -> bool:
            return g in body_names if isinstance(g, str) else -len(body_names) <= g < len(body_names)

        unknown = [g for g in self.train_groups if not known(g)]
        if unknown:
            raise ValueError(f"train_groups {unknown} are not body groups of {type(pl_module).__name__}: {body_names}")
        trained = {g if isinstance(g, str) else body_names[g] for g in self.train_groups}
        body = [g for g in body_names if g not in trained]
        if len(self.milestones) > len(body):
            raise ValueError(
                f"{len(self.milestones)} milestones but only {len(body)} body groups to unfreeze {body}; "
                "HINT: one milestone per body group, from the head backwards"
            )
        self.unfreeze_order = list(reversed(body))
        # Under a parallel strategy the model is wrapped after setup: never change requires_grad there.
        self._toggle_requires_grad = not isinstance(trainer.strategy, ParallelStrategy)
        params = dict(pl_module.named_parameters())
        norm_param_ids = set()
        self._bn_modules = {g: [] for g in names}
        owner = {n: g for g, members in self.layer_groups.items() for n in members}
        for mname, module in pl_module.named_modules():
            if isinstance(module, NORM_TYPES):
                pnames = [f"{mname}.{n}" for n, _ in module.named_parameters(recurse=False)]
                norm_param_ids.update(id(params[n]) for n in pnames)
                group = owner.get(pnames[0]) if pnames else None
                if group is not None and isinstance(module, _BatchNorm):
                    self._bn_modules[group].append(module)
        keep_norm_training = self.bn_policy in ("train", "freeze_stats")
        self._params = {
            g: [params[n] for n in members if not (keep_norm_training and id(params[n]) in norm_param_ids)]
            for g, members in self.layer_groups.items()
        }

    def milestone_steps(self, trainer: L.Trainer) -> list[int]:
        """Milestones as optimizer steps (fractions are of ``trainer.estimated_stepping_batches``)."""
        if self.unit == "fraction":
            total = int(trainer.estimated_stepping_batches)
            return [round(m * total) for m in self.milestones]
        return [int(m) for m in self.milestones]

    def first_unfreezing_step(self, trainer: L.Trainer) -> int | None:
        """The optimizer step at which the first body group unfreezes (``None``: none does)."""
        if not self.milestones:
            return None
        if self.unit != "epoch":
            return self.milestone_steps(trainer)[0]
        steps_per_epoch = int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs or 1)
        return int(self.milestones[0]) * steps_per_epoch

    def frozen_groups_at(self, step: int, epoch: int) -> set[str]:
        """The body groups frozen at this optimizer step / epoch."""
        counter = epoch if self.unit == "epoch" else step
        thresholds = self.milestones if self.unit == "epoch" else self._milestone_steps or []
        released = sum(1 for t in thresholds if counter >= t)
        return set(self.unfreeze_order[released:])

    # ------------------------------------------------------------ the phases
    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the checkpoint's step counter is restored: a resumed run starts in its own phase.
        self._milestone_steps = self.milestone_steps(trainer)
        self._check_optimizers(trainer)
        self._warn_unreached_milestones(trainer)
        self.frozen = set()
        self._apply(trainer, force=True)

    def _check_optimizers(self, trainer: L.Trainer) -> None:
        """torch's fused SGD starts momentum only when no parameter has a buffer yet, so the first step
        after an unfreezing fails with a TypeError from inside torch. Say so before training."""
        if not any(m > 0 for m in self.milestones):
            return  # nothing unfreezes during training
        for optimizer in trainer.optimizers:
            fused_with_momentum = [g for g in optimizer.param_groups if g.get("fused") and g.get("momentum", 0)]
            if isinstance(optimizer, torch.optim.SGD) and fused_with_momentum:
                raise ValueError(
                    "GradualUnfreezing cannot be used with torch's fused SGD with momentum: it cannot start the "
                    "momentum of parameters unfrozen after the first step. HINT: SGD(..., fused=False)"
                )

    def _warn_unreached_milestones(self, trainer: L.Trainer) -> None:
        """A milestone at or past the end of training leaves its group frozen for the whole run: almost
        always a unit mix-up (epochs given as steps, a run shortened from the command line), so say so.
        ``milestones=[]`` or fewer milestones than body groups is the way to keep groups frozen.
        ``fast_dev_run`` (one batch, by design) is left alone."""
        if trainer.fast_dev_run:
            return
        if self.unit == "epoch":
            end, unit = trainer.max_epochs, "epochs"
            if end is None or end < 0:
                return
            thresholds = [int(m) for m in self.milestones]
        else:
            end, unit = int(trainer.estimated_stepping_batches), "optimizer steps"
            thresholds = self._milestone_steps or []
        merged = sorted({m for m in self.milestones}) if len(set(self.milestones)) > len(set(thresholds)) else []
        if merged:
            together = [g for g, t in zip(self.unfreeze_order, thresholds) if thresholds.count(t) > 1]
            rank_zero_warn(
                f"GradualUnfreezing: milestones {self.milestones} ({self.unit}) fall on the optimizer steps {thresholds} of "
                f"this {end}-step run, so {together} unfreeze at the same step and the phases between them vanish. HINT: "
                "train longer, use unit: step, or give the groups one milestone on purpose"
            )
        never = [group for group, t in zip(self.unfreeze_order, thresholds) if t >= end]
        if never:
            rank_zero_warn(
                f"GradualUnfreezing: milestones {self.milestones} ({self.unit}) put the unfreezing of {never} at or "
                f"after the end of training ({end} {unit}), so they stay frozen throughout. HINT: use milestones "
                f"within the run, or leave a group's milestone out to keep it frozen on purpose"
            )

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self._apply(trainer)
        self._set_bn_modes()
        log_host_scalars(trainer, {"unfreezing/trainable_groups": float(len(self.layer_groups) - len(self.frozen))})

    @override
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        for group in self.frozen:
            for p in self._params[group]:
                p.grad = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Leave the module as found: trainable, norm layers following the module's own mode.
        for group in self.frozen:
            for p in self._params[group]:
                p.requires_grad_(True)
        self.frozen = set()

    def _apply(self, trainer: L.Trainer, force: bool = False) -> None:
        target = self.frozen_groups_at(trainer.global_step, trainer.current_epoch)
        if target == self.frozen and not force:
            return
        newly_unfrozen = self.frozen - target if not force else set(self.layer_groups) - target
        for group in newly_unfrozen:
            for module in self._bn_modules[group]:
                module.train(trainer.lightning_module.training)
            for p in self._params[group]:
                if self._toggle_requires_grad:
                    p.requires_grad_(True)
                for optimizer in trainer.optimizers:
                    if not force:  # a resumed run keeps the state its checkpoint restored
                        optimizer.state.pop(p, None)
        for group in target:
            for p in self._params[group]:
                if self._toggle_requires_grad:
                    p.requires_grad_(False)
                p.grad = None
        self.frozen = target

    def _set_bn_modes(self) -> None:
        if self.bn_policy == "train":
            return
        for group in self.frozen:
            for module in self._bn_modules[group]:
                module.eval()

    # ---------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"frozen": sorted(self.frozen), "milestone_steps": list(self._milestone_steps or [])}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The phase is recomputed from the restored step counter; the saved one is for inspection.
        self._restored_state = dict(state_dict)


def first_unfreezing_step(trainer: L.Trainer | None) -> int | None:
    """When the trainer's :class:`GradualUnfreezing` first unfreezes a body group, in optimizer steps.

    ``None`` without the callback or when nothing unfreezes. For schedules whose phases follow the
    unfreezing (fastai's ``fine_tune`` restarts its cycle there), so the phases have one home.
    """
    found = [cb for cb in (trainer.callbacks if trainer is not None else []) if isinstance(cb, GradualUnfreezing)]
    if len(found) > 1:
        raise ValueError(f"{len(found)} GradualUnfreezing callbacks given; keep one")
    return found[0].first_unfreezing_step(trainer) if found else None
