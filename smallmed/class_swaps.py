"""Switching modules to a faster subclass in place, and back.

The CPU fast paths (:mod:`smallmed.small_map_depthwise`, :mod:`smallmed.copy_free_activations`)
change how a module computes, never what it holds, so they change the module's class and nothing
else: parameters, buffers, hooks and ``state_dict`` keys stay as they are, and optimizers, layer
groups and checkpoints never notice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn


def swap_classes(
    model: nn.Module,
    swaps: Mapping[type[nn.Module], type[nn.Module]],
    enabled: bool,
    applies: Callable[[nn.Module], bool],
) -> int:
    """Give every module of ``model`` whose *exact* type is a key of ``swaps`` (and for which
    ``applies`` holds) the mapped class; ``enabled=False`` maps back. Exact types only, so a subclass
    with a forward of its own is never bypassed. Returns how many modules were switched."""
    table = swaps if enabled else {new: old for old, new in swaps.items()}
    count = 0
    for module in model.modules():
        new_class = table.get(type(module))
        if new_class is not None and applies(module):
            module.__class__ = new_class
            count += 1
    return count
