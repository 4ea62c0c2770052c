"""Stochastic weight averaging that fits a one-cycle run with model selection: a uniform average of
the weights after every step from a fraction of the run on.

Lightning's own :class:`~lightning.pytorch.callbacks.StochasticWeightAveraging` swaps the LR schedule
for its own at the start epoch (the one cycle is cut off) and validates the live weights, so a run
that keeps its best validated checkpoint throws the average away. This builds on Lightning's
:class:`~lightning.pytorch.callbacks.WeightAveraging` instead: validation and checkpoints see the
average, and the one cycle's low-LR tail plays SWA's constant LR (Izmailov et al., UAI 2018). Before
the start the "average" follows the live weights, so the early epochs validate what is training.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from typing_extensions import override


class UniformWeightAveraging(WeightAveraging):
    """SWA: the equal-weight average of the weights after each optimizer step from ``start`` on.

    Args:
        start: where averaging begins, as a fraction of the run's optimizer steps (0.5: the second half).
        use_buffers: average BatchNorm's running statistics too (else they are the live model's).
        device: where the average is kept (``None``: the model's device).

    Example:
        >>> trainer = L.Trainer(callbacks=[UniformWeightAveraging(start=0.5)])  # doctest: +SKIP
    """

    def __init__(self, start: float = 0.5, use_buffers: bool = True, device: str | None = None) -> None:
        if not 0.0 <= start < 1.0:
            raise ValueError(f"UniformWeightAveraging: start is a fraction of the run in [0, 1), got {start}")
        super().__init__(device=device, use_buffers=use_buffers)  # AveragedModel's default: the equal average
        self.start = start
        self.start_step = 0

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = int(self.start * trainer.estimated_stepping_batches)

    @override
    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step <= self.start_step and self._average_model is not None:
            self._average_model.n_averaged.zero_()  # the next update copies: the average starts afresh
