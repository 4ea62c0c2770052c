"""Log plain Python numbers from a callback without a GPU round trip.

``LightningModule.log(name, 0.0)`` turns a Python number into a tensor *on the device* every step,
and that host-to-device copy of pageable memory makes the host wait for every queued kernel: one
forced synchronisation per step, per value, which a small-image GPU run cannot afford. Values the
host already knows (a schedule's phase, a count of frozen groups) go straight to the loggers
instead, and only at the steps Lightning writes its own logs (``log_every_n_steps``), as Lightning's
``LearningRateMonitor`` does.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L


def log_host_scalars(trainer: L.Trainer, metrics: Mapping[str, float]) -> None:
    """Send ``metrics`` to every logger if Lightning writes logs at this training step."""
    if not trainer.loggers:
        return
    connector = trainer._logger_connector
    if not connector.should_update_logs:
        return
    step = trainer.fit_loop.epoch_loop._batches_that_stepped
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)
