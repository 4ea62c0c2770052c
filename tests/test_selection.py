"""smallmed.selection: the monitored value per epoch, and the late mean an auto choice compares."""

from __future__ import annotations

import pytest
import torch

from smallmed.selection import MonitorHistory, late_mean


class _FakeTrainer:
    def __init__(self) -> None:
        self.sanity_checking = False
        self.callback_metrics: dict[str, torch.Tensor] = {}


def test_history_records_each_validation_of_the_fit_but_not_the_sanity_check():
    trainer, history = _FakeTrainer(), MonitorHistory("val/auroc")
    trainer.sanity_checking = True
    trainer.callback_metrics["val/auroc"] = torch.tensor(0.1)
    history.on_validation_end(trainer, None)
    trainer.sanity_checking = False
    for value in (0.5, 0.75):
        trainer.callback_metrics["val/auroc"] = torch.tensor(value)
        history.on_validation_end(trainer, None)
    assert history.values == [0.5, 0.75]


def test_late_mean_is_the_mean_of_the_second_half():
    assert late_mean([]) is None
    assert late_mean([0.7]) == 0.7
    assert late_mean([0.9, 0.1, 0.5, 0.6]) == pytest.approx(0.55)
    assert late_mean([0.9, 0.1, 0.5, 0.6, 0.7]) == pytest.approx(0.6)  # an odd count: the middle value is late


def test_the_selection_is_read_from_the_in_memory_best_or_else_the_checkpoint_callback():
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from smallmed.callbacks import BestWeightsInMemory
    from smallmed.selection import selection_monitor, selection_score

    checkpoint = ModelCheckpoint(monitor="val/auroc", mode="max")
    checkpoint.best_model_score = torch.tensor(0.8)
    trainer = SimpleNamespace(callbacks=[checkpoint], checkpoint_callback=checkpoint)
    assert selection_monitor(trainer) == "val/auroc" and selection_score(trainer) == pytest.approx(0.8)
    in_memory = BestWeightsInMemory("val/loss", "min")
    in_memory.best_score = 0.3
    lean = SimpleNamespace(callbacks=[in_memory], checkpoint_callback=None)
    assert selection_monitor(lean) == "val/loss" and selection_score(lean) == pytest.approx(0.3)
    bare = SimpleNamespace(callbacks=[], checkpoint_callback=None)
    assert selection_monitor(bare) is None and selection_score(bare) is None
