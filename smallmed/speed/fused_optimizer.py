"""torch's fused Adam / AdamW kernel on the CPU, switched on in the optimizer the model built.

torch runs Adam's update on the CPU as a Python loop over the parameter tensors (its ``foreach``
default is CUDA-only); ``fused=True`` does the whole update in one kernel. The maths is Adam's, the
rounding differs. Switched on through the param groups' own ``fused`` / ``foreach`` options (public
optimizer options, read at every ``step``), so the model keeps building its optimizer as the recipe
says, and groups added later (``DiscriminativeLR`` splitting a group) inherit the setting.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

FUSABLE = (torch.optim.Adam, torch.optim.AdamW)


def use_fused_kernel(optimizer: Optimizer) -> bool:
    """Switch ``optimizer`` to torch's fused kernel where it can take it; whether it now uses it.

    Only Adam and AdamW (the kernel measured), only when every parameter is a dense float tensor on
    the CPU, and never for a ``differentiable`` optimizer (the fused kernel has no autograd).
    """
    if type(optimizer) not in FUSABLE or "fused" not in optimizer.defaults:
        return False
    groups = optimizer.param_groups
    params = [p for g in groups for p in g["params"]]
    if not params or any(g.get("differentiable") for g in groups):
        return False
    if not all(p.device.type == "cpu" and p.is_floating_point() and not p.is_sparse for p in params):
        return False
    optimizer.defaults.update(fused=True, foreach=False)
    for group in groups:
        group.update(fused=True, foreach=False)
    return True
