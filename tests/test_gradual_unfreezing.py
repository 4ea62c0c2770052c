"""GradualUnfreezing on a plain LightningModule: phases, exact freezing, BatchNorm policies, resume."""

from __future__ import annotations

import re

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from plain_module import PlainTimmModule, quiet_trainer, random_loader
from torch import nn

from smallmed.callbacks import DiscriminativeLR, GradualUnfreezing

STEPS_PER_EPOCH = 5  # 40 samples, batch 8


class Recorder(Callback):
    """Snapshots parameters, buffers, trainable flags and LRs at the start of every training batch."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append(
            {
                "step": trainer.global_step,
                "state": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
                "requires_grad": {n: p.requires_grad for n, p in pl_module.named_parameters()},
                "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups],
                "opt_state": {
                    n: {k: v.clone() if torch.is_tensor(v) else v for k, v in trainer.optimizers[0].state.get(p, {}).items()}
                    for n, p in pl_module.named_parameters()
                },
            }
        )


def fit(callbacks, epochs=2, module=None, **trainer_kwargs):
    L.seed_everything(0)
    module = module or PlainTimmModule()
    recorder = Recorder()
    trainer = quiet_trainer(max_epochs=epochs, callbacks=[*callbacks, recorder], **trainer_kwargs)
    trainer.fit(module, train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1))
    return module, recorder, trainer


def group_names(module, unfreezing: GradualUnfreezing, group: str, kind: str = "param") -> list[str]:
    names = unfreezing.layer_groups[group]
    if kind == "param":
        return names
    return [n for n, _ in module.named_buffers() if any(n.rsplit(".", 1)[0] == p.rsplit(".", 1)[0] for p in names)]


def unchanged(steps, names, upto_step) -> bool:
    first = steps[0]["state"]
    return all(torch.equal(s["state"][n], first[n]) for s in steps if s["step"] <= upto_step for n in names)


def test_paper_schedule_unfreezes_head_backwards_at_fractions():
    unfreezing = GradualUnfreezing(milestones=[0.3, 0.6], unit="fraction", bn_policy="freeze_all")
    module, rec, _ = fit([unfreezing])  # 10 steps: late unfreezes at step 3, early at step 6
    assert list(unfreezing.layer_groups) == ["early", "late", "head"]
    early, late, head = (unfreezing.layer_groups[g] for g in ("early", "late", "head"))
    assert unchanged(rec.steps, early, upto_step=6)
    assert unchanged(rec.steps, late, upto_step=3)
    assert not unchanged(rec.steps, head, upto_step=1)
    final = dict(module.named_parameters())
    assert not torch.equal(final[early[0]], rec.steps[0]["state"][early[0]])
    assert not torch.equal(final[late[0]], rec.steps[0]["state"][late[0]])
    trainable = [{n for n, flag in s["requires_grad"].items() if flag} for s in rec.steps]
    assert trainable[0] == set(head)
    assert trainable[3] == set(head) | set(late)
    assert trainable[6] == set(head) | set(late) | set(early)
    # The module is left trainable after fit.
    assert all(p.requires_grad for p in module.parameters())


def test_frozen_weights_get_no_weight_decay_or_momentum_and_start_with_clean_state():
    unfreezing = GradualUnfreezing(milestones=[3, 6], unit="step", bn_policy="freeze_all")
    module = PlainTimmModule(optimizer="sgd", weight_decay=0.1)
    _, rec, _ = fit([unfreezing], module=module)
    late = unfreezing.layer_groups["late"]
    assert unchanged(rec.steps, late, upto_step=3)
    # No optimizer state for a frozen parameter, and none carried into the step it unfreezes.
    assert all(not rec.steps[i]["opt_state"][n] for i in range(4) for n in late)
    assert all("momentum_buffer" in rec.steps[4]["opt_state"][n] for n in late)


def test_adam_state_of_an_unfrozen_group_counts_from_its_own_first_step():
    unfreezing = GradualUnfreezing(milestones=[4], unit="step", bn_policy="freeze_all", num_groups=2)
    _, rec, _ = fit([unfreezing], epochs=2, module=PlainTimmModule(scheduler="none"))
    body = unfreezing.layer_groups["body"][0]
    head = unfreezing.layer_groups["head"][0]
    at_step_6 = rec.steps[6]["opt_state"]
    assert float(at_step_6[head]["step"]) == 6
    assert float(at_step_6[body]["step"]) == 2


def test_epoch_milestones_express_fastai_fine_tune():
    # fastai: one frozen epoch, then everything unfreezes at once.
    unfreezing = GradualUnfreezing(milestones=[1, 1], unit="epoch", bn_policy="freeze_all")
    module, rec, _ = fit([unfreezing], epochs=2)
    body = unfreezing.layer_groups["early"] + unfreezing.layer_groups["late"]
    assert unchanged(rec.steps, body, upto_step=STEPS_PER_EPOCH)
    assert all(rec.steps[STEPS_PER_EPOCH]["requires_grad"].values())


def test_no_milestones_is_a_feature_extractor():
    unfreezing = GradualUnfreezing(milestones=[], bn_policy="freeze_all")
    module, rec, _ = fit([unfreezing])
    body = unfreezing.layer_groups["early"] + unfreezing.layer_groups["late"]
    final = module.state_dict()
    assert all(torch.equal(final[n], rec.steps[0]["state"][n]) for n in body)


@pytest.mark.parametrize(
    ("milestones", "unit", "never"),
    [([1, 2], "epoch", ["early"]), ([1, 5], "epoch", ["early"]), ([0.5, 1.0], "fraction", ["early"]),
     ([2, 3 * STEPS_PER_EPOCH], "step", ["early"]), ([2, 2], "epoch", ["late", "early"])],
)
def test_a_milestone_past_the_end_of_training_is_warned_about(milestones, unit, never):
    unfreezing = GradualUnfreezing(milestones=milestones, unit=unit, bn_policy="freeze_all")
    with pytest.warns(UserWarning, match=re.escape(f"unfreezing of {never} at or after the end of training")):
        _, rec, _ = fit([unfreezing], epochs=2)
    for group in never:  # and they did stay frozen to the last step
        assert not any(rec.steps[-1]["requires_grad"][n] for n in unfreezing.layer_groups[group])


def test_milestones_that_collapse_onto_one_step_in_a_short_run_are_warned_about():
    """[0.1, 0.2] of a 6-step run are steps 1 and 1: the late and early body unfreeze together."""
    unfreezing = GradualUnfreezing(milestones=[0.1, 0.2])
    with pytest.warns(UserWarning, match=re.escape("fall on the optimizer steps [1, 1] of this 6-step run, so ['late', 'early'] "
                                                   "unfreeze at the same step")):
        fit([unfreezing], epochs=2, limit_train_batches=3)


def test_milestones_inside_the_run_give_no_warning(recwarn):
    fit([GradualUnfreezing(milestones=[1, 1], unit="epoch")], epochs=2)
    fit([GradualUnfreezing(milestones=[0.1, 0.2])], epochs=2)
    assert not [w for w in recwarn if "GradualUnfreezing" in str(w.message)]


def _bn_names(module, unfreezing, group):
    members = set(unfreezing.layer_groups[group])
    bn = [m for m, mod in module.named_modules() if isinstance(mod, nn.BatchNorm2d) and f"{m}.weight" in members]
    assert bn, "test_resnet's early group should hold BatchNorm layers"
    return bn


@pytest.mark.parametrize(
    ("policy", "stats_change", "affine_change"),
    [("train", True, True), ("freeze_stats", False, True), ("freeze_all", False, False)],
)
def test_batchnorm_policies_in_frozen_groups(policy, stats_change, affine_change):
    unfreezing = GradualUnfreezing(milestones=[], bn_policy=policy)
    module, rec, _ = fit([unfreezing], epochs=1)
    bn = _bn_names(module, unfreezing, "early")
    start, end = rec.steps[0]["state"], module.state_dict()
    stats_moved = any(not torch.equal(start[f"{m}.running_mean"], end[f"{m}.running_mean"]) for m in bn)
    affine_moved = any(not torch.equal(start[f"{m}.weight"], end[f"{m}.weight"]) for m in bn)
    conv = [n for n in unfreezing.layer_groups["early"] if end[n].ndim == 4]  # convolution kernels
    assert stats_moved is stats_change
    assert affine_moved is affine_change
    assert all(torch.equal(start[n], end[n]) for n in conv)


def test_freeze_stats_puts_only_frozen_batchnorm_in_eval_mode():
    seen = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes = {m: mod.training for m, mod in pl_module.named_modules() if isinstance(mod, nn.BatchNorm2d)}
            seen.setdefault(trainer.global_step, modes)

    unfreezing = GradualUnfreezing(milestones=[3], unit="step", bn_policy="freeze_stats")
    module, _, _ = fit([unfreezing, Probe()], epochs=1)
    late_bn = _bn_names(module, unfreezing, "late")
    early_bn = _bn_names(module, unfreezing, "early")
    assert not any(seen[0][m] for m in late_bn + early_bn)
    assert all(seen[3][m] for m in late_bn) and not any(seen[3][m] for m in early_bn)


def test_resume_mid_phase_matches_an_uninterrupted_run(tmp_path):
    def callbacks():
        return [DiscriminativeLR(ratio=1 / 3), GradualUnfreezing(milestones=[0.15, 0.4], bn_policy="train")]

    # Uninterrupted: 4 epochs of 5 steps; late unfreezes at step 3, early at step 8.
    full_module, full_rec, _ = fit(callbacks(), epochs=4)

    class StopAfterFirstEpoch(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    first_module, _, first_trainer = fit([*callbacks(), StopAfterFirstEpoch()], epochs=4)
    assert first_trainer.global_step == STEPS_PER_EPOCH  # stopped between the two milestones
    ckpt = tmp_path / "mid_phase.ckpt"
    first_trainer.save_checkpoint(ckpt)

    L.seed_everything(0)
    resumed_module = PlainTimmModule()
    resumed_rec = Recorder()
    unfreezing = callbacks()
    trainer = quiet_trainer(max_epochs=4, callbacks=[*unfreezing, resumed_rec])
    trainer.fit(resumed_module, train_dataloaders=random_loader(), val_dataloaders=random_loader(n=8, seed=1), ckpt_path=ckpt)

    first = resumed_rec.steps[0]
    reference = full_rec.steps[STEPS_PER_EPOCH]
    assert first["step"] == STEPS_PER_EPOCH
    assert first["requires_grad"] == reference["requires_grad"]  # same phase: early still frozen
    assert not first["requires_grad"][unfreezing[1].layer_groups["early"][0]]
    assert first["lrs"] == pytest.approx(reference["lrs"], rel=1e-12)
    for name, tensor in full_module.state_dict().items():
        assert torch.equal(tensor, resumed_module.state_dict()[name]), name


def test_errors_are_raised_early_and_name_the_problem():
    with pytest.raises(ValueError, match="non-decreasing"):
        GradualUnfreezing(milestones=[0.2, 0.1])
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        GradualUnfreezing(milestones=[2])
    with pytest.raises(ValueError, match="whole numbers"):
        GradualUnfreezing(milestones=[1.5], unit="epoch")
    with pytest.raises(ValueError, match="unknown unit"):
        GradualUnfreezing(unit="minutes")
    with pytest.raises(ValueError, match="unknown bn_policy"):
        GradualUnfreezing(bn_policy="frozen")
    with pytest.raises(ValueError, match="3 milestones but only 2 body groups"):
        fit([GradualUnfreezing(milestones=[0.1, 0.2, 0.3])], epochs=1)


class FusedSGDModule(PlainTimmModule):
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9, fused=True)


def test_fused_sgd_with_momentum_is_refused_before_training():
    with pytest.raises(ValueError, match=r"fused SGD with momentum.*HINT: SGD\(\.\.\., fused=False\)"):
        fit([GradualUnfreezing(milestones=[0.2, 0.4])], epochs=1, module=FusedSGDModule())
    fit([GradualUnfreezing(milestones=[])], epochs=1, module=FusedSGDModule())  # nothing unfreezes: fine


class MLP(L.LightningModule):
    """No timm model, no layer_groups(): groups must come from patterns."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(12, 16)
        self.body = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 3)

    def validation_step(self, batch, batch_idx):
        pass

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.fc(torch.relu(self.body(torch.relu(self.stem(x.flatten(1)[:, :12]))))), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def test_explicit_patterns_for_modules_without_groups():
    unfreezing = GradualUnfreezing(milestones=[4], unit="step", groups=[["^stem", "^body"], "^fc"], num_groups=None)
    module, rec, _ = fit([unfreezing], module=MLP(), epochs=1)
    assert list(unfreezing.layer_groups) == ["body", "head"]
    assert unchanged(rec.steps, unfreezing.layer_groups["body"], upto_step=4)
    assert not torch.equal(module.stem.weight, rec.steps[0]["state"]["stem.weight"])


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        (None, "has no layer_groups\\(\\) method and holds no timm model"),
        (["^stem", "^nothing_here"], "pattern '\\^nothing_here' .* matched no parameter .*known prefixes: stem.weight"),
        (["^stem"], "need at least two layer groups"),
        (["^stem", "^fc"], "match no layer-group pattern: body.weight"),
    ],
)
def test_group_errors(groups, message):
    with pytest.raises(ValueError, match=message):
        fit([GradualUnfreezing(milestones=[], groups=groups)], module=MLP(), epochs=1)
