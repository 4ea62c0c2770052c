"""The report's numbers: decisions, confident mistakes, ROC curves and confusion matrices from test outputs.

Pure functions on the gathered probabilities and targets (``binary``, ``multiclass`` or ``multilabel``),
kept apart from the callback that collects them and the figures that draw them, so they can be
tested and reused on their own: no Lightning, no W&B, no matplotlib here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


def predicted_classes(task: str, probs: torch.Tensor) -> torch.Tensor:
    """One class per image: ``p >= 0.5`` (binary), argmax (multiclass), most probable label (multilabel)."""
    if task == "binary":
        return (probs >= 0.5).long()
    return probs.argmax(dim=1)


def confidently_wrong(task: str, probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(wrong, confidence)`` per image: wrong at the 0.5 / argmax decision, and how sure the model was.

    Confidence is the probability given to the wrong answer: the predicted class's probability
    (binary, multiclass), or for multi-label the largest probability put on a wrong side of 0.5.
    """
    targets = targets.long()
    if task == "multilabel":
        wrong_side = torch.where(targets.bool(), 1 - probs, probs)  # probability of the wrong answer per label
        errors = (probs >= 0.5).long() != targets
        confidence = torch.where(errors, wrong_side, torch.zeros_like(wrong_side)).amax(dim=1)
        return errors.any(dim=1), confidence
    predicted = predicted_classes(task, probs)
    confidence = torch.where(predicted.bool(), probs, 1 - probs) if task == "binary" else probs.amax(dim=1)
    return predicted != targets, confidence


def one_vs_rest(task: str, probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores and 0/1 targets ``(N, K)`` per class: binary as two columns ``1 - p`` and ``p``."""
    targets = targets.long()
    if task == "binary":
        return torch.stack([1 - probs, probs], dim=1), torch.stack([1 - targets, targets], dim=1)
    if task == "multiclass":
        return probs, torch.nn.functional.one_hot(targets, num_classes)
    return probs, targets


@dataclass
class ClassCurve:
    """One class's ROC curve and AUC (``nan`` without both positives and negatives)."""

    name: str
    auc: float
    positives: int
    negatives: int
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)


def class_curves(task: str, probs: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> list[ClassCurve]:
    """ROC curve and AUC per class (one-vs-rest; for binary both classes, with equal AUCs)."""
    from torchmetrics.functional.classification import binary_auroc, binary_roc

    scores, truth = one_vs_rest(task, probs.float(), targets, len(class_names))
    out = []
    for k, name in enumerate(class_names):
        s, t = scores[:, k], truth[:, k]
        pos = int(t.sum())
        neg = len(t) - pos
        if pos == 0 or neg == 0:  # AUC undefined: say so instead of a misleading 0 or 0.5
            out.append(ClassCurve(name, float("nan"), pos, neg, np.array([]), np.array([])))
            continue
        fpr, tpr, _ = binary_roc(s, t)
        out.append(ClassCurve(name, float(binary_auroc(s, t)), pos, neg, fpr.numpy(), tpr.numpy()))
    return out


def confusion_matrices(task: str, probs: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> dict[str, np.ndarray]:
    """``{panel title: counts}``: one ``(K, K)`` matrix (title ``""``), or one 2x2 (absent / present) per label.

    Rows are the true class, columns the predicted one.
    """
    targets = targets.long()
    if task == "multilabel":
        predicted = (probs >= 0.5).long()
        return {
            name: torch.bincount(targets[:, k] * 2 + predicted[:, k], minlength=4).reshape(2, 2).numpy()
            for k, name in enumerate(class_names)
        }
    k = len(class_names)
    predicted = predicted_classes(task, probs)
    return {"": torch.bincount(targets * k + predicted, minlength=k * k).reshape(k, k).numpy()}
