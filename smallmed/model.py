"""The smallmed LightningModule: any timm backbone, the paper's training options, medical metrics."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from smallmed import tasks
from smallmed.backbone import create_backbone, normalization_stats
from smallmed.batchnorm_folding import BatchNormFolding
from smallmed.callbacks.layer_groups import LayerGroups, timm_layer_groups
from smallmed.copy_free_activations import use_copy_free_activations
from smallmed.schedules import SCHEDULES, Schedule, build_scheduler
from smallmed.small_map_depthwise import use_small_map_depthwise
from smallmed.weights import load_pretrained

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class SmallMedClassifier(L.LightningModule):
    """Image classifier over any timm backbone, built for 50 to 2,000 training images.

    The module takes uint8 (0..255) or float (0..1) images with 1 or 3 channels and normalises them
    itself with the statistics the backbone's pretrained weights expect, so data modules can hold
    compact uint8 tensors and no pipeline can forget the normalisation.

    Args:
        backbone: any timm architecture name, e.g. ``tf_efficientnet_lite0``, ``resnet18``.
        num_classes: classes (labels for ``multilabel``); ``binary`` needs 2 and trains one logit.
        task: ``binary`` (BCE, as the paper), ``multiclass`` (cross-entropy) or ``multilabel`` (BCE per label).
        in_chans: channels the backbone takes. Grey images are repeated to 3 channels for a 3-channel
            backbone; with 1, pretrained 3-channel stem weights are summed into one channel (timm's way).
        pretrained: ``true`` for timm hub weights, ``false`` for random init, or a path to a
            ``.safetensors``/``.pth`` file or an earlier smallmed checkpoint (targeted transfer: the
            backbone is taken, the head is rebuilt for ``num_classes``).
        drop_rate: dropout before the classifier (the paper's head dropout).
        optimizer: ``adam`` (the paper), ``adamw`` or ``sgd``.
        lr: peak LR of the head. Per-group LRs come from the ``DiscriminativeLR`` callback.
        lr_schedule: ``one_cycle`` (the paper), ``constant``, ``plateau`` (the paper's "regular"
            training: divide by 10 on a val-loss plateau), ``cosine``, or ``fastai_fine_tune``
            (one frozen cycle of ``freeze_epochs``, then a fresh cycle at half the LR).
        tta: average four passes (image, flipped, two corner crops) at test and predict time.
        num_groups: layer groups returned by :meth:`layer_groups` (3: early body, late body, head).
        class_names: names for per-class metrics and predictions.
        channels_last: keep weights and inputs in NHWC memory order. ``None`` (default) chooses
            per run, where it measured faster (``docs/speed.md``): on the CPU, where oneDNN's
            depthwise convolutions gain most (a tf_efficientnet_lite0 step at 64 px, batch 16, took
            0.80 of the NCHW time on 2 cores, 0.58 at 224 px; ResNets at 64 px lost 7-21%), and on
            a GPU with 16-bit precision (cuDNN's tensor-core kernels); fp32 GPU runs stay NCHW, the
            layout the GPU study figures were measured in. Outside a Trainer, ``None`` is NCHW.
        fused_optimizer: use the optimizer's fused kernel (one kernel for every parameter instead of
            a loop over tensors) where torch has one for the parameters' device: Adam's step on
            lite0 went from 12.7 to 2.3 ms on 2 CPU cores. ``false`` gives torch's default (a loop on
            the CPU, ``foreach`` on CUDA), as the runs in ``docs/results.md`` used. SGD with momentum
            is never fused: torch's fused SGD cannot start the momentum of parameters that gradual
            unfreezing brings in while others already have theirs.
        fold_batchnorm: in eval passes without gradients (validation, test, prediction), run the
            backbone with each BatchNorm folded into the convolution before it
            (:class:`~smallmed.batchnorm_folding.BatchNormFolding`): the same logits up to float
            rounding, one operation fewer per pair. A lite0 eval pass (78 images, 64 px, 2 CPU
            cores) took 0.56 of the time. ``None`` (default) folds on the CPU only: each pass
            refolds with about 300 small operations, which on a launch-bound GPU would cost more
            kernel launches than the 49 BatchNorms it saves (not measured on a GPU yet). The
            model's own modules and weights are never changed.
        small_map_depthwise: compute the weight gradient of depthwise convolutions on maps of at
            most 2x2 positions as two matmuls on the CPU (:mod:`smallmed.small_map_depthwise`),
            where oneDNN's took 2.4 ms for a 1,152-channel 5x5 layer; lite0 at 64 px has four such
            layers, and a training step took 0.93 of the time on an Intel Xeon, 0.85 on an AMD
            EPYC. Off by default: over 160 paired
            BreastMNIST seeds its runs scored 0.005 [0.0004, 0.009] lower in test AUC, with gradients
            equal to oneDNN's up to rounding. The first 40 seeds gave -0.015, the 120 after them
            -0.001 [-0.006, +0.003]; the rule set before the last 80 (the pooled interval must
            include zero) missed by 0.0004, so it stays opt-in.
        copy_free_activations: run the backbone's in-place ReLU6 / SiLU / Hardswish / Hardsigmoid /
            Mish out of place while autograd records them (:mod:`smallmed.copy_free_activations`):
            torch clones the input of those in-place activations for their backward pass, so in
            place they cost a full extra copy each in every training step and save no memory. The
            results are the same bit for bit; ``false`` keeps timm's modules as built.

    Example:
        >>> model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False)
        >>> model(torch.zeros(2, 1, 32, 32, dtype=torch.uint8)).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        num_classes: int = 2,
        task: Literal["binary", "multiclass", "multilabel"] = "binary",
        in_chans: Literal[1, 3] = 3,
        pretrained: bool | str = True,
        drop_rate: float = 0.0,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        lr_schedule: Schedule = "one_cycle",
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        plateau_patience: int = 3,
        freeze_epochs: int = 1,
        tta: bool = False,
        num_groups: int = 3,
        class_names: list[str] | None = None,
        channels_last: bool | None = None,
        fused_optimizer: bool = True,
        fold_batchnorm: bool | None = None,
        small_map_depthwise: bool = False,
        copy_free_activations: bool = True,
    ) -> None:
        super().__init__()
        tasks.check_task(task, num_classes)
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        if isinstance(pretrained, Path):
            pretrained = str(pretrained)
        self.save_hyperparameters()
        self.task = task
        self.backbone = create_backbone(backbone, tasks.num_outputs(task, num_classes), in_chans, drop_rate)
        self.weights_source = load_pretrained(self.backbone, backbone, pretrained)
        use_small_map_depthwise(self.backbone, small_map_depthwise)
        use_copy_free_activations(self.backbone, copy_free_activations)
        self.channels_last = False
        if channels_last:
            self.use_channels_last(True)
        mean, std = normalization_stats(self.backbone, in_chans)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.val_metrics = tasks.metrics(task, num_classes, "val/")
        self.test_metrics = tasks.metrics(task, num_classes, "test/")

    # ----------------------------------------------------------------- model
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..1 float images -> normalised float tensor with ``in_chans`` channels."""
        x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
        channels = self.hparams.in_chans
        if x.shape[1] != channels:
            if x.shape[1] == 1:
                x = x.expand(-1, channels, -1, -1)
            elif channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"images have {x.shape[1]} channels; the model takes {channels}")
        # In the dtype of the model's own floats: float32, or bf16 / fp16 under ``bf16-true`` / ``16-true``
        # precision (Lightning converts the module, buffers included, but not the images made here).
        x = ((x - self.mean) / self.std).to(self.mean.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def use_channels_last(self, enabled: bool) -> None:
        """Put the backbone's weights and every input in NHWC (``True``) or NCHW (``False``) order."""
        self.channels_last = enabled
        self.backbone.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)

    def setup(self, stage: str) -> None:
        """Settle ``channels_last=None`` once the Trainer knows the device and the precision, and check
        that a fixed-size backbone gets the size it takes."""
        if self.hparams.channels_last is None:
            strategy = self.trainer.strategy
            self.use_channels_last(prefers_channels_last(strategy.root_device.type, str(self.trainer.precision)))
        image_size = getattr(self.trainer.datamodule, "image_size", None)
        if image_size is not None:
            check_input_size(self.backbone, self.hparams.backbone, int(image_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, 1)`` for binary, ``(B, num_classes)`` otherwise."""
        x = self.preprocess(images)
        if not self.training and not torch.is_grad_enabled() and folds_batchnorm(self.hparams.fold_batchnorm, x.device.type):
            return self._batchnorm_folding()(x)
        return self.backbone(x)

    def _batchnorm_folding(self) -> BatchNormFolding:
        """The folded eval forward of the current backbone (made again if the backbone was replaced)."""
        folding = self.__dict__.get("_folding")
        if folding is None or folding.module is not self.backbone:
            folding = self.__dict__["_folding"] = BatchNormFolding(self.backbone)
        return folding

    def layer_groups(self, num_groups: int | None = None) -> LayerGroups:
        """Ordered ``{group: [parameter names]}`` from timm's ``group_matcher``; the head is last."""
        return timm_layer_groups(self.backbone, num_groups or self.hparams.num_groups, prefix="backbone")

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities, averaged over test-time augmentation passes when ``tta`` is on."""
        views = tta_views(images) if self.hparams.tta else [images]
        return torch.stack([tasks.probabilities(self.task, self(v)) for v in views]).mean(0)

    # --------------------------------------------------------------- training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, target = batch
        loss = tasks.loss(self.task, self(images), target)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        images, target = batch
        logits = self(images)
        self.log("val/loss", tasks.loss(self.task, logits, target), on_epoch=True, prog_bar=True, batch_size=len(images))
        self.val_metrics.update(tasks.probabilities(self.task, logits), target.long())

    def test_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, target = batch
        probs = self.predict_proba(images)
        self.test_metrics.update(probs, target.long())
        return probs  # for callbacks' on_test_batch_end (the run report's ROC, panels); not kept here

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.predict_proba(images)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            # Lightning's sanity pass sees the first val batches only and discards what they log; on a
            # class-sorted val split they can hold one class, and per-class AUROC would warn for nothing.
            self.val_metrics.reset()
            return
        self._log_metrics(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics(self.test_metrics)

    def _log_metrics(self, collection) -> None:
        values = {}
        for key, value in collection.compute().items():
            if value.ndim == 0:
                values[key] = value
            else:  # per-class AUROC
                stem = key.replace("_per_class", "")
                for name, v in zip(self.class_names, value):
                    values[f"{stem}/{name}"] = v
        self.log_dict(values, prog_bar=False, sync_dist=False)
        collection.reset()

    def configure_optimizers(self):
        hp = self.hparams
        kwargs: dict = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        if hp.optimizer == "sgd":
            kwargs["momentum"] = hp.momentum
        # torch's fused SGD starts momentum only when no parameter has any yet: once gradual unfreezing
        # brings in parameters without a buffer next to ones with it, the step fails (a TypeError deep in
        # torch). SGD with momentum takes torch's default kernels instead.
        fusable = hp.optimizer != "sgd" or hp.momentum == 0
        if hp.fused_optimizer and fusable and fused_kernels_available(self.parameters()):
            kwargs["fused"] = True
        optimizer = OPTIMIZERS[hp.optimizer](self.parameters(), **kwargs)
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(
            hp.lr_schedule,
            optimizer,
            total,
            steps_per_epoch,
            pct_start=hp.pct_start,
            div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor,
            plateau_patience=hp.plateau_patience,
            freeze_epochs=hp.freeze_epochs,
        )
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": scheduler}


def check_input_size(backbone: nn.Module, name: str, image_size: int) -> None:
    """Raise, before training, when ``backbone`` takes one input size only (timm's ``fixed_input_size``:
    ViTs, Swin, MaxViT, EVA, LeViT...) and the data gives another: timm's own error comes from inside the
    first forward pass and names neither the backbone nor the setting to change."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    if not cfg.get("fixed_input_size") or getattr(backbone, "dynamic_img_size", False):
        return
    fixed = tuple(getattr(getattr(backbone, "patch_embed", None), "img_size", None) or cfg.get("input_size", ())[-2:])
    if fixed and fixed != (image_size, image_size):
        raise ValueError(
            f"backbone {name!r} takes {fixed[0]}x{fixed[1]} px inputs only (timm: fixed_input_size); the data gives "
            f"{image_size}x{image_size}. HINT: set data.init_args.image_size: {fixed[0]}, or pick a backbone without "
            "a fixed input size (CNNs such as tf_efficientnet_lite0, resnet50, convnext_tiny)"
        )


def prefers_channels_last(device_type: str, precision: str) -> bool:
    """The layout ``channels_last=None`` picks: NHWC on the CPU and for 16-bit GPU runs, NCHW otherwise."""
    return device_type == "cpu" or (device_type == "cuda" and precision.startswith(("16", "bf16")))


def folds_batchnorm(setting: bool | None, device_type: str) -> bool:
    """Whether eval passes fold BatchNorm: as set, or (``None``) on the CPU only."""
    return device_type == "cpu" if setting is None else setting


def fused_kernels_available(parameters: Iterable[torch.Tensor]) -> bool:
    """Whether torch's fused optimizer kernels take these parameters: floating point, on CPU or CUDA."""
    return all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)


def tta_views(images: torch.Tensor, crop: float = 0.9) -> list[torch.Tensor]:
    """The paper's four test-time passes: the image, its mirror, and two corner crops resized back."""
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * crop)), max(1, round(w * crop))
    x = images.float()

    def resized(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)

    views = [x, torch.flip(x, dims=[-1]), resized(x[..., :ch, :cw]), resized(x[..., h - ch :, w - cw :])]
    if images.dtype == torch.uint8:
        views = [v if v is x else v.round().clamp_(0, 255) for v in views]
        views = [v.to(torch.uint8) for v in views]
    else:  # computed in float32; hand back the caller's float dtype (float64, half, bfloat16)
        views = [v.to(images.dtype) for v in views]
    return views

