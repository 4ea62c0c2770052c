"""Train / val / test splits made from one labelled pool, and the checks that no image or patient leaks.

Why a split helper of its own: a small data set's val and test images must stay the same whatever
training subset is drawn (so learning curves and subset seeds compare like with like), and images
of one patient must never sit on both sides of a split (the network would recognise the patient, not
the disease). So the pool is split once, by ``split_seed`` alone, *before* any subset is drawn, with
whole patients assigned to one split each.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


class LeakageError(ValueError):
    """The same image (by content) or the same patient is in two splits."""


def normalise_split_name(name: str) -> str | None:
    """``train`` / ``val`` / ``test`` for a split name or a common alias (``valid``, ``validation``...), else ``None``."""
    return SPLIT_ALIASES.get(name.strip().lower())


def _label_matrix(labels: np.ndarray) -> np.ndarray:
    """One column per class to balance: one-hot for class indices; multi-hot plus a "no label" column."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        classes = int(labels.max()) + 1 if labels.size else 0
        return np.eye(classes, dtype=np.float64)[labels.astype(np.int64)]
    multi = (labels > 0).astype(np.float64)
    return np.concatenate([multi, (multi.sum(axis=1) == 0)[:, None].astype(np.float64)], axis=1)


def stratified_group_split(
    labels: np.ndarray,
    fractions: Mapping[str, float],
    groups: Sequence[Hashable] | np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split a labelled pool into named parts with about ``fractions`` of every class, whole groups at a time.

    Groups (patients) are visited largest first, in a seeded random order among equals, and each goes
    to the part where it most reduces the relative misfit ``sum((count - target)**2 / target)`` over
    classes (ties: the part furthest below its share of images): a greedy, deterministic
    stratification that works for single labels, multi-hot labels and groups of mixed classes alike.
    Without groups every image is its own group.

    Args:
        labels: class index per image ``(N,)``, or multi-hot ``(N, K)``.
        fractions: share of the pool per part, e.g. ``{"train": 0.7, "val": 0.15, "test": 0.15}``;
            positive, summing to 1.
        groups: a group (patient) ID per image; no group is ever in two parts.
        seed: the split seed; the same inputs and seed always give the same parts.

    Returns:
        Sorted indices into ``labels`` per part, in the order of ``fractions``.

    Raises:
        ValueError: fractions that are not positive or do not sum to 1, or a part left empty
            (too few images or patients for the fractions asked).

    Example:
        >>> parts = stratified_group_split(np.array([0] * 10 + [1] * 10), {"train": 0.8, "test": 0.2})
        >>> [len(v) for v in parts.values()]
        [16, 4]
    """
    names = list(fractions)
    shares = np.array([float(fractions[n]) for n in names])
    if np.any(shares <= 0) or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"split fractions must be positive and sum to 1, got {dict(fractions)}")
    matrix = _label_matrix(labels)
    if groups is None:
        group_of = np.arange(len(matrix))
        unit = "images"
    else:
        groups = np.asarray(groups)
        if len(groups) != len(matrix):
            raise ValueError(f"{len(groups)} group IDs for {len(matrix)} images")
        _, group_of = np.unique(groups.astype(str), return_inverse=True)
        unit = "patients"
    num_groups = int(group_of.max()) + 1 if len(group_of) else 0
    per_group = np.zeros((num_groups, matrix.shape[1]))
    np.add.at(per_group, group_of, matrix)
    sizes = np.bincount(group_of, minlength=num_groups)

    order = np.random.default_rng(seed).permutation(num_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]  # large groups first, random among equals
    target = shares[:, None] * matrix.sum(axis=0)[None, :]
    scale = 1.0 / np.maximum(target, 1e-9)
    current = np.zeros_like(target)
    part_of_group = np.empty(num_groups, dtype=np.int64)
    size_target = shares * len(matrix)
    size_now = np.zeros(len(names))
    for g in order:
        v = per_group[g]
        misfit_change = ((2.0 * (current - target) + v) * v * scale).sum(axis=1)
        ties = np.flatnonzero(misfit_change <= misfit_change.min() + 1e-9)
        # among equally good parts, the one furthest below its share of images
        part = int(ties[np.argmax((size_target[ties] - size_now[ties]) / size_target[ties])])
        current[part] += v
        size_now[part] += sizes[g]
        part_of_group[g] = part
    part_of_image = part_of_group[group_of]
    out = {name: np.flatnonzero(part_of_image == i) for i, name in enumerate(names)}
    empty = [name for name, idx in out.items() if idx.size == 0]
    if empty:
        raise ValueError(
            f"only {num_groups} {unit}: too few to fill the {'/'.join(empty)} split(s) at fractions {dict(fractions)}. "
            "HINT: add images, or give the splits yourself"
        )
    return out


def check_no_shared_groups(groups_by_split: Mapping[str, Iterable[Hashable]]) -> None:
    """Raise :class:`LeakageError` when a group (patient) ID appears in two splits, naming IDs and splits."""
    first_split: dict[Hashable, str] = {}
    shared: list[str] = []
    for split, groups in groups_by_split.items():
        for group in dict.fromkeys(groups):
            other = first_split.setdefault(group, split)
            if other != split:
                shared.append(f"'{group}' ({other} and {split})")
    if shared:
        raise LeakageError(
            f"{len(shared)} patient(s) are in two splits: {', '.join(shared[:10])}"
            f"{' ...' if len(shared) > 10 else ''}. A patient's images must all be in one split"
        )


def check_no_shared_images(files_by_split: Mapping[str, Iterable[tuple[Path, str]]]) -> None:
    """Raise :class:`LeakageError` when one image file (same sha256 of its bytes) is in two splits.

    Args:
        files_by_split: ``(path, sha256 hex digest)`` pairs per split.

    Only byte-identical copies are found; a re-encoded or resized copy of an image is not.
    """
    first: dict[str, tuple[str, Path]] = {}
    leaks: list[str] = []
    for split, files in files_by_split.items():
        for path, digest in files:
            other_split, other_path = first.setdefault(digest, (split, path))
            if other_split != split:
                leaks.append(f"{other_path} ({other_split}) and {path} ({split})")
    if leaks:
        raise LeakageError(
            f"{len(leaks)} image(s) are in two splits (identical file content): {'; '.join(leaks[:10])}"
            f"{' ...' if len(leaks) > 10 else ''}. HINT: remove the duplicate copies, so test images are never trained on"
        )
