"""Shared pieces for the HeadReparameterization and precision / LR-finder tests.

A plain LightningModule (not smallmed's classifier) that holds a timm model as ``self.net``, an
in-memory data module, a tiny CPU Trainer and a probe callback that records what the model looks
like when training starts (after every ``on_fit_start``) and at the first batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plain_module import quiet_trainer


@contextmanager
def single_thread():
    """Run torch on one CPU thread: these models are tiny, and two OpenMP threads on a busy two-core
    machine spend most of their time waiting for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PlainTimmModule(L.LightningModule):
    """The smallest honest user module: a timm model as ``self.net``, AdamW over ``self.parameters()``."""

    def __init__(self, arch: str = "test_resnet", num_outputs: int = 1, lr: float = 1e-3, in_chans: int = 3) -> None:
        super().__init__()
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_outputs, in_chans=in_chans)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        if logits.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), y.float())
        return F.cross_entropy(logits, y.long())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class TensorDataModule(L.LightningDataModule):
    """Fixed tensors as a training set (no augmentation, deterministic order unless ``shuffle``)."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8, shuffle: bool = False, drop_last: bool = False
    ) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=self.shuffle, drop_last=self.drop_last
        )


class TensorDataModuleWithVal(TensorDataModule):
    """Also a validation loader (the training tensors, in order), for modules with a ``validation_step``."""

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size)


def class_data(
    counts: Sequence[int], size: int = 32, channels: int = 3, seed: int = 0, uint8: bool = False, shift: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``counts[c]`` random images of class ``c`` (class ``c`` brightened by ``c * shift``), labels int64."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, n in enumerate(counts):
        x = torch.randn(n, channels, size, size, generator=g) + c * shift
        xs.append(x)
        ys.append(torch.full((n,), c, dtype=torch.long))
    x, y = torch.cat(xs), torch.cat(ys)
    if uint8:
        x = (x * 40 + 128).clamp(0, 255).to(torch.uint8)
    return x, y


def tiny_trainer(callbacks: Sequence[Callback] = (), max_steps: int = 1, **kwargs: Any) -> L.Trainer:
    """The suite's quiet CPU Trainer (``plain_module.quiet_trainer``), stopped after ``max_steps``, no validation."""
    opts: dict[str, Any] = {"max_steps": max_steps, "limit_val_batches": 0, "deterministic": False, **kwargs}
    return quiet_trainer(callbacks=list(callbacks), **opts)


def head_of(module: nn.Module) -> nn.Module:
    """The classifier of the timm model the module holds (``net`` or ``backbone``)."""
    model = getattr(module, "net", None) or module.backbone
    return model.get_classifier()


class StartProbe(Callback):
    """Records the head's state at ``on_train_start`` and which parameters train at the first batch.

    Place it after the callbacks under test: Lightning runs callback hooks in list order, and
    ``on_train_start`` comes after every ``on_fit_start``.
    """

    def __init__(self, watch: str | None = None) -> None:
        self.watch = watch
        self.head_state: dict[str, torch.Tensor] | None = None
        self.head_type: type | None = None
        self.first_batch_requires_grad: bool | None = None
        self.forwards_before_training: list[int] | None = None
        self.counter: list[int] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        head = head_of(pl_module)
        self.head_type = type(head)
        self.head_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        if self.counter is not None:
            self.forwards_before_training = list(self.counter)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.watch is not None and self.first_batch_requires_grad is None:
            self.first_batch_requires_grad = dict(pl_module.named_parameters())[self.watch].requires_grad
