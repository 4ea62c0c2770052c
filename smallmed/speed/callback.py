"""The one switch that applies smallmed's speed-ups to a run (see :mod:`smallmed.speed`)."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from smallmed.callbacks.layer_groups import find_timm_model
from smallmed.speed.batchnorm_folding import FoldedCopy, FoldingMismatch
from smallmed.speed.channels_last import prefers_channels_last, to_channels_last
from smallmed.speed.fused_optimizer import use_fused_kernel

Mode = Literal["auto", "off"]


class SpeedUps(Callback):
    """Channels-last weights, torch's fused Adam kernel and BatchNorm-folded evaluation, each where it
    measured faster.

    Args:
        mode: ``auto`` (channels-last on the CPU and for 16-bit GPU runs; the fused Adam / AdamW
            kernel on the CPU; folded evaluation on a single CPU device in fp32) or ``off``.

    Attributes:
        channels_last: whether this run's weights are NHWC (set in ``setup``).
        fused_optimizer: whether the run's optimizers use torch's fused kernel (set at fit start).
        folds: whether eval epochs run through the folded copy (set at the first eval epoch).
    """

    def __init__(self, mode: Mode = "auto") -> None:
        if mode not in ("auto", "off"):
            raise ValueError(f"speed mode must be 'auto' or 'off', got {mode!r}")
        self.mode = mode
        self.channels_last = False
        self.fused_optimizer = False
        self.folds: bool | None = None
        self._folded: FoldedCopy | None = None
        self._swapped: tuple[nn.Module, str, nn.Module] | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before configure_optimizers and before any checkpoint is loaded: parameters keep their identity.
        device = trainer.strategy.root_device.type
        self.channels_last = self.mode == "auto" and prefers_channels_last(device, str(trainer.precision))
        if self.channels_last:
            to_channels_last(pl_module)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Measured on the CPU only (docs/speed.md); CUDA keeps torch's own default.
        if self.mode == "auto" and trainer.strategy.root_device.type == "cpu":
            fused = [use_fused_kernel(optimizer) for optimizer in trainer.optimizers]
            self.fused_optimizer = bool(fused) and all(fused)

    # ---------------------------------------------------- folded evaluation
    def _fold_now(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        found = find_timm_model(pl_module)
        if found is None or not found[0] or self.mode == "off":
            return
        name, backbone = found
        if self._folded is None or self._folded.model is not backbone:
            self._folded = self._build(trainer, backbone)
        if self._folded is None:
            return
        parent_name, _, attr = name.rpartition(".")
        parent = pl_module.get_submodule(parent_name) if parent_name else pl_module
        setattr(parent, attr, self._folded.refresh())
        self._swapped = (parent, attr, backbone)

    def _build(self, trainer: L.Trainer, backbone: nn.Module) -> FoldedCopy | None:
        weight = next(backbone.parameters())
        self.folds = (
            isinstance(trainer.strategy, SingleDeviceStrategy)
            # a callback that swaps weights in for validation (EMA, SWA) would swap them under the folded copy
            and not any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks)
            and weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and not backbone.training
        )
        if not self.folds:
            return None
        try:
            return FoldedCopy(backbone, _probe(trainer, backbone))
        except FoldingMismatch as err:
            rank_zero_warn(f"SpeedUps: evaluating without BatchNorm folding for this run: {err}")
            self.folds = False
            return None

    def _unfold(self) -> None:
        if self._swapped is not None:
            parent, attr, backbone = self._swapped
            setattr(parent, attr, backbone)
            self._swapped = None

    @override
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fold_now(trainer, pl_module)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unfold()  # before on_validation_end, where checkpoints are written

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fold_now(trainer, pl_module)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._unfold()

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._unfold()


def _probe(trainer: L.Trainer, backbone: nn.Module) -> torch.Tensor:
    """Two random images of the size the run uses, for finding and checking the folded pairs."""
    size = getattr(trainer.datamodule, "image_size", None) or (getattr(backbone, "pretrained_cfg", {}) or {}).get(
        "input_size", (3, 64, 64)
    )[-1]
    conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
    weight = next(backbone.parameters())
    generator = torch.Generator().manual_seed(0)  # never draws from the run's own random streams
    return torch.randn(2, conv.in_channels, int(size), int(size), generator=generator).to(weight.device, weight.dtype)
