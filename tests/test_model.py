"""SmallMedClassifier on timm's tiny test architectures: shapes, normalisation, layer groups, TTA, training."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from smallmed import schedules, tasks
from smallmed.callbacks import GradualUnfreezing
from smallmed.model import SmallMedClassifier, tta_views

FAMILIES = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit"]
SIZE = 32  # every family above takes 32px (test_vit is built with dynamic_img_size=True)
TASK_CLASSES = {"binary": 2, "multiclass": 4, "multilabel": 3}


def make_model(backbone: str = "test_resnet", task: str = "binary", **kwargs) -> SmallMedClassifier:
    kwargs.setdefault("num_classes", TASK_CLASSES[task])
    return SmallMedClassifier(backbone, task=task, pretrained=False, **kwargs)


def images(n: int = 2, channels: int = 1, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)


def targets(task: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = TASK_CLASSES[task]
    if task == "multilabel":
        y = torch.randint(0, 2, (n, k), generator=g)
        y[0], y[1] = 1, 0  # every label has a positive and a negative, so AUROC is defined
        return y
    y = torch.arange(n) % k  # every class present
    return y[torch.randperm(n, generator=g)]


def first_conv_weight(model: SmallMedClassifier) -> torch.Tensor:
    return model.backbone.get_parameter(model.backbone.pretrained_cfg["first_conv"] + ".weight")


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize("in_chans", [3, 1])
@pytest.mark.parametrize("task", list(TASK_CLASSES))
@pytest.mark.parametrize("backbone", FAMILIES)
def test_forward_uint8_grey_input(backbone, task, in_chans):
    model = make_model(backbone, task, in_chans=in_chans).eval()
    assert first_conv_weight(model).shape[1] == in_chans
    with torch.no_grad():
        logits = model(images(3))
    expected = 1 if task == "binary" else TASK_CLASSES[task]
    assert logits.shape == (3, expected)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("task", list(TASK_CLASSES))
def test_predict_proba_per_task(task):
    model = make_model("test_efficientnet", task).eval()
    with torch.no_grad():
        p = model.predict_proba(images(4))
    k = TASK_CLASSES[task]
    if task == "binary":
        assert p.shape == (4,)
    else:
        assert p.shape == (4, k)
    assert ((p > 0) & (p < 1)).all()
    if task == "multiclass":
        torch.testing.assert_close(p.sum(1), torch.ones(4))


def test_uint8_and_unit_float_inputs_agree():
    model = make_model("test_resnet").eval()
    x = images(2)
    torch.testing.assert_close(model.preprocess(x), model.preprocess(x.float() / 255))
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.float() / 255))


def test_grey_is_repeated_for_3_channels_and_rgb_averaged_for_1_channel():
    rgb = images(2, channels=3)
    grey = images(2, channels=1)
    three = make_model("test_efficientnet", in_chans=3)
    out = three.preprocess(grey)
    assert out.shape == (2, 3, SIZE, SIZE)
    torch.testing.assert_close(out, three.preprocess(grey.expand(-1, 3, -1, -1)))
    one = make_model("test_efficientnet", in_chans=1)
    torch.testing.assert_close(one.preprocess(rgb), one.preprocess(rgb.float().mean(1, keepdim=True) / 255))
    with pytest.raises(ValueError, match="images have 2 channels; the model takes 3"):
        three.preprocess(images(2, channels=2))


@pytest.mark.parametrize("backbone", ["test_efficientnet", "test_resnet"])
def test_normalisation_stats_follow_pretrained_cfg(backbone):
    three = make_model(backbone, in_chans=3)
    cfg = three.backbone.pretrained_cfg
    torch.testing.assert_close(three.mean.flatten(), torch.tensor(cfg["mean"], dtype=torch.float32))
    torch.testing.assert_close(three.std.flatten(), torch.tensor(cfg["std"], dtype=torch.float32))

    one = make_model(backbone, in_chans=1)
    mean, std = sum(cfg["mean"]) / 3, sum(cfg["std"]) / 3
    assert one.mean.shape == one.std.shape == (1, 1, 1, 1)
    assert one.mean.item() == pytest.approx(mean)
    assert one.std.item() == pytest.approx(std)
    white = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    torch.testing.assert_close(one.preprocess(white), torch.full((1, 1, 4, 4), (1 - mean) / std))
    # buffers follow the module but are not part of checkpoints (they come from the backbone)
    assert "mean" not in three.state_dict() and "std" not in three.state_dict()


def test_imagenet_stats_differ_from_half():
    # guards the test above against a backbone whose stats would make any normalisation pass
    cfg = make_model("test_efficientnet").backbone.pretrained_cfg
    assert tuple(cfg["mean"]) != (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "binary", "num_classes": 3}, "task 'binary' needs num_classes=2, got 3"),
        ({"task": "multiclass", "num_classes": 1}, "needs num_classes >= 2, got 1"),
        ({"task": "regression", "num_classes": 2}, "unknown task 'regression'"),
        ({"optimizer": "lamb"}, "unknown optimizer 'lamb'"),
        ({"lr_schedule": "step"}, "unknown lr_schedule 'step'"),
        ({"in_chans": 2}, "in_chans must be 1 or 3, got 2"),
        ({"class_names": ["only one"]}, "class_names has 1 names for num_classes=2"),
    ],
)
def test_bad_arguments_are_explained(kwargs, message):
    kwargs = {"task": "binary", "num_classes": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        SmallMedClassifier("test_resnet", pretrained=False, **kwargs)


# ------------------------------------------------------------- layer groups


@pytest.mark.parametrize("backbone", FAMILIES)
def test_layer_groups_cover_backbone_once_head_last(backbone):
    model = make_model(backbone)
    groups = model.layer_groups()
    assert list(groups) == ["early", "late", "head"]
    head_ids = {id(p) for p in model.backbone.get_classifier().parameters()}
    head = [n for n, p in model.named_parameters() if id(p) in head_ids]
    assert head and groups["head"] == head
    names = [n for n, _ in model.named_parameters()]
    flat = [n for members in groups.values() for n in members]
    assert sorted(flat) == sorted(names)  # every parameter, exactly once
    assert len(flat) == len(set(flat))
    # ordered input to head: each group sits wholly after the one before it in the network
    order = {n: i for i, n in enumerate(names)}
    spans = [(min(order[n] for n in g), max(order[n] for n in g)) for g in groups.values()]
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    assert "backbone." + model.backbone.pretrained_cfg["first_conv"] + ".weight" in groups["early"]


@pytest.mark.parametrize(
    ("num_groups", "names"),
    [(2, ["body", "head"]), (3, ["early", "late", "head"]), (4, ["body0", "body1", "body2", "head"])],
)
def test_layer_groups_count(num_groups, names):
    model = make_model("test_efficientnet", num_groups=num_groups)
    assert list(model.layer_groups()) == names
    assert all(model.layer_groups().values())


def test_layer_groups_by_stage_and_by_block():
    stages = make_model("tf_efficientnet_lite0", num_groups="stages").layer_groups()
    blocks = make_model("tf_efficientnet_lite0", num_groups="blocks").layer_groups()
    assert list(stages) == [f"stage{i}" for i in range(8)] + ["head"]  # stem, 7 stages, head
    assert list(blocks) == [f"block{i}" for i in range(17)] + ["head"]  # stem, 16 blocks, head
    assert sorted(sum(stages.values(), [])) == sorted(sum(blocks.values(), []))


def test_layer_groups_too_many_or_too_few_fail_when_the_model_is_made():
    assert len(make_model("test_resnet", num_groups=6).layer_groups()) == 6  # stem + 4 stages: 5 body groups
    with pytest.raises(ValueError, match=r"has 5 body stages .* cannot make 6 body groups.*num_groups <= 6"):
        make_model("test_resnet", num_groups=7)
    with pytest.raises(ValueError, match="num_groups must be at least 2"):
        make_model("test_resnet", num_groups=1)


# -------------------------------------------------------------------- TTA


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.bfloat16])
def test_tta_views(dtype):
    x = images(2, channels=1, size=30)
    x = x if dtype == torch.uint8 else (x.float() / 255).to(dtype)
    views = tta_views(x)
    assert len(views) == 4
    for v in views:
        assert v.shape == x.shape
        assert v.dtype == dtype
    torch.testing.assert_close(views[0], x)
    torch.testing.assert_close(views[1], x.flip(-1))
    assert not torch.equal(views[2], x) and not torch.equal(views[3], x)
    assert not torch.equal(views[2], views[3])


def test_tta_corner_crop_of_constant_image_is_constant():
    x = torch.full((1, 1, 20, 20), 77, dtype=torch.uint8)
    assert all(torch.equal(v, x) for v in tta_views(x))


def test_predict_proba_averages_tta_views():
    model = make_model("test_resnet", tta=True).eval()
    x = images(3)
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(model(v).squeeze(1)) for v in tta_views(x)]).mean(0)
        single = torch.sigmoid(model(x).squeeze(1))
        got = model.predict_proba(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, single)


# ----------------------------------------------------------------- training


class RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def loaders(task: str, n: int = 8, batch_size: int = 4, seed: int = 0):
    train = TensorDataset(images(n, seed=seed), targets(task, n, seed=seed))
    val = TensorDataset(images(n, seed=seed + 1), targets(task, n, seed=seed + 1))
    return DataLoader(train, batch_size=batch_size), DataLoader(val, batch_size=batch_size)


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})


@pytest.mark.parametrize("task", list(TASK_CLASSES))
def test_fit_logs_loss_and_validation_metrics(task):
    L.seed_everything(0, verbose=False)
    model = make_model("test_efficientnet", task, lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = loaders(task)
    t = trainer()
    t.fit(model, train, val)
    metrics = t.callback_metrics
    for key in ("train/loss_epoch", "val/loss", "val/auroc", "val/acc", "val/f1"):
        assert key in metrics, f"{key} not logged; got {sorted(metrics)}"
        assert torch.isfinite(metrics[key])
    assert math.isfinite(float(metrics["val/auroc"]))
    if task != "binary":  # per-class AUROC under the class names
        assert {f"val/auroc/{i}" for i in range(TASK_CLASSES[task])} <= set(metrics)
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert "backbone." + model.backbone.pretrained_cfg["classifier"] + ".weight" in changed

    results = t.test(model, val, verbose=False)
    assert math.isfinite(results[0]["test/auroc"])


def test_sgd_with_momentum_runs_through_gradual_unfreezing():
    # torch's fused SGD fails once some parameters have momentum buffers and newly unfrozen ones do not.
    model = make_model("test_efficientnet", optimizer="sgd", lr=0.05, lr_schedule="constant")
    train, val = loaders("binary")
    t = trainer(max_epochs=3, limit_val_batches=0, callbacks=[GradualUnfreezing(milestones=[1, 2], unit="epoch")])
    t.fit(model, train, val)
    assert t.global_step == 6 and not t.optimizers[0].param_groups[0].get("fused")


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_true_half_precision_trains_and_tests(precision):
    model = make_model("test_efficientnet", lr=1e-2)
    train, val = loaders("binary")
    t = trainer(precision=precision)
    t.fit(model, train, val)  # the images made in preprocess follow the module's dtype
    assert next(model.parameters()).dtype == {"bf16-true": torch.bfloat16, "16-true": torch.float16}[precision]
    assert math.isfinite(t.test(model, val, verbose=False)[0]["test/auroc"])


def test_per_class_metrics_use_class_names():
    model = make_model("test_resnet", "multiclass", class_names=["a", "b", "c", "d"])
    train, val = loaders("multiclass")
    t = trainer(limit_train_batches=1)
    t.fit(model, train, val)
    assert {"val/auroc/a", "val/auroc/b", "val/auroc/c", "val/auroc/d"} <= set(t.callback_metrics)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_other_optimizers(optimizer):
    model = make_model("test_resnet", optimizer=optimizer, lr=0.05, weight_decay=1e-4, lr_schedule="constant")
    train, val = loaders("binary")
    t = trainer(limit_val_batches=0)
    t.fit(model, train, val)
    opt = t.optimizers[0]
    assert type(opt).__name__.lower() == optimizer
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    if optimizer == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


def test_one_param_group_per_layer_group_with_the_callbacks_multipliers_and_no_decay_on_1d():
    from smallmed.callbacks import DiscriminativeLR

    model = make_model("test_efficientnet", optimizer="adamw", lr=0.01, weight_decay=0.05, lr_schedule="constant")
    train, val = loaders("binary")
    t = trainer(limit_val_batches=0, callbacks=[DiscriminativeLR()])
    t.fit(model, train, val)
    groups = t.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["early", "early/no_decay", "late", "late/no_decay", "head", "head/no_decay"]
    assert [g["lr"] for g in groups] == pytest.approx([0.01 / 9] * 2 + [0.01 / 3] * 2 + [0.01] * 2)
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0] * 3
    one_d = {id(p) for p in model.parameters() if p.ndim <= 1}
    assert {id(p) for g in groups[1::2] for p in g["params"]} == one_d
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_without_weight_decay_or_the_callback_each_layer_group_is_one_group_at_the_same_lr():
    model = make_model("test_resnet", lr=0.01, lr_schedule="constant", num_groups="stages")
    train, val = loaders("binary")
    t = trainer(limit_val_batches=0)
    t.fit(model, train, val)
    groups = t.optimizers[0].param_groups
    assert [g["name"] for g in groups] == list(model.layer_groups()) and groups[0]["name"] == "stage0"
    assert {g["lr"] for g in groups} == {0.01}


def test_adam_betas_and_eps_reach_the_optimizer():
    model = make_model("test_resnet", optimizer="adamw", betas=(0.9, 0.99), eps=1e-5, lr_schedule="constant")
    train, val = loaders("binary")
    t = trainer(limit_val_batches=0)
    t.fit(model, train, val)
    group = t.optimizers[0].param_groups[0]
    assert group["betas"] == (0.9, 0.99) and group["eps"] == 1e-5


EPOCHS, STEPS_PER_EPOCH = 3, 2


@pytest.mark.parametrize("schedule", list(schedules.SCHEDULES))
def test_each_lr_schedule_builds_and_runs(schedule):
    L.seed_everything(0, verbose=False)
    lr = 0.01
    model = make_model("test_resnet", lr=lr, lr_schedule=schedule, plateau_patience=0)
    train, val = loaders("binary", n=8, batch_size=4)
    rec = RecordLR()
    phases = [GradualUnfreezing(milestones=[1, 1], unit="epoch")] if schedule == "fastai_fine_tune" else []
    t = trainer(max_epochs=EPOCHS, callbacks=[rec, *phases])
    t.fit(model, train, val)
    total = EPOCHS * STEPS_PER_EPOCH
    assert len(rec.lrs) == total
    lrs = rec.lrs
    if schedule == "constant":
        assert lrs == [lr] * total
    elif schedule == "one_cycle":
        assert lrs[0] == pytest.approx(lr / 25)
        assert max(lrs) == pytest.approx(lr, rel=0.2)
        assert lrs[-1] == pytest.approx(lr / 25 / 1e4)  # the last step trains at the floor
    elif schedule == "cosine":
        assert lrs == pytest.approx([lr * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)])
    elif schedule == "fastai_fine_tune":
        frozen = 1 * STEPS_PER_EPOCH
        assert lrs == pytest.approx([lr * schedules.fastai_fine_tune_factor(s, frozen, total) for s in range(total)])
        assert lrs[frozen] == pytest.approx(lr * 0.5 / 5)  # the second cycle restarts at half LR / div 5
    elif schedule == "plateau":
        # patience 0: the LR stays for the first epoch, then drops tenfold whenever val/loss fails to improve
        assert lrs[:STEPS_PER_EPOCH] == [lr] * STEPS_PER_EPOCH
        assert set(lrs) <= {lr, lr / 10, lr / 100}
        config = t.lr_scheduler_configs[0]
        assert config.monitor == "val/loss" and config.interval == "epoch"


def test_build_scheduler_unknown_name():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'; choose one of one_cycle"):
        schedules.build_scheduler("linear", opt, 10)
    assert schedules.build_scheduler("constant", opt, 10) is None


def test_fastai_fine_tune_takes_its_phases_from_the_unfreezing_callback():
    model = make_model("test_resnet", lr=0.01, lr_schedule="fastai_fine_tune")
    train, val = loaders("binary")
    with pytest.raises(ValueError, match="restarts its cycle when the body unfreezes, and nothing unfreezes.*GradualUnfreezing"):
        trainer(max_epochs=2).fit(model, train, val)
    rec = RecordLR()
    t = trainer(max_epochs=EPOCHS, callbacks=[rec, GradualUnfreezing(milestones=[0.5, 0.5])])  # at step 3 of 6
    t.fit(make_model("test_resnet", lr=0.01, lr_schedule="fastai_fine_tune"), train, val)
    assert rec.lrs == pytest.approx([0.01 * schedules.fastai_fine_tune_factor(s, 3, 6) for s in range(6)])


# --------------------------------------------------------- schedule shapes


def test_one_cycle_factor_closed_form():
    f = schedules.one_cycle_factor
    total, pct, div, final = 100, 0.3, 25.0, 1e4
    assert f(0, total, pct, div, final) == pytest.approx(1 / div)
    assert f(15, total, pct, div, final) == pytest.approx((1 + 1 / div) / 2)  # half way up the cosine
    assert f(30, total, pct, div, final) == pytest.approx(1.0)  # the peak at pct_start
    assert f(65, total, pct, div, final) == pytest.approx((1 + 1 / final) / 2)  # half way down
    assert f(100, total, pct, div, final) == pytest.approx(1 / final)
    assert f(500, total, pct, div, final) == pytest.approx(1 / final)  # clamped past the end
    values = [f(s, total, pct, div, final) for s in range(total + 1)]
    assert values.index(max(values)) == 30
    assert all(a <= b for a, b in zip(values[:30], values[1:31]))
    assert all(a >= b for a, b in zip(values[30:], values[31:]))


def test_fastai_fine_tune_factor_closed_form():
    f = schedules.fastai_fine_tune_factor
    frozen, total = 10, 110
    assert f(0, frozen, total) == pytest.approx(1 / 25)  # frozen cycle starts at 1/25
    # frozen cycle: pct_start 0.99 -> warm-up over round(9.9) = 10 steps, so it rises all the way
    assert f(9, frozen, total) == pytest.approx(1 + (1 / 25 - 1) / 2 * (math.cos(math.pi * 0.9) + 1))
    assert f(frozen, frozen, total) == pytest.approx(0.5 / 5)  # unfrozen cycle: half LR, div 5
    assert f(frozen + 30, frozen, total) == pytest.approx(0.5)  # its peak at pct_start 0.3 of 100 steps
    assert f(total, frozen, total) == pytest.approx(0.5 / 1e5)
    assert f(frozen + 30, frozen, total, pct_start=0.5) < 0.5
    assert f(frozen + 50, frozen, total, pct_start=0.5) == pytest.approx(0.5)


def test_probabilities_and_loss_match_torch():
    logits = torch.tensor([[0.3], [-1.2]])
    target = torch.tensor([1, 0])
    torch.testing.assert_close(tasks.probabilities("binary", logits), torch.sigmoid(logits[:, 0]))
    torch.testing.assert_close(
        tasks.loss("binary", logits, target),
        torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], target.float()),
    )
    logits = torch.tensor([[0.3, 1.0, -2.0]])
    torch.testing.assert_close(tasks.loss("multiclass", logits, torch.tensor([1])), torch.nn.functional.cross_entropy(logits, torch.tensor([1])))


def test_headline_auc_leaves_out_a_class_the_test_split_lacks_instead_of_averaging_in_zero():
    L.seed_everything(0, verbose=False)
    model = make_model("test_resnet", "multiclass", lr=1e-2)
    train, val = loaders("multiclass")
    t = trainer(limit_val_batches=0)
    t.fit(model, train, val)
    x = images(12, seed=5)
    y = torch.tensor([0, 1, 2] * 4)
    y[y == 3] = 0  # classes 0..2 only: class 3 has no positive in this test split
    with pytest.warns(UserWarning, match=r"test split: no positive or no negative image for \['3'\]; their AUC is NaN"):
        result = t.test(model, DataLoader(TensorDataset(x, y), batch_size=12), verbose=False)[0]
    per_class = [result[f"test/auroc/{c}"] for c in range(4)]
    assert math.isnan(per_class[3])
    assert result["test/auroc"] == pytest.approx(sum(per_class[:3]) / 3)
