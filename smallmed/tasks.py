"""Loss, output activation and torchmetrics for the three classification tasks.

``binary`` follows the paper: one logit and BCE-with-logits. ``multiclass`` uses cross-entropy over
``num_classes`` logits, ``multilabel`` one BCE logit per label. Metrics are ROC AUC (macro and per
class where there is more than one class), accuracy and F1.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import AUROC, Accuracy, F1Score, StatScores

Task = Literal["binary", "multiclass", "multilabel"]
TASKS = ("binary", "multiclass", "multilabel")


def check_task(task: str, num_classes: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "binary" and num_classes != 2:
        raise ValueError(f"task 'binary' needs num_classes=2, got {num_classes}; HINT: use task 'multiclass'")
    if task != "binary" and num_classes < 2:
        raise ValueError(f"task {task!r} needs num_classes >= 2, got {num_classes}")


def num_outputs(task: Task, num_classes: int) -> int:
    return 1 if task == "binary" else num_classes


def loss(task: Task, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task == "binary":
        return F.binary_cross_entropy_with_logits(logits.squeeze(1), target.float())
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float())
    return F.cross_entropy(logits, target.long())


def probabilities(task: Task, logits: torch.Tensor) -> torch.Tensor:
    """Scores per class: sigmoid for binary (shape ``(B,)``) and multilabel, softmax for multiclass."""
    if task == "binary":
        return torch.sigmoid(logits.squeeze(1))
    if task == "multilabel":
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def metrics(task: Task, num_classes: int, prefix: str) -> MetricCollection:
    """Summary metrics (logged every epoch) under ``prefix`` e.g. ``val/``."""
    kw: dict = {"task": task}
    if task == "multiclass":
        kw["num_classes"] = num_classes
    elif task == "multilabel":
        kw["num_labels"] = num_classes
    f1_kw = kw if task == "binary" else {**kw, "average": "macro"}
    collection = {"auroc": AUROC(**kw), "acc": Accuracy(**kw), "f1": F1Score(**f1_kw),
                  # tp, fp, tn, fn, support (per class): which AUCs the split can define
                  "stats": StatScores(**kw) if task == "binary" else StatScores(**kw, average="none")}
    if task != "binary":
        collection["auroc_per_class"] = AUROC(**kw, average="none")
    return MetricCollection(collection, prefix=prefix)


def split_aurocs(computed: dict[str, torch.Tensor], prefix: str = "") -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(headline, per_class, defined)`` from a computed :func:`metrics` collection, whose ``stats`` and
    ``auroc_per_class`` entries it pops. An AUC needs positives and negatives: a class the split lacks
    gets NaN, and the headline averages only the classes it can measure (torchmetrics counts 0)."""
    defined = defined_aucs(computed.pop(f"{prefix}stats"))
    per_class = computed.pop(f"{prefix}auroc_per_class", None)
    nan = torch.tensor(float("nan"), device=defined.device)
    if per_class is not None:
        per_class = torch.where(defined, per_class, nan)
        return (per_class[defined].mean() if defined.any() else nan), per_class, defined
    return (computed[f"{prefix}auroc"] if defined.all() else nan), None, defined


def defined_aucs(stats: torch.Tensor) -> torch.Tensor:
    """Which classes (one entry for ``binary``) have an AUC on this split: some positives and some negatives.

    ``stats`` is torchmetrics' ``StatScores``: ``(5,)`` or ``(C, 5)`` of tp, fp, tn, fn, support.
    """
    stats = stats.reshape(-1, 5)
    positives = stats[:, 4]
    return (positives > 0) & (stats[:, :4].sum(dim=1) - positives > 0)
