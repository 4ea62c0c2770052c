"""DiscriminativeLR: per-group LR ratios hold at every step of OneCycleLR, cosine, LambdaLR and plateau."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger
from plain_module import PlainTimmModule, quiet_trainer, random_loader

from smallmed.callbacks import DiscriminativeLR, GradualUnfreezing
from smallmed.callbacks.discriminative_lr import lr_mult_multipliers, ratio_multipliers

PAPER = [1 / 9, 1 / 3, 1.0]


class LRCurve(Callback):
    """Per-group LRs as the optimizer uses them, at every training step."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.names = [g.get("name") for g in groups]
        self.lrs.append([g["lr"] for g in groups])


def run(scheduler: str, callbacks, epochs: int = 3, **module_kwargs):
    L.seed_everything(0)
    module = PlainTimmModule(scheduler=scheduler, **module_kwargs)
    curve = LRCurve()
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[*callbacks, curve])
    trainer.fit(module, train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))
    return module, curve, trainer


def reference_curve(scheduler: str, steps: int, lr: float = 1e-2, epochs: int = 3) -> list[float]:
    """The head's LR: the same scheduler on a one-parameter optimizer, stepped as Lightning steps it."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr)
    S = torch.optim.lr_scheduler
    sched = {
        "onecycle": lambda: S.OneCycleLR(opt, max_lr=lr, total_steps=steps),
        "cosine": lambda: S.CosineAnnealingLR(opt, T_max=steps),
        "warm_restarts": lambda: S.CosineAnnealingWarmRestarts(opt, T_0=4),
        "linear": lambda: S.LinearLR(opt, start_factor=0.1, total_iters=steps),
        "sequential": lambda: S.SequentialLR(
            opt, [S.LinearLR(opt, start_factor=0.1, total_iters=3), S.CosineAnnealingLR(opt, T_max=steps - 3)], milestones=[3]
        ),
    }[scheduler]()
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "warm_restarts", "linear", "sequential"])
def test_ratio_holds_at_every_step_of_step_schedulers(scheduler):
    _, curve, _ = run(scheduler, [DiscriminativeLR(ratio=1 / 3)])
    assert curve.names == ["early", "late", "head"]
    expected_head = reference_curve(scheduler, steps=15)
    assert len(curve.lrs) == 15
    for step, (lrs, head) in enumerate(zip(curve.lrs, expected_head)):
        assert lrs == pytest.approx([head * m for m in PAPER], rel=1e-9, abs=1e-15), f"step {step}"


def test_onecycle_peak_and_floor_are_scaled_per_group():
    _, _, trainer = run("onecycle", [DiscriminativeLR(ratio=1 / 3)])
    groups = trainer.optimizers[0].param_groups
    assert [g["max_lr"] for g in groups] == pytest.approx([1e-2 * m for m in PAPER])
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-2 / 25 * m for m in PAPER])
    assert [g["min_lr"] for g in groups] == pytest.approx([1e-2 / 25 / 1e4 * m for m in PAPER])


def test_per_epoch_lambda_scheduler_keeps_ratio():
    _, curve, _ = run("lambda_epoch", [DiscriminativeLR(lr_mult=100)])
    mults = lr_mult_multipliers(3, 100)
    assert mults == pytest.approx([0.01, 0.1, 1.0])
    for step, lrs in enumerate(curve.lrs):
        head = 1e-2 * 0.5 ** (step // 5)
        assert lrs == pytest.approx([head * m for m in mults], rel=1e-9), f"step {step}"


def test_plateau_reductions_keep_ratio():
    _, curve, trainer = run("plateau", [DiscriminativeLR(multipliers=[0.2, 0.5, 1.0])], epochs=4)
    heads = [lrs[-1] for lrs in curve.lrs]
    assert min(heads) < max(heads), "the plateau scheduler should have reduced the LR in this run"
    for lrs in curve.lrs:
        assert [lr / lrs[-1] for lr in lrs] == pytest.approx([0.2, 0.5, 1.0], rel=1e-9)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert len(scheduler.min_lrs) == 3


def test_learning_rate_monitor_logs_readable_group_names(tmp_path):
    L.seed_everything(0)
    trainer = quiet_trainer(
        max_epochs=1,
        logger=CSVLogger(tmp_path, name="run"),
        log_every_n_steps=1,
        callbacks=[DiscriminativeLR(ratio=1 / 3), LearningRateMonitor(logging_interval="step")],
    )
    trainer.fit(PlainTimmModule(), train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {"lr-AdamW/early", "lr-AdamW/late", "lr-AdamW/head"} <= set(rows[0])
    logged = [r for r in rows if r["lr-AdamW/head"]]
    assert float(logged[0]["lr-AdamW/early"]) == pytest.approx(float(logged[0]["lr-AdamW/head"]) / 9)


def test_groups_already_split_by_the_user_are_scaled_not_split_again():
    class PreSplit(PlainTimmModule):
        def configure_optimizers(self):
            groups = self.layer_groups_for_test()
            params = dict(self.named_parameters())
            opt = torch.optim.Adam([{"params": [params[n] for n in names]} for names in groups.values()], lr=1e-2)
            return opt

        def layer_groups_for_test(self):
            from smallmed.callbacks import timm_layer_groups

            return timm_layer_groups(self.net, 3, prefix="net")

    L.seed_everything(0)
    curve = LRCurve()
    trainer = quiet_trainer(max_epochs=1, callbacks=[DiscriminativeLR(ratio=0.5), curve])
    trainer.fit(PreSplit(), train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))
    assert curve.names == ["early", "late", "head"]
    assert curve.lrs[0] == pytest.approx([0.25e-2, 0.5e-2, 1e-2])


def test_user_named_groups_keep_their_names_as_prefix():
    class DecayGroups(PlainTimmModule):
        def configure_optimizers(self):
            decay = [p for p in self.parameters() if p.ndim > 1]
            no_decay = [p for p in self.parameters() if p.ndim <= 1]
            return torch.optim.AdamW(
                [{"params": decay, "weight_decay": 0.05, "name": "decay"}, {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}], lr=1e-2
            )

    L.seed_everything(0)
    curve = LRCurve()
    trainer = quiet_trainer(max_epochs=1, callbacks=[DiscriminativeLR(ratio=0.5), curve])
    trainer.fit(DecayGroups(), train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))
    assert curve.names == ["decay/early", "decay/late", "decay/head", "no_decay/early", "no_decay/late", "no_decay/head"]
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.05] * 3 + [0.0] * 3


def test_multipliers_formulas():
    assert ratio_multipliers(3, 1 / 3) == pytest.approx(PAPER)
    assert ratio_multipliers(4, 0.75) == pytest.approx([0.75**3, 0.75**2, 0.75, 1])  # timm layer decay
    assert lr_mult_multipliers(2, 100) == pytest.approx([0.01, 1.0])
    assert math.isclose(lr_mult_multipliers(5, 16)[0], 1 / 16)


def test_per_stage_layer_decay_over_timm_stages():
    _, curve, _ = run("none", [DiscriminativeLR(ratio=0.5, num_groups="stages")], epochs=1)
    assert curve.names[-1] == "head" and curve.names[0] == "stage0"
    k = len(curve.names)
    assert curve.lrs[0] == pytest.approx([1e-2 * 0.5 ** (k - 1 - i) for i in range(k)])


def test_resume_with_other_multipliers_is_refused(tmp_path):
    _, _, trainer = run("onecycle", [DiscriminativeLR(ratio=1 / 3)], epochs=1)
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    L.seed_everything(0)
    trainer = quiet_trainer(max_epochs=2, callbacks=[DiscriminativeLR(ratio=0.5)])
    with pytest.raises(ValueError, match="resuming with different per-group LR multipliers"):
        trainer.fit(PlainTimmModule(), train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1), ckpt_path=ckpt)


def test_works_together_with_unfreezing_and_sgd():
    unfreezing = GradualUnfreezing(milestones=[0.2, 0.4])
    _, curve, _ = run("onecycle", [DiscriminativeLR(ratio=1 / 3), unfreezing], optimizer="sgd")
    for lrs in curve.lrs:
        assert [lr / lrs[-1] for lr in lrs] == pytest.approx(PAPER, rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ratio": 0.3, "lr_mult": 10}, "at most one of ratio, lr_mult or multipliers \\(got ratio, lr_mult\\)"),
        ({"ratio": 3.0}, "ratio must be in \\(0, 1\\]"),
        ({"lr_mult": 0.5}, "lr_mult must be >= 1"),
        ({"multipliers": [1.0, -1.0]}, "multipliers must be positive"),
    ],
)
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiscriminativeLR(**kwargs)


def test_wrong_number_of_multipliers_names_the_groups():
    with pytest.raises(ValueError, match=r"2 multipliers given for 3 layer groups \['early', 'late', 'head'\]"):
        run("none", [DiscriminativeLR(multipliers=[0.5, 1.0])], epochs=1)


def test_parameters_added_by_a_later_callbacks_setup_join_the_head_group():
    from smallmed.callbacks import HeadReparameterization

    _, curve, trainer = run("onecycle", [DiscriminativeLR(ratio=1 / 3), HeadReparameterization(classifier="cosine")], epochs=1)
    assert curve.names == ["early", "late", "head"]
    head_params = {id(p) for p in trainer.optimizers[0].param_groups[-1]["params"]}
    assert id(trainer.lightning_module.net.get_classifier().scale) in head_params


def test_no_argument_means_the_papers_ratio():
    _, curve, _ = run("none", [DiscriminativeLR()], epochs=1)
    assert curve.lrs[0] == pytest.approx([1e-2 * m for m in PAPER])


@pytest.mark.parametrize(
    ("scheduler", "message"),
    [
        ("cosine_floor", r"CosineAnnealingLR\(eta_min=0.0001\) ends every layer group on the same floor.*HINT: eta_min=0, or build"),
        ("warm_restarts_floor", r"CosineAnnealingWarmRestarts\(eta_min=0.0001\) ends every layer group"),
        ("custom", r"cannot scale the per-group values of HalvingLR .*HINT: build the param groups in configure_optimizers"),
    ],
)
def test_schedulers_whose_values_cannot_all_be_scaled_are_refused_by_name(scheduler, message):
    with pytest.raises(ValueError, match=message):
        run(scheduler, [DiscriminativeLR()], epochs=1)


class BuildsItsOwnGroups(PlainTimmModule):
    """A module that builds its per-layer groups itself, with the callback's multipliers (the clean path)."""

    multipliers_from_callback = True

    def layer_groups(self):
        from smallmed.callbacks import timm_layer_groups

        return timm_layer_groups(self.net, 3, prefix="net")

    def configure_optimizers(self):
        from smallmed.callbacks import layer_param_groups, lr_multipliers

        multipliers = lr_multipliers(self.trainer, self) if self.multipliers_from_callback else {"early": 0.5}
        opt = torch.optim.AdamW(layer_param_groups(self, self.layer_groups(), self.lr, multipliers, weight_decay=0.05))
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=1e-4)  # a floor is fine here
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_groups_built_with_layer_param_groups_are_left_alone():
    L.seed_everything(0)
    curve = LRCurve()
    module = BuildsItsOwnGroups()
    trainer = quiet_trainer(max_epochs=1, callbacks=[DiscriminativeLR(), curve])
    trainer.fit(module, train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))
    assert curve.names == ["early", "early/no_decay", "late", "late/no_decay", "head", "head/no_decay"]
    assert curve.lrs[0] == pytest.approx([1e-2 * m for m in PAPER for _ in (0, 1)])
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] * 3
    no_decay = {id(p) for g in groups[1::2] for p in g["params"]}
    assert no_decay == {id(p) for p in module.parameters() if p.ndim <= 1}


def test_groups_built_with_other_multipliers_are_refused():
    module = BuildsItsOwnGroups()
    module.multipliers_from_callback = False
    trainer = quiet_trainer(max_epochs=1, callbacks=[DiscriminativeLR()])
    with pytest.raises(ValueError, match="built with LR multipliers .*but DiscriminativeLR gives"):
        trainer.fit(module, train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))


@pytest.mark.parametrize("kwargs", [{"num_groups": 4}, {"groups": [".*"]}])
def test_group_settings_on_a_module_that_defines_its_groups_are_refused(kwargs):
    trainer = quiet_trainer(max_epochs=1, callbacks=[DiscriminativeLR(**kwargs)])
    with pytest.raises(ValueError, match="defines its own layer groups .*HINT: remove"):
        trainer.fit(BuildsItsOwnGroups(), train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))


def test_lr_multipliers_without_the_callback_is_empty():
    from smallmed.callbacks import lr_multipliers

    trainer = quiet_trainer(max_epochs=1)
    assert lr_multipliers(trainer, BuildsItsOwnGroups()) == {}
    assert lr_multipliers(None, BuildsItsOwnGroups()) == {}
