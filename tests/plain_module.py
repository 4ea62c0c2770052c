"""A plain LightningModule written for the tests, *not* smallmed's: proves the callbacks are reusable.

It holds a timm model as ``self.net`` and returns ``AdamW(self.parameters())`` (one param group)
with a scheduler of the test's choice, as users of other Lightning projects write it.
"""

from __future__ import annotations

import lightning as L
import timm
import torch
import torch.nn.functional as F
from torch.optim import lr_scheduler as S
from torch.utils.data import DataLoader, TensorDataset


class PlainTimmModule(L.LightningModule):
    def __init__(
        self,
        arch: str = "test_resnet",
        num_classes: int = 3,
        lr: float = 1e-2,
        optimizer: str = "adamw",
        scheduler: str = "onecycle",
        weight_decay: float = 0.05,
    ) -> None:
        super().__init__()
        self.net = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        self.lr = lr
        self.optimizer_name = optimizer
        self.scheduler_name = scheduler
        self.weight_decay = weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adam":
            opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        if self.scheduler_name == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self.lr, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        step_schedulers = {
            "cosine": lambda: S.CosineAnnealingLR(opt, T_max=total),
            "cosine_floor": lambda: S.CosineAnnealingLR(opt, T_max=total, eta_min=1e-4),
            "warm_restarts": lambda: S.CosineAnnealingWarmRestarts(opt, T_0=4),
            "warm_restarts_floor": lambda: S.CosineAnnealingWarmRestarts(opt, T_0=4, eta_min=1e-4),
            "linear": lambda: S.LinearLR(opt, start_factor=0.1, total_iters=total),
            "sequential": lambda: S.SequentialLR(
                opt, [S.LinearLR(opt, start_factor=0.1, total_iters=3), S.CosineAnnealingLR(opt, T_max=total - 3)], milestones=[3]
            ),
            "custom": lambda: HalvingLR(opt),
        }
        if self.scheduler_name in step_schedulers:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": step_schedulers[self.scheduler_name](), "interval": "step"}}
        if self.scheduler_name == "lambda_epoch":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if self.scheduler_name == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch"}}
        return opt


class HalvingLR(torch.optim.lr_scheduler.LRScheduler):
    """A user's own scheduler class, unknown to smallmed: halves every group's LR each step."""

    def get_lr(self):
        return [group["lr"] * 0.5 for group in self.optimizer.param_groups]


def random_loader(n: int = 40, batch_size: int = 8, size: int = 32, num_classes: int = 3, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % num_classes
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def quiet_trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    defaults.update(kwargs)
    return L.Trainer(**defaults)
