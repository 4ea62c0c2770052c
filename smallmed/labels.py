"""The class a row of probabilities names: one rule for ``predict`` CSVs and for blends of them."""

from __future__ import annotations

from collections.abc import Sequence

MULTILABEL_THRESHOLD = 0.5


def predicted_label(names: Sequence[str], probs: Sequence[float], multilabel: bool) -> str:
    """The most probable class; for a multi-label model every label at the threshold or above, ``+``-joined."""
    if multilabel:
        return "+".join(n for n, p in zip(names, probs) if p >= MULTILABEL_THRESHOLD)
    return names[max(range(len(probs)), key=probs.__getitem__)]
