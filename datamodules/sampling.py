"""Seeded, nested small-subset sampling: the N training images a small-data experiment uses.

Every subset is a *prefix of one seeded ordering* of the training set, so with one seed the
50-image subset lies inside the 100-image subset, which lies inside the 200 (learning curves compare
like with like), and changing N never changes which images the smaller subsets hold.

Orderings:
    balanced:   round-robin over classes (N/C per class, the paper's choice);
    stratified: interleaved by each class's share, so every prefix keeps the class proportions;
    random:     one seeded permutation (for multi-label targets, where classes overlap).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

Sampling = Literal["balanced", "stratified", "random"]
SAMPLINGS = ("balanced", "stratified", "random")


class SubsetTooLargeError(ValueError):
    """A requested subset needs more images of a class than the class holds."""


def _class_permutations(labels: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {int(c): rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}


def subset_order(labels: Sequence[int] | np.ndarray, seed: int, sampling: Sampling = "balanced") -> np.ndarray:
    """Indices of the whole training set in the order subsets take them (a subset of N is ``[:N]``)."""
    labels = np.asarray(labels)
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; choose one of {', '.join(SAMPLINGS)}")
    if sampling == "random" or labels.ndim > 1:
        return np.random.default_rng(seed).permutation(len(labels))
    perms = _class_permutations(labels, seed)
    keyed = []
    for ci, (c, perm) in enumerate(sorted(perms.items())):
        for rank, idx in enumerate(perm):
            key = rank if sampling == "balanced" else (rank + 0.5) / len(perm)
            keyed.append((key, ci, idx))
    keyed.sort(key=lambda t: (t[0], t[1]))
    return np.array([idx for _, _, idx in keyed], dtype=np.int64)


def sample_subset(
    labels: Sequence[int] | np.ndarray,
    size: int | None = None,
    seed: int = 0,
    sampling: Sampling = "balanced",
    per_class: Mapping[int, int] | None = None,
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Indices of a seeded training subset, nested across sizes for one seed.

    Args:
        labels: class index per training image (1-D); 2-D multi-hot labels allow ``random`` only.
        size: images to draw; ``None`` keeps all of them.
        seed: the subset seed. The same seed always gives the same ordering.
        sampling: ``balanced`` (N/C per class), ``stratified`` (proportional) or ``random``.
        per_class: explicit ``{class index: count}`` instead of ``size``.
        class_names: names used in error messages.

    Raises:
        SubsetTooLargeError: a class holds fewer images than the subset needs from it (the message
            names the class and its count).

    Example:
        >>> labels = [0] * 10 + [1] * 30
        >>> sorted(np.bincount(np.asarray(labels)[sample_subset(labels, 8, seed=1)]))
        [4, 4]
    """
    labels = np.asarray(labels)
    names = list(class_names) if class_names is not None else None

    def describe(c: int) -> str:
        return f"class {names[c]!r} (label {c})" if names and c < len(names) else f"class {c}"

    if per_class is not None:
        if size is not None:
            raise ValueError("give either a subset size or per-class counts, not both")
        perms = _class_permutations(labels, seed)
        chosen = []
        for c, n in sorted(per_class.items()):
            c = int(c)
            available = len(perms.get(c, ()))
            if n > available:
                raise SubsetTooLargeError(f"{describe(c)} holds {available} training images; {n} were asked for")
            chosen.append(perms[c][:n])
        return np.sort(np.concatenate(chosen)) if chosen else np.array([], dtype=np.int64)
    if size is None:
        return np.arange(len(labels))
    if size < 1:
        raise ValueError(f"train_size must be positive, got {size}")
    if size > len(labels):
        raise SubsetTooLargeError(f"train_size={size} but the training split holds {len(labels)} images")
    if sampling == "balanced" and labels.ndim == 1:
        classes, counts = np.unique(labels, return_counts=True)
        base, extra = divmod(size, len(classes))  # round-robin: the first `extra` classes take one more
        for i, (c, count) in enumerate(zip(classes, counts)):
            need = base + (1 if i < extra else 0)
            if count < need:
                raise SubsetTooLargeError(
                    f"{describe(int(c))} holds {count} training images; a balanced subset of {size} "
                    f"needs {need} of it. HINT: use data.init_args.train_size <= {count * len(classes) + i} or data.init_args.sampling: stratified"
                )
    return np.sort(subset_order(labels, seed, sampling)[:size])


def hold_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(kept, held)`` into ``labels``: ``fraction`` of each class held out (at least one image,
    and at least one kept), drawn with ``seed``. Multi-label rows are held out at random."""
    rng = np.random.default_rng([seed, 7919])
    if labels.ndim > 1:
        order = rng.permutation(len(labels))
        k = max(1, round(fraction * len(labels)))
        return np.sort(order[k:]), np.sort(order[:k])
    held = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        k = min(len(members) - 1, max(1, round(fraction * len(members))))
        held.append(members[:k])
    held_idx = np.sort(np.concatenate(held)) if held else np.array([], dtype=int)
    return np.setdiff1d(np.arange(len(labels)), held_idx), held_idx


def fold_out(labels: np.ndarray, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(kept, held)`` into ``labels``: fold ``fold`` of ``folds`` stratified folds held out.
    Each class is shuffled with ``seed`` and dealt round the folds, continuing where the previous class
    stopped, so the folds differ in size by one image at most and a class of at least ``folds`` images
    is in every fold. The ``folds`` held-out sets of one seed partition ``labels``."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not one of the {folds} folds (0..{folds - 1})")
    rng = np.random.default_rng([seed, 7919])
    if labels.ndim > 1:
        order = rng.permutation(len(labels))
    else:
        order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    held = np.sort(order[np.arange(len(order)) % folds == fold])
    return np.setdiff1d(np.arange(len(labels)), held), held


def class_counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Images per class (per label for multi-hot labels)."""
    labels = np.asarray(labels)
    if labels.ndim > 1:
        return [int(v) for v in labels.sum(axis=0)]
    return [int(v) for v in np.bincount(labels.astype(np.int64), minlength=num_classes)]
