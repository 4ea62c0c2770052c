"""The report's text: the test-metrics table printed on the console, and the titles of image panels.

Plain strings from numbers and tensors, with no I/O of their own: the callback prints the table and
hands the titles to :mod:`smallmed.report.plots`, so the wording lives here and nowhere else.
"""

from __future__ import annotations

from typing import Any

import torch


def label_text(task: str, target: torch.Tensor, class_names: list[str]) -> str:
    if task == "multilabel":
        present = [class_names[i] for i in torch.nonzero(target).reshape(-1).tolist()]
        return "+".join(present) or "none"
    return class_names[int(target)]


def prediction_text(task: str, probs: torch.Tensor, names: list[str]) -> str:
    if task == "binary":
        p = float(probs)
        return f"pred {names[int(p >= 0.5)]} {max(p, 1 - p):.2f}"
    if task == "multilabel":
        present = [f"{names[i]} {float(probs[i]):.2f}" for i in torch.nonzero(probs >= 0.5).reshape(-1).tolist()]
        return "pred " + ("+".join(present) or "none")
    k = int(probs.argmax())
    return f"pred {names[k]} {float(probs[k]):.2f}"


def metrics_table(metrics: dict[str, Any], images: int | None = None, prefix: str = "test/") -> str:
    """A short plain-text table of the ``prefix`` metrics: summary metrics first, then per class.

    Example:
        >>> print(metrics_table({"test/auroc": 0.91, "test/acc": 0.8}))  # doctest: +NORMALIZE_WHITESPACE
        test metrics
          metric    value
          auroc    0.9100
          acc      0.8000
    """
    values = {k[len(prefix):]: float(v) for k, v in metrics.items() if k.startswith(prefix) and torch.as_tensor(v).numel() == 1}
    order = ["auroc", "acc", "f1", "loss"]
    keys = [k for k in order if k in values] + sorted(k for k in values if k not in order)
    width = max([len("metric"), *map(len, keys)])
    head = "test metrics" + (f" ({images} images)" if images is not None else "")
    lines = [head, f"  {'metric':<{width}}  {'value':>7}"]
    lines += [f"  {k:<{width}}  {values[k]:>7.4f}" for k in keys]
    return "\n".join(lines)
