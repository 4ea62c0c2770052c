"""HeadReparameterization: prior-bias reinit, linear probe (LP-FT), cosine head, head dropout, resume.

Most tests run the callback inside a real (tiny, CPU) Trainer on a plain LightningModule that only
holds a timm model as ``self.net`` and builds ``AdamW(self.parameters())`` itself: the callback must
work on any module, not only smallmed's classifier. ``StartProbe`` (placed after the callback)
records the head at ``on_train_start``, i.e. after every ``on_fit_start`` and before the first step.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from helpers_head import (
    PlainTimmModule,
    StartProbe,
    TensorDataModule,
    TensorDataModuleWithVal,
    class_data,
    head_of,
    single_thread,
    tiny_trainer,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from smallmed.callbacks import CosineClassifier, HeadReparameterization
from smallmed.callbacks.head_reparameterization import collect_head_inputs, fit_linear_probe, prior_bias
from smallmed.datamodules import NpzDataModule
from smallmed.model import SmallMedClassifier

LOG_ODDS_QUARTER = math.log(0.25 / 0.75)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    with single_thread():
        yield


def _bce(logits: torch.Tensor, y: torch.Tensor) -> float:
    return F.binary_cross_entropy_with_logits(logits.detach().reshape(-1), y.float()).item()


# --------------------------------------------------------------------------- reuse and reinit
def test_plain_module_head_found_through_timm_get_classifier():
    torch.manual_seed(0)
    model = PlainTimmModule("test_resnet", num_outputs=1)
    original_fc = model.net.fc
    before = original_fc.weight.detach().clone()
    cb = HeadReparameterization()
    parent, attr, head = cb.find_head(model)
    assert parent is model.net and attr == "fc" and head is original_fc

    x, y = class_data([30, 10])
    probe = StartProbe()
    trainer = tiny_trainer([cb, probe], max_steps=2)
    trainer.fit(model, datamodule=TensorDataModule(x, y, batch_size=8))

    assert trainer.global_step == 2 and cb.applied
    assert model.net.fc is original_fc  # reinit changes values in place, never the module
    assert not torch.equal(probe.head_state["weight"], before)
    # 1-logit BCE head: bias = log-odds of the training prior p = 10 / 40
    assert probe.head_state["bias"].item() == pytest.approx(LOG_ODDS_QUARTER, abs=1e-5)
    assert probe.head_state["weight"].std().item() == pytest.approx(0.01, rel=0.2)
    assert probe.head_state["weight"].mean().abs().item() < 0.005
    # the module's own AdamW(self.parameters()) optimises that same head
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert id(model.net.fc.weight) in optimised and id(model.net.fc.bias) in optimised


def test_softmax_head_bias_is_log_class_frequencies_and_custom_init_std():
    torch.manual_seed(0)
    model = PlainTimmModule("test_efficientnet", num_outputs=3)
    x, y = class_data([20, 12, 8])
    probe = StartProbe()
    tiny_trainer([HeadReparameterization(init_std=0.05), probe]).fit(model, datamodule=TensorDataModule(x, y))
    expected = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    torch.testing.assert_close(probe.head_state["bias"], expected, atol=1e-5, rtol=0)
    assert probe.head_state["weight"].std().item() == pytest.approx(0.05, rel=0.1)


def test_without_prior_bias_the_bias_is_zero():
    torch.manual_seed(0)
    model = PlainTimmModule("test_resnet", num_outputs=3)
    x, y = class_data([20, 12, 8])
    probe = StartProbe()
    tiny_trainer([HeadReparameterization(prior_bias=False), probe]).fit(model, datamodule=TensorDataModule(x, y))
    assert torch.equal(probe.head_state["bias"], torch.zeros(3))
    assert probe.head_state["weight"].std().item() == pytest.approx(0.01, rel=0.2)


def test_prior_uses_every_training_sample_even_with_shuffle_and_drop_last():
    # smallmed's own data modules shuffle and drop the last partial batch; the prior must still be
    # the training set's (10 of 40), not that of whichever 32 samples one shuffled epoch kept.
    x, y = class_data([30, 10])
    for seed in range(2):
        torch.manual_seed(seed)
        probe = StartProbe()
        dm = TensorDataModule(x, y, batch_size=16, shuffle=True, drop_last=True)
        tiny_trainer([HeadReparameterization(), probe]).fit(PlainTimmModule("test_resnet"), datamodule=dm)
        assert probe.head_state["bias"].item() == pytest.approx(LOG_ODDS_QUARTER, abs=1e-5)


class ModuleWithLoader(PlainTimmModule):
    def __init__(self, loader: DataLoader) -> None:
        super().__init__("test_resnet")
        self.loader = loader

    def train_dataloader(self) -> DataLoader:
        return self.loader


@pytest.mark.parametrize("source", ["train_dataloaders", "module_hook"])
def test_training_data_without_a_datamodule(source):
    torch.manual_seed(0)
    x, y = class_data([30, 10])
    probe = StartProbe()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, drop_last=True)
    trainer = tiny_trainer([HeadReparameterization(), probe])
    if source == "train_dataloaders":
        trainer.fit(PlainTimmModule("test_resnet"), train_dataloaders=loader)
    else:
        trainer.fit(ModuleWithLoader(loader))
    assert probe.head_state["bias"].item() == pytest.approx(LOG_ODDS_QUARTER, abs=1e-5)


class NonTimmModule(L.LightningModule):
    """No timm model: the head is named with ``head=``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.ReLU())
        self.classifier = nn.Linear(16, 1)
        self.bad_head = nn.Sequential(nn.Linear(16, 1))

    def forward(self, x):
        return self.classifier(self.body(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self(x).squeeze(1), y.float())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def test_explicit_head_path_on_a_module_without_timm():
    torch.manual_seed(0)
    model = NonTimmModule()
    x, y = class_data([30, 10], size=8)
    cb = HeadReparameterization(head="classifier", mode="linear_probe")
    tiny_trainer([cb]).fit(model, datamodule=TensorDataModule(x, y))
    assert cb.applied and cb.probe_loss is not None
    prior_only = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert cb.probe_loss < prior_only


# --------------------------------------------------------------------------- linear probe
class FeatureSnapshot(StartProbe):
    """Also recomputes the head inputs at train start, before any optimiser step touched the body."""

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.buffers = {k: v.clone() for k, v in pl_module.net.named_buffers()}
        self.features, self.targets = collect_head_inputs(trainer, pl_module, head_of(pl_module), need_features=True)


def test_linear_probe_single_feature_pass_and_lower_loss_than_reinit_head():
    torch.manual_seed(0)
    model = PlainTimmModule("test_resnet", num_outputs=1)
    calls = [0, 0]

    def count(module, args, output):
        calls[0] += 1
        calls[1] += args[0].shape[0]

    model.net.register_forward_hook(count)
    buffers_before = {k: v.clone() for k, v in model.net.named_buffers()}
    x, y = class_data([24, 8], shift=0.5)
    cb = HeadReparameterization(mode="linear_probe")
    probe = FeatureSnapshot()
    probe.counter = calls
    tiny_trainer([cb, probe]).fit(model, datamodule=TensorDataModule(x, y, batch_size=8, shuffle=True, drop_last=True))

    # exactly one pass over the 32 training images (4 batches) before the first training step
    assert probe.forwards_before_training == [4, 32]
    # ... in eval mode: BatchNorm running statistics are not touched by the feature pass
    assert all(torch.equal(probe.buffers[k], v) for k, v in buffers_before.items())
    assert cb.probe_loss is not None and math.isfinite(cb.probe_loss)

    feats, targets = probe.features, probe.targets
    assert feats.shape == (32, model.net.fc.in_features)
    probe_head = nn.Linear(feats.shape[1], 1)
    probe_head.load_state_dict(probe.head_state)
    probe_data_loss = _bce(probe_head(feats), targets)
    # the reported probe loss is this head's loss on these features, plus the L2 penalty
    penalty = 1e-3 * probe_head.weight.pow(2).sum().item()
    assert cb.probe_loss == pytest.approx(probe_data_loss + penalty, rel=1e-3, abs=1e-5)

    reinit_head = nn.Linear(feats.shape[1], 1)
    nn.init.normal_(reinit_head.weight, std=0.01)
    with torch.no_grad():
        reinit_head.bias.copy_(prior_bias(targets, 1))
    reinit_loss = _bce(reinit_head(feats), targets)
    assert reinit_loss == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=0.02)
    assert probe_data_loss < 0.8 * reinit_loss


@pytest.mark.parametrize("out_features", [1, 3])
def test_fit_linear_probe_separates_linearly_separable_features(out_features):
    g = torch.Generator().manual_seed(0)
    num_classes = max(2, out_features)
    centres = torch.randn(num_classes, 16, generator=g) * 3

    def sample(n):
        y = torch.arange(num_classes).repeat_interleave(n)
        return centres[y] + torch.randn(len(y), 16, generator=g), y

    x_train, y_train = sample(30)
    x_test, y_test = sample(50)
    head = nn.Linear(16, out_features)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    loss = fit_linear_probe(head, x_train, y_train, steps=100, weight_decay=1e-3)
    with torch.no_grad():
        logits = head(x_test)
    pred = (logits.squeeze(1) > 0).long() if out_features == 1 else logits.argmax(1)
    assert (pred == y_test).float().mean().item() >= 0.95
    assert loss < 0.2 * math.log(num_classes)
    assert all(p.grad is None for p in head.parameters())  # leaves no gradients behind


def test_fit_linear_probe_reports_divergence():
    head = nn.Linear(3, 2)
    features = torch.full((4, 3), float("inf"))
    with pytest.raises(RuntimeError, match="the linear probe diverged"):
        fit_linear_probe(head, features, torch.tensor([0, 1, 0, 1]), steps=5, weight_decay=1e-3)


def _train_source(tmp_path, counts=(12, 12)):
    torch.manual_seed(0)
    source = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False, lr=1e-2)
    x, y = class_data(counts, channels=1, uint8=True, shift=0.5)
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(source, datamodule=TensorDataModuleWithVal(x, y))
    path = tmp_path / "source.ckpt"
    trainer.save_checkpoint(path)
    return source, path


def test_linear_probe_on_backbone_from_an_earlier_smallmed_checkpoint(tmp_path):
    source, ckpt = _train_source(tmp_path)
    target = SmallMedClassifier(
        "test_resnet", num_classes=3, task="multiclass", pretrained=str(ckpt), lr=1e-3
    )
    assert target.weights_source == f"local weights {ckpt}"
    own = target.backbone.state_dict()
    body = {k: v for k, v in source.backbone.state_dict().items() if not k.startswith("fc.")}
    assert len(body) > 10 and all(torch.equal(own[k], v) for k, v in body.items())  # the trained body came over
    assert target.backbone.fc.out_features == 3

    x, y = class_data([10, 6, 4], channels=1, uint8=True, shift=0.5, seed=1)
    cb = HeadReparameterization(mode="linear_probe")
    probe = StartProbe()
    tiny_trainer([cb, probe]).fit(target, datamodule=TensorDataModuleWithVal(x, y))
    prior_only = -sum(p * math.log(p) for p in (0.5, 0.3, 0.2))  # CE of logits = log prior
    assert cb.probe_loss is not None and cb.probe_loss < 0.8 * prior_only
    assert probe.head_state["weight"].shape == (3, target.backbone.fc.in_features)


@pytest.mark.slow
def test_linear_probe_on_offline_imagenet_lite0_and_real_breastmnist(lite0_weights, breastmnist):
    torch.manual_seed(0)
    dm = NpzDataModule(str(breastmnist), train_size=20, image_size=32, batch_size=16)
    model = SmallMedClassifier("tf_efficientnet_lite0", num_classes=2, pretrained=str(lite0_weights))
    cb = HeadReparameterization(mode="linear_probe")
    tiny_trainer([cb]).fit(model, datamodule=dm)
    labels = torch.as_tensor(dm.splits["train"].labels)
    assert len(labels) == 20
    p = labels.float().mean().item()
    prior_only = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert cb.probe_loss is not None and cb.probe_loss < 0.8 * prior_only


# --------------------------------------------------------------------------- cosine classifier
def test_cosine_head_is_swapped_in_setup_optimised_and_bounded():
    torch.manual_seed(0)
    model = PlainTimmModule("test_resnet", num_outputs=3, lr=5e-2)
    x, y = class_data([20, 12, 8], shift=0.5)
    probe = StartProbe()
    trainer = tiny_trainer([HeadReparameterization(classifier="cosine", cosine_scale=5.0), probe], max_steps=5)
    trainer.fit(model, datamodule=TensorDataModule(x, y))

    head = model.net.fc
    assert isinstance(head, CosineClassifier) and model.net.get_classifier() is head
    assert probe.head_type is CosineClassifier
    assert (head.in_features, head.out_features) == (96, 3)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert {id(head.weight), id(head.bias), id(head.scale)} <= optimised
    # prior bias still applies, and the scale starts where asked and is learned
    torch.testing.assert_close(probe.head_state["bias"], torch.log(torch.tensor([0.5, 0.3, 0.2])), atol=1e-5, rtol=0)
    assert probe.head_state["scale"].item() == 5.0
    assert head.scale.item() != 5.0
    assert not torch.equal(head.weight.detach(), probe.head_state["weight"])

    model.eval()
    with torch.no_grad():
        logits = model(x * 100)
    bound = head.scale.abs() + head.bias.abs()
    assert (logits.abs() <= bound + 1e-4).all()


def test_cosine_head_survives_checkpoint_save_and_resume(tmp_path):
    torch.manual_seed(0)
    x, y = class_data([20, 12, 8])
    first = PlainTimmModule("test_resnet", num_outputs=3, lr=5e-2)
    # an end-of-epoch checkpoint (two batches of 20), so the resumed run starts a clean epoch
    trainer = tiny_trainer([HeadReparameterization(classifier="cosine")], max_steps=-1, max_epochs=1)
    trainer.fit(first, datamodule=TensorDataModule(x, y, batch_size=20))
    assert trainer.global_step == 2
    path = tmp_path / "cosine.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert {"net.fc.weight", "net.fc.bias", "net.fc.scale"} <= set(saved["state_dict"])

    resumed = PlainTimmModule("test_resnet", num_outputs=3, lr=5e-2)
    cb = HeadReparameterization(classifier="cosine")
    probe = StartProbe()
    resumed_trainer = tiny_trainer([cb, probe], max_steps=3)
    resumed_trainer.fit(resumed, datamodule=TensorDataModule(x, y, batch_size=20), ckpt_path=path)
    assert resumed_trainer.global_step == 3
    assert set(resumed.state_dict()) == set(saved["state_dict"])
    assert cb.applied
    for key in ("weight", "bias", "scale"):  # restored, not re-initialised
        torch.testing.assert_close(probe.head_state[key], saved["state_dict"][f"net.fc.{key}"], atol=0, rtol=0)


# --------------------------------------------------------------------------- head dropout (deprecated)
def with_dropout(p: float | None, **kwargs) -> HeadReparameterization:
    """The callback with the deprecated ``dropout`` argument, which must warn and still work."""
    if p is None:
        return HeadReparameterization(**kwargs)
    with pytest.warns(FutureWarning, match=r"dropout=...\) is deprecated.*HINT: set model.init_args.drop_rate"):
        return HeadReparameterization(dropout=p, **kwargs)


def test_head_dropout_acts_in_train_mode_only_and_is_hooked_once():
    torch.manual_seed(0)
    model = PlainTimmModule("test_resnet", num_outputs=3)
    cb = with_dropout(0.5)
    cb.setup(None, model, "fit")
    cb.setup(None, model, "test")  # fit then test: still one hook
    head = model.net.fc
    assert len(head._forward_pre_hooks) == 1

    seen = {}
    model.net.global_pool.register_forward_hook(lambda m, a, out: seen.__setitem__("pooled", out.detach().clone()))
    head.register_forward_pre_hook(lambda m, args: seen.__setitem__("head_in", args[0].detach().clone()))
    x = torch.randn(8, 3, 32, 32)

    model.train()
    model(x)
    pooled, head_in = seen["pooled"], seen["head_in"]
    nonzero = pooled != 0
    dropped = nonzero & (head_in == 0)
    kept = nonzero & (head_in != 0)
    assert 0.3 < dropped.sum().item() / nonzero.sum().item() < 0.7
    torch.testing.assert_close(head_in[kept], pooled[kept] * 2)

    model.eval()
    model(x)
    torch.testing.assert_close(seen["head_in"], seen["pooled"], atol=0, rtol=0)


def test_head_dropout_stays_out_of_the_linear_probe():
    x, y = class_data([24, 8], shift=0.5)
    losses, heads = [], []
    for dropout in (None, 0.5):
        torch.manual_seed(0)
        model = PlainTimmModule("test_resnet", num_outputs=1)
        cb = with_dropout(dropout, mode="linear_probe")
        probe = StartProbe()
        tiny_trainer([cb, probe]).fit(model, datamodule=TensorDataModule(x, y))
        losses.append(cb.probe_loss)
        heads.append(probe.head_state)
    # same features, same deterministic probe: dropout only acts in the training steps
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    torch.testing.assert_close(heads[1]["weight"], heads[0]["weight"], rtol=1e-4, atol=1e-6)


def test_cosine_head_gets_the_dropout_hook():
    model = PlainTimmModule("test_resnet", num_outputs=2)
    with_dropout(0.2, classifier="cosine").setup(None, model, "fit")
    assert isinstance(model.net.fc, CosineClassifier)
    assert len(model.net.fc._forward_pre_hooks) == 1


def test_dropout_set_on_the_model_and_the_callback_is_refused():
    model = PlainTimmModule("test_resnet", num_outputs=2)
    model.net.drop_rate = 0.3
    with pytest.raises(ValueError, match=r"head dropout is set twice: the model's drop_rate=0.3 and HeadReparameterization"):
        with_dropout(0.2).setup(None, model, "fit")


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize("restored", [True, False])
def test_restored_state_leaves_the_head_untouched(restored):
    torch.manual_seed(0)
    model = PlainTimmModule("test_resnet", num_outputs=1)
    before = {k: v.detach().clone() for k, v in model.net.fc.state_dict().items()}
    cb = HeadReparameterization(mode="linear_probe")
    if restored:
        cb.load_state_dict({"applied": True})
    probe = StartProbe()
    x, y = class_data([30, 10])
    tiny_trainer([cb, probe]).fit(model, datamodule=TensorDataModule(x, y))
    same = all(torch.equal(probe.head_state[k], v) for k, v in before.items())
    assert same is restored
    assert (cb.probe_loss is None) is restored
    state = cb.state_dict()
    assert state["applied"] is True and set(state) == {"applied", "probe_loss"}


def test_state_dict_round_trip():
    cb = HeadReparameterization()
    cb.load_state_dict({"applied": True, "probe_loss": 0.25})
    assert cb.state_dict() == {"applied": True, "probe_loss": 0.25}
    cb.load_state_dict({})
    assert cb.state_dict() == {"applied": False, "probe_loss": None}


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "finetune"}, r"unknown mode 'finetune'; choose reinit or linear_probe"),
        ({"classifier": "arcface"}, r"unknown classifier 'arcface'; choose linear or cosine"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\), got -0.1"),
        ({"probe_steps": 0}, r"probe_steps must be positive, got 0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HeadReparameterization(**kwargs)


@pytest.mark.parametrize("path", ["x.y", "net.nothing", "x"])
def test_head_path_that_does_not_exist(path):
    cb = HeadReparameterization(head=path)
    with pytest.raises(ValueError, match=rf"PlainTimmModule has no head module at '{path}'"):
        cb.setup(None, PlainTimmModule("test_resnet"), "fit")


def test_head_path_error_surfaces_through_fit():
    x, y = class_data([4, 4])
    with pytest.raises(ValueError, match=r"has no head module at 'x\.y'"):
        tiny_trainer([HeadReparameterization(head="x.y")]).fit(PlainTimmModule(), datamodule=TensorDataModule(x, y))


def test_module_without_timm_model_needs_a_head_path():
    with pytest.raises(ValueError, match=r"NonTimmModule holds no timm model; HINT: pass `head="):
        HeadReparameterization().setup(None, NonTimmModule(), "fit")


def test_head_that_is_not_linear():
    with pytest.raises(ValueError, match=r"the head 'bad_head' is a Sequential; HeadReparameterization needs a linear"):
        HeadReparameterization(head="bad_head").setup(None, NonTimmModule(), "fit")
    headless = PlainTimmModule("test_resnet", num_outputs=0)  # timm's get_classifier() is an Identity
    with pytest.raises(ValueError, match=r"the head 'fc' is a Identity"):
        HeadReparameterization().setup(None, headless, "fit")


class InputsOnly(L.LightningDataModule):
    def train_dataloader(self):
        return DataLoader(torch.randn(4, 3, 32, 32), batch_size=2)


def test_batches_without_targets():
    with pytest.raises(ValueError, match=r"expects \(inputs, targets\) batches"):
        tiny_trainer([HeadReparameterization()]).fit(PlainTimmModule(), datamodule=InputsOnly())
