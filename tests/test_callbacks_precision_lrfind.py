"""The three fine-tuning callbacks together under bf16-mixed precision and Lightning's LR finder."""

from __future__ import annotations

import math

import pytest
import torch
from helpers_head import StartProbe, TensorDataModuleWithVal, class_data, single_thread, tiny_trainer
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.tuner import Tuner

from smallmed.callbacks import DiscriminativeLR, GradualUnfreezing, HeadReparameterization
from smallmed.model import SmallMedClassifier

EARLY = "backbone.conv_stem.weight"  # first parameter of test_efficientnet: the early body group
LATE = "backbone.conv_head.weight"  # last body parameter: the late body group


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with single_thread():
        yield


def _model(**kwargs) -> SmallMedClassifier:
    torch.manual_seed(0)
    return SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, in_chans=1, **kwargs)


def _data(counts=(18, 6), batch_size=8) -> TensorDataModuleWithVal:
    x, y = class_data(counts, channels=1, uint8=True, shift=0.5)
    return TensorDataModuleWithVal(x, y, batch_size=batch_size, shuffle=True)


def _callbacks(mode: str = "reinit", **head_kwargs):
    return [
        GradualUnfreezing(milestones=[0.3, 0.6]),
        DiscriminativeLR(ratio=1 / 3),
        HeadReparameterization(mode=mode, **head_kwargs),
    ]


def _assert_discriminative(trainer) -> None:
    """One named param group per layer group, at lr/9, lr/3 and lr (the ratios hold under one-cycle)."""
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["early", "late", "head"]
    assert [g["lr"] / groups[-1]["lr"] for g in groups] == pytest.approx([1 / 9, 1 / 3, 1])


class StepProbe(StartProbe):
    """Which watched parameters train at each step."""

    def __init__(self, watch: str) -> None:
        super().__init__(watch)
        self.trainable: list[tuple[bool, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        params = dict(pl_module.named_parameters())
        self.trainable.append((params[EARLY].requires_grad, params[LATE].requires_grad))


@pytest.mark.parametrize("mode", ["reinit", "linear_probe"])
def test_bf16_mixed_fit_with_all_three_callbacks(mode):
    model = _model(lr=1e-2)
    early_before = model.backbone.conv_stem.weight.detach().clone()
    probe = StepProbe(EARLY)
    # A randomly initialised test_efficientnet in eval mode gives tiny features (std ~1e-3): with the
    # default L2 penalty the probe could barely move off the prior, so this run probes without it.
    callbacks = _callbacks(mode, probe_weight_decay=0.0) if mode == "linear_probe" else _callbacks(mode)
    trainer = tiny_trainer([*callbacks, probe], max_steps=10, precision="bf16-mixed")
    trainer.fit(model, datamodule=_data())

    assert trainer.global_step == 10
    # head first, the late body at 30%, the early body at 60% of the 10 steps
    assert probe.trainable == [(False, False)] * 3 + [(False, True)] * 3 + [(True, True)] * 4
    assert not torch.equal(model.backbone.conv_stem.weight, early_before)  # the early body trained after 60%
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    _assert_discriminative(trainer)
    # the head started from the prior (6 of 24) or from the probe
    if mode == "reinit":
        assert probe.head_state["bias"].item() == pytest.approx(math.log(0.25 / 0.75), abs=1e-5)
    else:
        prior_only = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
        assert callbacks[2].probe_loss is not None and callbacks[2].probe_loss < 0.5 * prior_only
    with torch.no_grad():
        logits = model.eval()(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    assert torch.isfinite(logits).all()


def test_tuner_lr_find_with_three_callbacks_then_fit_starts_frozen():
    model = _model(lr=1e-3)
    dm = _data(batch_size=6)  # 4 batches per epoch: the finder runs over several epochs
    probe = StepProbe(EARLY)
    callbacks = _callbacks()
    # the finder turns validation back on (limit_val_batches=num_training): keep it to the last epoch
    trainer = tiny_trainer([*callbacks, probe], max_steps=4, check_val_every_n_epoch=100)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    finder = Tuner(trainer).lr_find(model, datamodule=dm, num_training=20, early_stop_threshold=None)
    assert finder is not None and len(finder.results["lr"]) == 20
    suggestion = finder.suggestion()
    assert suggestion is not None and math.isfinite(suggestion) and suggestion > 0
    assert model.hparams.lr == suggestion
    # the finder's trial steps are undone
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state_before.items())

    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 4
    assert probe.first_batch_requires_grad is False
    assert probe.trainable[0] == (False, False)
    assert callbacks[2].applied
    _assert_discriminative(trainer)


def test_learning_rate_finder_callback_with_three_callbacks():
    model = _model(lr=1e-3)
    probe = StepProbe(EARLY)
    finder = LearningRateFinder(num_training_steps=20, early_stop_threshold=None)
    callbacks = _callbacks()
    trainer = tiny_trainer([*callbacks, finder, probe], max_steps=4, check_val_every_n_epoch=100)
    trainer.fit(model, datamodule=_data(batch_size=6))

    assert finder.optimal_lr is not None
    suggestion = finder.optimal_lr.suggestion()
    assert suggestion is not None and math.isfinite(suggestion) and suggestion > 0
    assert trainer.global_step == 4  # the real run, after the finder's steps were undone
    assert probe.first_batch_requires_grad is False
    assert probe.trainable[0] == (False, False)
    assert callbacks[2].applied
    _assert_discriminative(trainer)
