"""Learning-rate schedules: the paper's one-cycle, its "regular" plateau training, and fastai's fine_tune.

Every schedule is a torch scheduler over the optimizer's own param groups, so the callbacks in
``smallmed.callbacks`` (per-group LR scaling, unfreezing) work with each of them unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

Schedule = Literal["one_cycle", "constant", "plateau", "cosine", "fastai_fine_tune"]
SCHEDULES = ("one_cycle", "constant", "plateau", "cosine", "fastai_fine_tune")


def _cos_interp(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * pct) + 1)


def one_cycle_factor(step: int, total: int, pct_start: float, div: float, div_final: float) -> float:
    """fastai's one cycle as a multiple of the peak LR: cosine up from 1/div, then down to 1/div_final."""
    warm = max(1, round(total * pct_start))
    if step < warm:
        return _cos_interp(1 / div, 1.0, step / warm)
    return _cos_interp(1.0, 1 / div_final, min(1.0, (step - warm) / max(1, total - warm)))


def fastai_fine_tune_factor(step: int, frozen_steps: int, total: int, pct_start: float = 0.3) -> float:
    """``Learner.fine_tune``: one cycle while frozen (pct_start 0.99), then a fresh cycle at half the LR."""
    if step < frozen_steps:
        return one_cycle_factor(step, frozen_steps, pct_start=0.99, div=25.0, div_final=1e5)
    return 0.5 * one_cycle_factor(step - frozen_steps, total - frozen_steps, pct_start=pct_start, div=5.0, div_final=1e5)


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    total_steps: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    plateau_factor: float = 0.1,
    plateau_patience: int = 3,
    frozen_steps: int | None = None,
) -> dict | None:
    """The Lightning ``lr_scheduler`` config for schedule ``name``, or ``None`` for a constant LR.

    ``frozen_steps``: for ``fastai_fine_tune``, the step at which the body unfreezes and the second
    cycle starts (read from the unfreezing callback, the one home of the phases).
    """
    if name == "constant":
        return None
    if name == "one_cycle":
        sched = OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=max(2, total_steps),
            pct_start=pct_start,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        )
        return {"scheduler": sched, "interval": "step"}
    if name == "cosine":
        total = max(1, total_steps)
        return {"scheduler": LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))), "interval": "step"}
    if name == "fastai_fine_tune":
        if frozen_steps is None:
            raise ValueError(
                "lr_schedule 'fastai_fine_tune' restarts its cycle when the body unfreezes, and nothing unfreezes. "
                "HINT: add the callback GradualUnfreezing with milestones: [1, 1] and unit: epoch (fastai's freeze_epochs=1)"
            )
        frozen = frozen_steps
        total = max(frozen + 1, total_steps)
        return {
            "scheduler": LambdaLR(optimizer, lambda s: fastai_fine_tune_factor(s, frozen, total, pct_start)),
            "interval": "step",
        }
    if name == "plateau":
        sched = ReduceLROnPlateau(optimizer, mode="min", factor=plateau_factor, patience=plateau_patience)
        return {"scheduler": sched, "interval": "epoch", "monitor": "val/loss"}
    raise ValueError(f"unknown lr_schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
