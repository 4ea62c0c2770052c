"""What a run's checkpoint selection saw: the kept weights' score, and the monitored value per epoch.

The best checkpoint's validation AUC is the maximum of one noisy reading per epoch, so it overstates
the model by more the noisier the curve is: a fine-tune whose body moves reads higher than a frozen
body's smooth curve of the same level. Comparing recipes by it favours the noisy one. The mean of the
monitored value over the second half of training is not selected on, and is what the study's
``auto: {..., by: late_mean}`` choice compares (:mod:`smallmed.study.derived`).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


class MonitorHistory(Callback):
    """Record ``monitor`` after every validation of the fit (not the sanity check); a resumed fit
    records the epochs it runs, not those before the checkpoint."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor
        self.values: list[float] = []

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if not trainer.sanity_checking and value is not None:
            self.values.append(float(value))


def late_mean(values: Sequence[float]) -> float | None:
    """The mean of the second half of ``values`` (the last one alone for a single value); ``None`` if empty."""
    if not values:
        return None
    late = values[len(values) // 2:]
    return sum(late) / len(late)


def selection_score(trainer: L.Trainer) -> float | None:
    """The monitored validation value of the weights the run kept (the best checkpoint's, or the
    in-memory best's), as a float; ``None`` without selection."""
    from smallmed.callbacks import BestWeightsInMemory

    selector = _selector(trainer)
    kept = "best_score" if isinstance(selector, BestWeightsInMemory) else "best_model_score"
    score = getattr(selector, kept, None)
    return None if score is None else float(score)


def selection_monitor(trainer: L.Trainer) -> str | None:
    """The metric the run selects its weights by (in-memory best or checkpoint callback); ``None`` without."""
    return getattr(_selector(trainer), "monitor", None)


def _selector(trainer: L.Trainer) -> Callback | None:
    """The callback that keeps the run's best weights: the study's in-memory best, else the checkpoint callback."""
    from smallmed.callbacks import BestWeightsInMemory

    in_memory = next((c for c in trainer.callbacks if isinstance(c, BestWeightsInMemory)), None)
    return in_memory if in_memory is not None else trainer.checkpoint_callback
