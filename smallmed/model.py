"""The smallmed LightningModule: any timm backbone, the paper's training options, medical metrics."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from smallmed import tasks
from smallmed.backbone import create_backbone, normalization_stats
from smallmed.callbacks.discriminative_lr import lr_multipliers
from smallmed.callbacks.gradual_unfreezing import first_unfreezing_step
from smallmed.callbacks.layer_groups import GroupCount, LayerGroups, timm_layer_groups
from smallmed.callbacks.param_groups import layer_param_groups
from smallmed.schedules import SCHEDULES, Schedule, build_scheduler
from smallmed.weights import load_pretrained

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


class SmallMedClassifier(L.LightningModule):
    """Image classifier over any timm backbone, built for 50 to 2,000 training images.

    The module takes uint8 (0..255) or float (0..1) images with 1 or 3 channels and normalises them
    itself with the statistics the backbone's pretrained weights expect, so data modules can hold
    compact uint8 tensors and no pipeline can forget the normalisation. The optimizer holds one
    named param group per layer group (:meth:`layer_groups`), built once with the LR multipliers of
    a :class:`~smallmed.callbacks.DiscriminativeLR` callback when the trainer has one.

    Args:
        backbone: any timm architecture name, e.g. ``tf_efficientnet_lite0``, ``resnet18``.
        num_classes: classes (labels for ``multilabel``); ``binary`` needs 2 and trains one logit.
        task: ``binary`` (BCE, as the paper), ``multiclass`` (cross-entropy) or ``multilabel`` (BCE per label).
        in_chans: channels the backbone takes. Grey images are repeated to 3 channels for a 3-channel
            backbone; with 1, pretrained 3-channel stem weights are summed into one channel (timm's way).
        pretrained: ``true`` for timm hub weights, ``false`` for random init, or a path to a
            ``.safetensors``/``.pth`` file or an earlier smallmed checkpoint (targeted transfer: the
            backbone is taken, the head is rebuilt for ``num_classes``).
        drop_rate: dropout in front of the classifier (the paper's head dropout).
        num_groups: the layer groups every callback reads: 3 (the paper's early body, late body,
            head), another number, ``"stages"`` (one per timm stage) or ``"blocks"`` (one per block).
        optimizer: ``adam`` (the paper), ``adamw`` (decoupled weight decay) or ``sgd``.
        lr: peak LR of the head; earlier groups get ``lr`` times their multiplier.
        weight_decay: decay of weights with two or more dimensions; biases and norm affines get none.
        betas, eps: Adam / AdamW's moment coefficients and denominator term.
        momentum: SGD's momentum.
        lr_schedule: ``one_cycle`` (the paper), ``constant``, ``plateau`` (the paper's "regular"
            training: divide by 10 on a val-loss plateau), ``cosine``, or ``fastai_fine_tune`` (one
            cycle until :class:`~smallmed.callbacks.GradualUnfreezing` first unfreezes, then a fresh
            cycle at half the LR).
        pct_start, div_factor, final_div_factor: the one cycle's warm-up share, start LR (``lr /
            div_factor``) and end LR (start LR / ``final_div_factor``).
        plateau_patience: epochs without val-loss improvement before ``plateau`` divides the LR.
        tta: average four passes (image, flipped, two corner crops) at test and predict time.
        class_names: names for per-class metrics and predictions.

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
        num_groups: GroupCount = 3,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        momentum: float = 0.9,
        lr_schedule: Schedule = "one_cycle",
        pct_start: float = 0.3,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        plateau_patience: int = 3,
        tta: bool = False,
        class_names: list[str] | None = None,
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
        self.layer_groups()  # a num_groups the backbone cannot take fails here, not at the first step
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
        return ((x - self.mean) / self.std).to(self.mean.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits: ``(B, 1)`` for binary, ``(B, num_classes)`` otherwise."""
        return self.backbone(self.preprocess(images))

    def setup(self, stage: str) -> None:
        """Check, before training, that a fixed-size backbone gets the size it takes."""
        image_size = getattr(self.trainer.datamodule, "image_size", None)
        if image_size is not None:
            check_input_size(self.backbone, self.hparams.backbone, int(image_size))

    def layer_groups(self) -> LayerGroups:
        """Ordered ``{group: [parameter names]}`` from timm's ``group_matcher``; the head is last.

        The one home of the layer groups: the optimizer and every callback read them from here.
        """
        return timm_layer_groups(self.backbone, self.hparams.num_groups, prefix="backbone")

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
        """Log a split's metrics. An AUC needs positives and negatives: a class the split lacks gets NaN,
        and the headline ``auroc`` averages only the classes it can measure (torchmetrics counts 0)."""
        prefix = collection.prefix
        with warnings.catch_warnings():  # torchmetrics' "No positive samples": said once, below, by class name
            warnings.filterwarnings("ignore", message=".*(positive|negative) samples in targets")
            computed = collection.compute()
        computed[f"{prefix}auroc"], per_class, defined = tasks.split_aurocs(computed, prefix)
        if not defined.all() and not self.trainer.sanity_checking:
            lacking = [self.class_names[i] for i in torch.nonzero(~defined).reshape(-1).tolist()] if per_class is not None else []
            rank_zero_warn(
                f"{prefix.rstrip('/')} split: no positive or no negative image for {lacking or 'the positive class'}; "
                f"{'their AUC is NaN and left out of ' + prefix + 'auroc' if lacking else prefix + 'auroc is NaN'}"
            )
        values = {k: v for k, v in computed.items()}
        if per_class is not None:
            values.update({f"{prefix}auroc/{name}": v for name, v in zip(self.class_names, per_class)})
        self.log_dict(values, prog_bar=False, sync_dist=False)
        collection.reset()

    def configure_optimizers(self):
        """One param group per layer group at ``lr`` x its multiplier, then the LR schedule over them."""
        hp = self.hparams
        groups = layer_param_groups(
            self, self.layer_groups(), hp.lr, multipliers=lr_multipliers(self.trainer, self), weight_decay=hp.weight_decay
        )
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        else:
            optimizer = OPTIMIZERS[hp.optimizer](groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        scheduler = build_scheduler(
            hp.lr_schedule,
            optimizer,
            int(self.trainer.estimated_stepping_batches),
            pct_start=hp.pct_start,
            div_factor=hp.div_factor,
            final_div_factor=hp.final_div_factor,
            plateau_patience=hp.plateau_patience,
            frozen_steps=first_unfreezing_step(self.trainer) if hp.lr_schedule == "fastai_fine_tune" else None,
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

