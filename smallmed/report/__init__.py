"""The run report: what a run shows of itself, as PNG / CSV files beside the log and as W&B media.

One job per module, so each can be read, tested and changed alone:

- :mod:`~smallmed.report.callback`: :class:`RunReport`, the Lightning hooks deciding what to draw when;
- :mod:`~smallmed.report.numbers`: the metric maths on test outputs (pure tensor functions);
- :mod:`~smallmed.report.plots`: the matplotlib figures, drawn into PNG files;
- :mod:`~smallmed.report.gradcam`: class-activation heatmaps for timm CNNs, and their overlays;
- :mod:`~smallmed.report.media`: CSV files, and sending every file to W&B;
- :mod:`~smallmed.report.console`: the console table of test metrics and the panels' titles.
"""

from smallmed.report.callback import RunReport, report_dir
from smallmed.report.console import metrics_table
from smallmed.report.numbers import (
    ClassCurve,
    class_curves,
    confidently_wrong,
    confusion_matrices,
    one_vs_rest,
    predicted_classes,
)

__all__ = [
    "ClassCurve",
    "RunReport",
    "class_curves",
    "confidently_wrong",
    "confusion_matrices",
    "metrics_table",
    "one_vs_rest",
    "predicted_classes",
    "report_dir",
]
