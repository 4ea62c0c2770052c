"""Each study cell's test probabilities on disk, so that ensembles can be formed after the runs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override


def predictions_path(out: Path, cell_name: str, seed: int) -> Path:
    return Path(out) / "predictions" / cell_name / f"seed{seed}.pt"


class SaveTestProbabilities(Callback):
    """Write the test split's probabilities and labels (what ``test_step`` returns, and the batch's
    labels) to ``path`` when testing ends: ``{"task", "probs", "targets"}``.

    Args:
        path: the file to write (a temporary file first, then renamed: never half-written).
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._probs, self._targets = [], []

    @override
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        self._probs.append(outputs.detach().float().cpu())
        self._targets.append(batch[1].detach().cpu())

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:  # each rank holds a padded shard: an ensemble of them would not be the test split
            rank_zero_warn("SaveTestProbabilities: a multi-process test run; its probabilities are not saved")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        task = getattr(pl_module, "task", "multiclass")  # smallmed's model: binary, multiclass or multilabel
        torch.save({"task": task, "probs": torch.cat(self._probs), "targets": torch.cat(self._targets)}, tmp)
        tmp.replace(self.path)
