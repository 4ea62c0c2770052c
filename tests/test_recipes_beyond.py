"""Recipes beyond the paper: layer-wise LR decay, norm-only and surgical fine-tuning, grey intensity
augmentation, EMA weights (each a config; the parts they need are tested here)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_speed import loaders, trainer

from smallmed.callbacks import GradualUnfreezing
from smallmed.callbacks.best_weights import BestWeightsInMemory
from smallmed.datamodules.intensity import OPERATIONS, GreyTrivialAugment, grey_trivial_augment
from smallmed.model import SmallMedClassifier
from smallmed.speed import SpeedUps


def test_surgical_fine_tuning_trains_the_chosen_group_and_the_head_only():
    L.seed_everything(0, verbose=False)
    model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, lr=1e-2, num_groups="stages")
    groups = model.layer_groups()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train, val = loaders()
    trainer([GradualUnfreezing(milestones=[], train_groups=["stage1"], bn_policy="freeze_all")], max_epochs=1,
            limit_val_batches=0).fit(model, train, val)
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved == set(groups["stage1"]) | set(groups["head"])


def test_train_groups_must_be_body_groups():
    model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, num_groups="stages")
    train, val = loaders()
    with pytest.raises(ValueError, match=r"train_groups \['head', 'stage99', 9\] are not body groups"):
        trainer([GradualUnfreezing(milestones=[], train_groups=["head", "stage99", 9])]).fit(model, train, val)


def test_grey_augmentation_at_strength_zero_changes_nothing_and_stays_in_range():
    x = torch.rand(64, 1, 16, 16)
    torch.testing.assert_close(grey_trivial_augment(x, strength=0.0), x)
    y = grey_trivial_augment(x, strength=1.0, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    changed = (y - x).abs().flatten(1).amax(dim=1) > 1e-6
    assert 0.6 < changed.float().mean() < 1.0  # one op in seven is the identity


def test_each_grey_operation_keeps_the_image_grey_and_its_geometry():
    x = torch.rand(4, 1, 16, 16)
    for name, op in OPERATIONS.items():
        if name == "noise":
            continue
        out = op(x, torch.full((4,), 0.8))
        # intensity only: the brightest pixel of a smooth image stays where it was (no shift, no warp)
        assert out.shape == x.shape, name
    smooth = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous()
    for name in ("brightness", "contrast", "gamma"):
        out = OPERATIONS[name](smooth, torch.tensor([0.5]))
        assert torch.all(out[..., 1:] >= out[..., :-1]), name  # the same ordering of grey levels: anatomy kept


def test_grey_augmentation_runs_on_both_data_paths(make_npz):
    from smallmed.datamodules import NpzDataModule

    for resident in (True, False):
        dm = NpzDataModule(str(make_npz()), image_size=24, augment="grey_trivial", device_resident=resident, batch_size=4)
        model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, lr=1e-2)
        trainer([], max_epochs=1, limit_val_batches=0).fit(model, datamodule=dm)
    assert isinstance(GreyTrivialAugment()(torch.zeros(1, 8, 8, dtype=torch.uint8)), torch.Tensor)
    with pytest.raises(ValueError, match="augment must be 'paper' or 'grey_trivial'"):
        NpzDataModule(str(make_npz()), augment="randaugment")


def test_in_memory_best_weights_are_the_averaged_ones_a_checkpoint_would_hold():
    from lightning.pytorch.callbacks import EMAWeightAveraging

    class LiveWeights(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    L.seed_everything(0, verbose=False)
    model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, lr=1e-2)
    train, val = loaders()
    ema, best, live, speed = EMAWeightAveraging(decay=0.5), BestWeightsInMemory("val/loss", "min"), LiveWeights(), SpeedUps()
    trainer([ema, best, live, speed], max_epochs=1).fit(model, train, val)
    assert speed.folds is False  # no folding under a callback that swaps weights in for validation
    averaged = {k.removeprefix("module."): v for k, v in ema._average_model.state_dict().items() if k.startswith("module.")}
    weight = "backbone.conv_stem.weight"
    torch.testing.assert_close(best._best_state[weight], averaged[weight])  # what was validated, and checkpointed
    assert not torch.equal(best._best_state[weight], live.state[weight])  # not the live weights of that moment
