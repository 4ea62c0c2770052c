"""smallmed.speed: channels-last weights, the fused Adam kernel and BatchNorm-folded evaluation change how a run
computes, not what."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from smallmed.model import SmallMedClassifier
from smallmed.speed import SpeedUps
from smallmed.speed.batchnorm_folding import FoldedCopy, FoldingMismatch, conv_norm_pairs
from smallmed.speed.channels_last import prefers_channels_last
from smallmed.speed.fused_optimizer import use_fused_kernel


def model(**kwargs) -> SmallMedClassifier:
    return SmallMedClassifier("test_efficientnet", num_classes=2, pretrained=False, lr=1e-2, **kwargs)


def loaders(n: int = 16, size: int = 32) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 2
    return DataLoader(TensorDataset(x, y), batch_size=4), DataLoader(TensorDataset(x.flip(-1), y), batch_size=8)


def trainer(callbacks, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return L.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


class EvalProbe(Callback):
    """What the module evaluates through, and its logits, in each validation / test batch."""

    def __init__(self) -> None:
        self.backbones: list[nn.Module] = []
        self.logits: list[torch.Tensor] = []
        self.reference: list[torch.Tensor] = []
        self.live: nn.Module | None = None

    def on_fit_start(self, trainer, pl_module):
        self.live = pl_module.backbone

    def _record(self, pl_module, batch):
        self.backbones.append(pl_module.backbone)
        self.logits.append(pl_module(batch[0]))
        with torch.no_grad():  # the live backbone's own, unfolded answer
            self.reference.append(self.live(pl_module.preprocess(batch[0])))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._record(pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._record(pl_module, batch)


def test_auto_on_the_cpu_puts_weights_in_nhwc_and_keeps_parameter_identity():
    m = model()
    ids = [id(p) for p in m.parameters()]
    train, val = loaders()
    trainer([SpeedUps()], limit_val_batches=0, max_epochs=1).fit(m, train, val)
    assert m.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert [id(p) for p in m.parameters()] == ids


def test_off_leaves_the_run_as_the_model_makes_it():
    m = model()
    probe = EvalProbe()
    train, val = loaders()
    speed = SpeedUps("off")
    trainer([speed, probe]).fit(m, train, val)
    assert not m.backbone.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert all(b is probe.live for b in probe.backbones)
    assert speed.folds is None


class OptimizerProbe(Callback):
    """The param groups' kernel options at the first training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.options = [(g["fused"], g["foreach"]) for g in trainer.optimizers[0].param_groups]


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_auto_on_the_cpu_steps_adam_with_the_fused_kernel(mode):
    probe, speed = OptimizerProbe(), SpeedUps(mode)
    train, val = loaders()
    trainer([speed, probe], limit_val_batches=0, max_epochs=1).fit(model(), train, val)
    fused = mode == "auto"
    assert speed.fused_optimizer is fused
    assert probe.options and all(o == ((True, False) if fused else (None, None)) for o in probe.options)


def test_the_fused_kernel_takes_the_same_steps_up_to_rounding():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    twin = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    twin.load_state_dict(net.state_dict())

    def groups(m: nn.Sequential) -> list[dict]:
        return [{"params": m[0].parameters(), "lr": 1e-3}, {"params": m[2].parameters(), "lr": 1e-2}]

    plain, fused = torch.optim.AdamW(groups(net), weight_decay=0.01), torch.optim.AdamW(groups(twin), weight_decay=0.01)
    assert use_fused_kernel(fused)
    x = torch.randn(32, 8)
    for _ in range(20):
        for m, opt in ((net, plain), (twin, fused)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_fused_kernel_is_left_alone_where_it_does_not_apply():
    params = [nn.Parameter(torch.zeros(3))]
    assert not use_fused_kernel(torch.optim.SGD(params, lr=0.1))  # not a measured kernel
    assert not use_fused_kernel(torch.optim.Adam(params, differentiable=True))
    assert not use_fused_kernel(torch.optim.Adam([nn.Parameter(torch.zeros(3, dtype=torch.float64).to_sparse())]))


def test_eval_epochs_run_through_the_folded_copy_with_the_live_weights_logits():
    torch.manual_seed(0)
    m = model()
    probe = EvalProbe()
    speed = SpeedUps()
    train, val = loaders()
    t = trainer([speed, probe], max_epochs=3)
    t.fit(m, train, val)
    assert speed.folds is True
    assert all(b is not probe.live for b in probe.backbones)  # every val batch went through the copy
    assert m.backbone is probe.live  # and the live backbone is back after each epoch
    # Each epoch's copy was refreshed from the weights of that epoch: same logits as the live model's.
    for got, expected in zip(probe.logits, probe.reference):
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-3)
    assert not torch.allclose(probe.logits[0], probe.logits[-1])  # the weights did move between epochs
    keys = set(m.state_dict())
    assert any(k.endswith("bn1.running_mean") for k in keys)
    t.test(m, val, verbose=False)
    assert probe.backbones[-1] is not probe.live and m.backbone is probe.live
    torch.testing.assert_close(probe.logits[-1], probe.reference[-1], atol=1e-4, rtol=1e-3)


def test_checkpoints_written_during_validation_hold_the_live_modules(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    m = model()
    train, val = loaders()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="val/auroc", mode="max", save_last=True)
    t = trainer([SpeedUps(), checkpoint], enable_checkpointing=True)
    t.fit(m, train, val)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert set(saved) == set(m.state_dict())


def test_folding_needs_the_convolutions_output_to_feed_the_norm_only():
    class Reused(nn.Module):  # the convolution's output also skips the norm: folding would change it
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    net = Reused().eval()
    with torch.no_grad():
        net.bn.running_mean.fill_(0.5)
        net.bn.running_var.fill_(4.0)
    probe = torch.randn(2, 3, 8, 8)
    assert conv_norm_pairs(net, probe) == [("conv", "bn")]
    with pytest.raises(FoldingMismatch, match="folding changed the output"):
        FoldedCopy(net, probe)


def test_folded_copy_shares_every_tensor_but_the_folded_weights():
    net = model().backbone.eval()
    folded = FoldedCopy(net, torch.randn(2, 3, 32, 32))
    live = {id(t) for t in [*net.parameters(), *net.buffers()]}
    folded_convs = {name for name, _ in folded.pairs}
    for name, p in folded.copy.named_parameters():
        owner = name.rpartition(".")[0]
        assert (id(p) in live) is (owner not in folded_convs), name
    assert len(folded.pairs) > 3


@pytest.mark.parametrize(
    ("device", "precision", "expected"),
    [("cpu", "32-true", True), ("cpu", "bf16-mixed", True), ("cuda", "32-true", False), ("cuda", "bf16-mixed", True),
     ("cuda", "16-mixed", True), ("cuda", "bf16-true", True), ("mps", "32-true", False)],
)
def test_channels_last_rule(device, precision, expected):
    assert prefers_channels_last(device, precision) is expected


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="speed mode must be 'auto' or 'off', got 'fast'"):
        SpeedUps("fast")
