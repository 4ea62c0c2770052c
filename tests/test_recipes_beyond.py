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


# ------------------------------------------------------------------------------ weight averaging
class StepWeights(L.Callback):
    """The live weights after every optimizer step."""

    def __init__(self) -> None:
        self.after_step: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_step.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_uniform_weight_averaging_is_the_mean_of_the_steps_after_its_start():
    from smallmed.callbacks import UniformWeightAveraging

    L.seed_everything(0, verbose=False)
    model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, lr=1e-2)
    train, val = loaders()  # 4 steps an epoch, 8 in all: averaging from the 5th
    swa, steps, best = UniformWeightAveraging(start=0.5), StepWeights(), BestWeightsInMemory("val/loss", "min")
    trainer([swa, steps, best], max_epochs=2).fit(model, train, val)
    assert swa.start_step == 4 and len(steps.after_step) == 8
    weight = "backbone.conv_stem.weight"
    expected = torch.stack([s[weight] for s in steps.after_step[4:]]).mean(0)
    averaged = dict(swa._average_model.module.state_dict())
    torch.testing.assert_close(averaged[weight], expected)
    # the first epoch validated (and would have kept) the live weights of its end, not a stale copy
    assert best.best_epoch is not None
    if best.best_epoch == 0:
        torch.testing.assert_close(best.best_state[weight], steps.after_step[3][weight])
    with pytest.raises(ValueError, match=r"start is a fraction of the run in \[0, 1\)"):
        UniformWeightAveraging(start=1.0)


# ------------------------------------------------------------------------------------- WiSE-FT
def test_wise_ft_mixes_floats_and_keeps_the_named_keys_and_integer_buffers():
    from smallmed.callbacks import WiSEFT

    start = {"w": torch.zeros(3), "head.w": torch.zeros(2), "n": torch.tensor(1)}
    tuned = {"w": torch.ones(3), "head.w": torch.full((2,), 4.0), "n": torch.tensor(9)}
    mixed = WiSEFT.mix(start, tuned, 0.25, keep={"head.w"})
    torch.testing.assert_close(mixed["w"], torch.full((3,), 0.25))
    torch.testing.assert_close(mixed["head.w"], tuned["head.w"])
    assert mixed["n"].item() == 9
    with pytest.raises(ValueError, match=r"alphas must be in \[0, 1\]"):
        WiSEFT(alphas=[0.5, 1.5])


def test_wise_ft_tests_the_mix_it_chose_on_the_validation_split():
    from smallmed.callbacks import HeadReparameterization, WiSEFT
    from smallmed.callbacks.wise_ft import validation_auroc

    class Ends(L.Callback):
        """The weights at the first step, and the in-memory best as WiSE-FT finds it at the end of fit."""

        def __init__(self, best: BestWeightsInMemory) -> None:
            self.best = best

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 0 and batch_idx == 0:
                self.start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

        def on_fit_end(self, trainer, pl_module):
            self.tuned = {k: v.clone() for k, v in self.best.best_state.items()}

    L.seed_everything(0, verbose=False)
    model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, lr=3e-2)
    train, val = loaders()
    best = BestWeightsInMemory("val/auroc")
    wise, ends = WiSEFT(alphas=[0.0, 0.5, 1.0]), Ends(best)
    fitted = trainer([HeadReparameterization(), ends, wise, best], max_epochs=2)
    fitted.fit(model, train, val)

    assert set(wise.scores) == {0.0, 0.5, 1.0} and wise.scores[wise.alpha] == max(wise.scores.values())
    head = {k for k in model.state_dict() if k.startswith("backbone.classifier.")}
    assert head and not torch.equal(ends.start["backbone.conv_stem.weight"], ends.tuned["backbone.conv_stem.weight"])
    expected = WiSEFT.mix(ends.start, ends.tuned, wise.alpha, keep=head)
    for key, value in model.state_dict().items():  # what the run tests: the chosen mix, with the fine-tuned head
        torch.testing.assert_close(value, expected[key], msg=key)
    assert validation_auroc(fitted, model) == pytest.approx(wise.scores[wise.alpha])


def test_wise_ft_writes_its_mix_beside_the_best_checkpoint_and_test_loads_it(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from smallmed.callbacks import WiSEFT

    L.seed_everything(0, verbose=False)
    model = SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, lr=3e-2)
    train, val = loaders()
    wise = WiSEFT(alphas=[0.0, 0.5])  # 1 left out: the mix always differs from the best checkpoint
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/auroc", mode="max")
    fitted = trainer([wise, checkpoint], max_epochs=2, enable_checkpointing=True)
    fitted.fit(model, train, val)
    assert checkpoint.best_model_path == str(tmp_path / "wise_ft.ckpt")
    mixed = torch.load(checkpoint.best_model_path, weights_only=False)["state_dict"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, mixed[key], msg=key)
    fitted.test(model, val, ckpt_path="best", verbose=False)  # loads the mix
    torch.testing.assert_close(model.state_dict()["backbone.conv_stem.weight"], mixed["backbone.conv_stem.weight"])
