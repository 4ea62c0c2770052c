"""Keep the best weights in memory instead of writing checkpoints: model selection for many short runs.

A 30-epoch run on 50 images that improves its validation AUC ten times writes ten full checkpoints
(weights and Adam state, about 40 MB each for EfficientNet-Lite0), only to read the last one back
for the test. In a study of hundreds of runs that is seconds of disk I/O per run for a file nobody
keeps. :class:`BestWeightsInMemory` applies :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s
selection rule (the first validation, then strict improvements of the monitored value) to a copy of
the ``state_dict`` held on the model's own device, and puts the best weights back when fitting ends,
so ``trainer.test(model)`` tests exactly what ``ckpt_path="best"`` would have loaded.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.model_helpers import is_overridden
from typing_extensions import override


class BestWeightsInMemory(Callback):
    """Snapshot the weights at the best ``monitor`` value; restore them at the end of ``fit``.

    Args:
        monitor: a logged validation metric, e.g. ``val/auroc``.
        mode: ``max`` or ``min``.

    Attributes:
        best_score: the best value seen (``None`` before the first validation).
        best_epoch: the epoch it was reached in.

    Example:
        >>> trainer = L.Trainer(enable_checkpointing=False, callbacks=[BestWeightsInMemory("val/auroc")])  # doctest: +SKIP
        >>> trainer.fit(model, datamodule=dm); trainer.test(model, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(self, monitor: str = "val/auroc", mode: Literal["max", "min"] = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    @property
    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The weights restored at the end of fit; another callback may replace them (WiSE-FT's mix)."""
        return self._best_state

    @best_state.setter
    def best_state(self, state: dict[str, torch.Tensor]) -> None:
        self._best_state = state

    def _improves(self, value: float) -> bool:
        if self.best_score is None:
            return True
        return value > self.best_score if self.mode == "max" else value < self.best_score

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            raise KeyError(f"BestWeightsInMemory: metric {self.monitor!r} was not logged; logged: {sorted(trainer.callback_metrics)}")
        value = float(value)  # one read-back per validation, as ModelCheckpoint does
        if self._improves(value):
            self.best_score, self.best_epoch = value, trainer.current_epoch
            self._best_state = self._checkpoint_state(trainer, pl_module)

    def _checkpoint_state(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """The ``state_dict`` a checkpoint written now would hold: other callbacks may change it in their
        ``on_save_checkpoint`` (Lightning's ``WeightAveraging`` puts the averaged weights there)."""
        checkpoint = {"state_dict": {k: v.detach().clone() for k, v in pl_module.state_dict().items()}}
        for callback in getattr(trainer, "callbacks", []):
            if callback is not self and is_overridden("on_save_checkpoint", callback, Callback):
                callback.on_save_checkpoint(trainer, pl_module, checkpoint)
        return {k: v.detach().clone() for k, v in checkpoint["state_dict"].items()}

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._best_state is not None:
            pl_module.load_state_dict(self._best_state)
