"""Ordered layer groups (input to head) for any LightningModule.

A *layer group* is a named, ordered slice of a model's parameters: the paper's three groups are
early body, late body and head. Groups are plain data, ``{name: [parameter names]}``, keyed by the
names of ``pl_module.named_parameters()``, so callbacks can save their state by name and match
parameters by identity, and nothing here freezes or changes anything as a side effect.

Where groups come from, in order of preference:

1. ``pl_module.layer_groups()`` when the module defines it (smallmed's classifier does): then it
   is the one home of the groups, and a callback given its own ``groups``/``num_groups`` refuses;
2. an explicit list of regular expressions, one entry per group;
3. a timm model found on the module, split with timm's own ``group_matcher`` (data, not
   hard-coded attribute names), with its ``get_classifier()`` always the last group.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

LayerGroups = dict[str, list[str]]
"""Ordered mapping ``group name -> parameter names``; the head is the last group."""

GroupCount = int | Literal["stages", "blocks"]
"""How finely to cut a timm model: a number of groups (head included), one group per timm stage
(``group_matcher(coarse=True)``) or one per block (``coarse=False``: layer-wise LR decay's unit)."""

GroupPatterns = Sequence[str | Sequence[str]]
"""One entry per group, input to head; each entry is a regex or a list of regexes."""


def default_group_names(num_groups: int) -> list[str]:
    """Readable names: the paper's ``early, late, head`` for three groups, else ``body0..head``."""
    if num_groups == 2:
        return ["body", "head"]
    if num_groups == 3:
        return ["early", "late", "head"]
    return [f"body{i}" for i in range(num_groups - 1)] + ["head"]


def find_timm_model(module: nn.Module) -> tuple[str, nn.Module] | None:
    """The outermost submodule (or ``module`` itself) that speaks timm's grouping API."""
    for name, sub in module.named_modules():
        if callable(getattr(sub, "group_matcher", None)) and callable(getattr(sub, "get_classifier", None)):
            return name, sub
    return None


def _prefixed(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def timm_layer_groups(model: nn.Module, num_groups: GroupCount | None = 3, prefix: str = "") -> LayerGroups:
    """Split a timm model into ordered groups with its ``group_matcher``.

    The classifier (``get_classifier()``) is the last group. For a number of groups, the body's
    coarse timm groups (stem, stages) are cut into ``num_groups - 1`` contiguous runs of near-equal
    length in depth, which for three groups gives the paper's early body / late body split.

    Args:
        model: a timm model (anything with ``group_matcher`` and ``get_classifier``).
        num_groups: groups to return, head included; ``"stages"`` (or ``None``) keeps every coarse
            timm group (``stage0..``), ``"blocks"`` every fine one (``block0..``).
        prefix: prepended to each parameter name, for a model that lives inside a LightningModule.

    Raises:
        ValueError: fewer than two groups requested, or more than the model has stages for.

    Example:
        >>> import timm
        >>> groups = timm_layer_groups(timm.create_model("test_resnet", num_classes=2))
        >>> list(groups)
        ['early', 'late', 'head']
    """
    from timm.models import group_parameters

    if num_groups is None:
        num_groups = "stages"
    if isinstance(num_groups, str) and num_groups not in ("stages", "blocks"):
        raise ValueError(f"num_groups must be a number, 'stages' or 'blocks', got {num_groups!r}")
    if isinstance(num_groups, int) and num_groups < 2:
        raise ValueError(f"num_groups must be at least 2 (a body and a head), got {num_groups}")
    classifier = model.get_classifier()
    head_ids = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    head = [n for n, p in model.named_parameters() if id(p) in head_ids]
    if not head:
        raise ValueError(f"{type(model).__name__}.get_classifier() has no parameters: there is no head to train")
    head_names = set(head)
    matcher = model.group_matcher(coarse=num_groups != "blocks")
    stages: list[list[str]] = []
    for members in group_parameters(model, matcher).values():
        body = [n for n in members if n not in head_names]
        if body:
            stages.append(body)
    if isinstance(num_groups, str):
        unit = "stage" if num_groups == "stages" else "block"
        body_groups = stages
        group_names = [f"{unit}{i}" for i in range(len(stages))] + ["head"]
    else:
        if num_groups - 1 > len(stages):
            raise ValueError(
                f"{type(model).__name__} has {len(stages)} body stages in its group_matcher; "
                f"cannot make {num_groups - 1} body groups. HINT: use num_groups <= {len(stages) + 1}"
            )
        body_groups = [sum(chunk, []) for chunk in _contiguous_chunks(stages, num_groups - 1)]
        group_names = default_group_names(num_groups)
    groups = [*body_groups, head]
    return {g: [_prefixed(prefix, n) for n in members] for g, members in zip(group_names, groups)}


def _contiguous_chunks(items: list, k: int) -> list[list]:
    """Split ``items`` into ``k`` contiguous runs whose lengths differ by at most one (earlier runs shorter)."""
    base, extra = divmod(len(items), k)
    sizes = [base + (1 if i >= k - extra else 0) for i in range(k)]
    out, start = [], 0
    for size in sizes:
        out.append(items[start : start + size])
        start += size
    return out


def pattern_layer_groups(module: nn.Module, patterns: GroupPatterns, names: Sequence[str] | None = None) -> LayerGroups:
    """Groups from regular expressions matched (``re.search``) against parameter names.

    The first group whose pattern matches a parameter takes it. Every pattern must match something
    and every parameter must land in a group, so a typo fails loudly instead of freezing nothing.

    Raises:
        ValueError: a pattern matches no parameter, a parameter matches no pattern, or fewer than
            two groups are given.
    """
    if len(patterns) < 2:
        raise ValueError(f"need at least two layer groups (a body and a head), got {len(patterns)} pattern entries")
    compiled = [[re.compile(p) for p in ([entry] if isinstance(entry, str) else entry)] for entry in patterns]
    group_names = list(names) if names is not None else default_group_names(len(patterns))
    if len(group_names) != len(patterns):
        raise ValueError(f"got {len(group_names)} group names for {len(patterns)} pattern entries")
    groups: LayerGroups = {g: [] for g in group_names}
    hits = [[0] * len(entry) for entry in compiled]
    unmatched = []
    for pname, _ in module.named_parameters():
        for gi, entry in enumerate(compiled):
            found = False
            for pi, rx in enumerate(entry):
                if rx.search(pname):
                    hits[gi][pi] += 1
                    found = True
                    break
            if found:
                groups[group_names[gi]].append(pname)
                break
        else:
            unmatched.append(pname)
    for gi, entry in enumerate(compiled):
        for pi, rx in enumerate(entry):
            if hits[gi][pi] == 0:
                raise ValueError(
                    f"layer-group pattern {rx.pattern!r} (group {group_names[gi]!r}) matched no parameter of "
                    f"{type(module).__name__}; known prefixes: {', '.join(parameter_prefixes(module))}"
                )
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise ValueError(
            f"{len(unmatched)} parameters match no layer-group pattern: {shown}. "
            "HINT: end the list with a catch-all entry such as '.*' for the head"
        )
    return groups


def parameter_prefixes(module: nn.Module, depth: int = 2) -> list[str]:
    """Distinct leading name parts (``blocks.3``), for error messages that show what exists."""
    seen: dict[str, None] = {}
    for name, _ in module.named_parameters():
        seen.setdefault(".".join(name.split(".")[:depth]), None)
    return list(seen)


def resolve_layer_groups(
    pl_module: nn.Module,
    patterns: GroupPatterns | None = None,
    num_groups: GroupCount | None = None,
    caller: str = "the callback",
) -> LayerGroups:
    """The layer groups a callback should use on ``pl_module`` (see the module docstring for the order).

    A module that defines ``layer_groups()`` is the one home of its groups: a callback that also
    gets ``groups`` or ``num_groups`` is refused, so that no setting is silently ignored. Parameters
    that belong to no group (a head added after the groups were made, a learned scale) join the last
    group: whatever is new sits with the head.

    Args:
        pl_module: the module whose parameters are grouped.
        patterns: regexes, one entry per group, for modules without ``layer_groups()``.
        num_groups: how to cut a timm model the module holds (default 3, the paper's groups).
        caller: the callback asking, for error messages.

    Raises:
        ValueError: nothing to group by, two homes for the groups, fewer than two groups, or
            unknown parameter names.
    """
    if callable(getattr(pl_module, "layer_groups", None)):
        given = [name for name, value in (("groups", patterns), ("num_groups", num_groups)) if value is not None]
        if given:
            raise ValueError(
                f"{caller} got {' and '.join(given)}, but {type(pl_module).__name__} defines its own layer groups "
                f"(its layer_groups() method), which every callback reads. HINT: remove {', '.join(given)} from "
                f"{caller}; for smallmed's model set model.init_args.num_groups instead"
            )
        groups = {k: list(v) for k, v in pl_module.layer_groups().items()}
    elif patterns is not None:
        groups = pattern_layer_groups(pl_module, patterns)
    else:
        found = find_timm_model(pl_module)
        if found is None:
            raise ValueError(
                f"{type(pl_module).__name__} has no layer_groups() method and holds no timm model; "
                f"HINT: pass `groups=[...]` (one regex per group, input to head) to {caller}"
            )
        prefix, model = found
        groups = timm_layer_groups(model, num_groups=3 if num_groups is None else num_groups, prefix=prefix)
    return _complete(pl_module, groups)


def _complete(pl_module: nn.Module, groups: Mapping[str, list[str]]) -> LayerGroups:
    if len(groups) < 2:
        raise ValueError(
            f"layer groups of {type(pl_module).__name__} gave {len(groups)} group(s): {list(groups)}; "
            "freezing or per-group LRs need at least two (a body and a head)"
        )
    params = dict(pl_module.named_parameters())
    out = {k: list(v) for k, v in groups.items()}
    assigned = set()
    for gname, members in out.items():
        unknown = [n for n in members if n not in params]
        if unknown:
            raise ValueError(f"layer group {gname!r} names unknown parameters: {unknown[:5]}")
        if not members:
            raise ValueError(f"layer group {gname!r} is empty")
        assigned.update(members)
    last = list(out)[-1]
    out[last].extend(n for n in params if n not in assigned)
    return out


def group_parameters_by_id(pl_module: nn.Module, groups: LayerGroups) -> dict[int, str]:
    """``id(parameter) -> group name``: parameters are matched by identity, never by value."""
    params = dict(pl_module.named_parameters())
    return {id(params[n]): g for g, members in groups.items() for n in members}


def parameters_of(pl_module: nn.Module, names: Sequence[str]) -> list[torch.nn.Parameter]:
    params = dict(pl_module.named_parameters())
    return [params[n] for n in names]
