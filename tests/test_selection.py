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
