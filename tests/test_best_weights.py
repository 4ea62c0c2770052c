"""BestWeightsInMemory: ModelCheckpoint's selection rule, with the weights kept on the device."""

from __future__ import annotations

import pytest
import torch

from smallmed.callbacks import BestWeightsInMemory


class _FakeTrainer:
    sanity_checking = False

    def __init__(self) -> None:
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.current_epoch = 0


def _validate(callback, trainer, model, epoch, value):
    trainer.current_epoch = epoch
    trainer.callback_metrics["val/auroc"] = torch.tensor(value)
    with torch.no_grad():
        model.weight.fill_(float(epoch))
    callback.on_validation_end(trainer, model)


def test_keeps_the_first_of_equal_best_scores_and_restores_them():
    model, trainer, callback = torch.nn.Linear(2, 1), _FakeTrainer(), BestWeightsInMemory("val/auroc", "max")
    for epoch, value in enumerate([0.5, 0.7, 0.7, 0.6]):
        _validate(callback, trainer, model, epoch, value)
    assert callback.best_score == pytest.approx(0.7) and callback.best_epoch == 1
    callback.on_fit_end(trainer, model)
    assert torch.all(model.weight == 1.0)


def test_min_mode_and_sanity_check_is_ignored():
    model, trainer, callback = torch.nn.Linear(2, 1), _FakeTrainer(), BestWeightsInMemory("val/auroc", "min")
    trainer.sanity_checking = True
    _validate(callback, trainer, model, 0, 0.0)
    assert callback.best_score is None
    trainer.sanity_checking = False
    for epoch, value in enumerate([0.5, 0.3, 0.4], start=1):
        _validate(callback, trainer, model, epoch, value)
    assert callback.best_epoch == 2


def test_missing_metric_and_bad_mode_are_named():
    with pytest.raises(ValueError, match="mode"):
        BestWeightsInMemory(mode="best")
    callback = BestWeightsInMemory("val/dice")
    with pytest.raises(KeyError, match="val/dice"):
        callback.on_validation_end(_FakeTrainer(), torch.nn.Linear(2, 1))
