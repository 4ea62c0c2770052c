"""``RunReport``: the pictures of a run, as PNG files beside the log and as W&B media.

People use a tool like this to *look* at what happened, so every run (added by the CLI, configurable
as ``--report.*``) records:

- **at fit start**: the data summary (images per class per split, subset seed, sampling, image size)
  as ``data_summary.csv`` / the W&B table ``data/summary``, and a grid of *augmented* training images
  (``train_augmented.png`` / ``data/train_augmented``), drawn from the training transform under a
  forked RNG so that looking does not change what the run trains on;
- **every step**: which layer groups :class:`~smallmed.callbacks.GradualUnfreezing` keeps frozen,
  as ``unfreezing/frozen/<group>`` (1 frozen, 0 training) beside ``LearningRateMonitor``'s per-group
  ``lr-*`` keys; and at fit end ``schedule.png`` / ``train/schedule``: the per-group LRs over steps
  above the frozen / trainable bars, the paper's schedule as one picture;
- **at test end**: the ROC curve (one curve per class for multiclass and multi-label),
  the confusion matrix (one 2x2 matrix per label for multi-label), the per-class AUC table
  (``per_class_auc.csv`` / ``test/per_class_auc``), the most confidently wrong test images, and
  class-activation heatmaps (:mod:`smallmed.report.gradcam`) of the first test images; then a short
  table of the test metrics on the console.

The PNG and CSV files are always written, into ``<CSV log version dir>/report/`` (the W&B run's own
folder when W&B is the only logger); with a ``WandbLogger`` the same files are logged as media.
Test outputs come from :meth:`SmallMedClassifier.test_step`, which returns its probabilities; only
the handful of images shown in panels are kept in memory.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from smallmed.callbacks.host_scalars import log_host_scalars
from smallmed.report import media, plots
from smallmed.report.console import label_text, metrics_table, prediction_text
from smallmed.report.gradcam import CamMethod, NoFeatureMapError, classifier_heatmaps, overlay
from smallmed.report.numbers import class_curves, confidently_wrong, confusion_matrices, predicted_classes
from smallmed.run_folder import run_dir


def _to_display(image: torch.Tensor) -> np.ndarray:
    """uint8 ``(C, H, W)`` -> ``(H, W)`` grey or ``(H, W, 3)`` RGB for matplotlib."""
    array = image.detach().cpu()
    if array.dtype != torch.uint8:
        array = (array.float().clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def report_dir(trainer: L.Trainer) -> Path:
    """``report/`` in the run folder (:func:`smallmed.run_folder.run_dir`). Call on rank zero only."""
    return run_dir(trainer) / "report"


class RunReport(Callback):
    """Writes the run's pictures as PNG files and logs them to every ``WandbLogger`` (see the module docstring).

    Args:
        train_images: augmented training images in the start-of-fit grid (0: none).
        wrong_images: most confidently wrong test images in their panel (0: none).
        heatmaps: test images with class-activation heatmaps (0: none).
        cam_method: ``layercam`` (default) or ``gradcam`` (see :mod:`smallmed.report.gradcam`).
        cam_layer: ``auto`` (deepest stage with a map of at least 7x7), ``final`` or a module name of
            the timm backbone, e.g. ``layer3``.
        console_table: print a short table of the test metrics when testing ends.
        dir: where the files go (default: ``report/`` in the CSV log's version folder).

    Example:
        >>> trainer = L.Trainer(callbacks=[RunReport(heatmaps=4)])  # doctest: +SKIP
        >>> # python train.py --config configs/paper_recipe.yaml --report.heatmaps 16
    """

    def __init__(
        self,
        train_images: int = 16,
        wrong_images: int = 16,
        heatmaps: int = 8,
        cam_method: CamMethod = "layercam",
        cam_layer: str = "auto",
        console_table: bool = True,
        dir: str | None = None,
    ) -> None:
        for name, value in (("train_images", train_images), ("wrong_images", wrong_images), ("heatmaps", heatmaps)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if cam_method not in ("gradcam", "layercam"):
            raise ValueError(f"unknown cam_method {cam_method!r}; choose gradcam or layercam")
        self.train_images = train_images
        self.wrong_images = wrong_images
        self.heatmaps = heatmaps
        self.cam_method = cam_method
        self.cam_layer = cam_layer
        self.console_table = console_table
        self.dir = Path(dir) if dir else None
        self.files: dict[str, Path] = {}  # what this run wrote, by W&B key
        self._schedule: dict[str, Any] = {}
        self._reset_test()

    # ------------------------------------------------------------- helpers
    def _dir(self, trainer: L.Trainer) -> Path:
        return self.dir or report_dir(trainer)

    def _image(self, trainer: L.Trainer, key: str, path: Path, caption: str) -> None:
        self.files[key] = media.log_image(trainer, key, path, caption)

    def _table(self, trainer: L.Trainer, key: str, path: Path, columns: list[str], rows: list[list[Any]]) -> None:
        self.files[key] = media.log_table(trainer, key, path, columns, rows)

    # ------------------------------------------------------------ fit start
    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._schedule = {"steps": [], "lrs": {}, "frozen": {}}
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "summary") or not getattr(dm, "splits", None):
            return
        out = self._dir(trainer)
        names = list(dm.class_names)
        columns = ["split", *names, "total", "seed", "sampling", "image_size"]
        rows = [
            [split, *counts, len(dm.splits[split].labels), getattr(dm, "seed", None), str(getattr(dm, "sampling", "")), getattr(dm, "image_size", None)]
            for split, counts in dm.summary().items()
        ]
        self._table(trainer, "data/summary", out / "data_summary.csv", columns, rows)
        if self.train_images and hasattr(dm, "dataset"):
            dataset = dm.dataset("train")
            count = min(self.train_images, len(dataset))
            task = getattr(dm, "task", "multiclass")
            with torch.random.fork_rng(devices=[]):  # looking must not change what the run trains on
                torch.manual_seed(getattr(dm, "seed", 0))
                items = [dataset[i] for i in range(count)]
            images = [_to_display(image) for image, _ in items]
            titles = [label_text(task, torch.as_tensor(label), names) for _, label in items]
            path = plots.image_grid(images, titles, out / "train_augmented.png", title="augmented training images, as the model sees them")
            self._image(trainer, "data/train_augmented", path, f"{count} augmented training images")

    # ------------------------------------------------------------ per step
    @staticmethod
    def _unfreezing(trainer: L.Trainer):
        from smallmed.callbacks.gradual_unfreezing import GradualUnfreezing

        return next((cb for cb in trainer.callbacks if isinstance(cb, GradualUnfreezing)), None)

    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        schedule = self._schedule
        schedule["steps"].append(trainer.global_step)
        for i, optimizer in enumerate(trainer.optimizers):
            for j, group in enumerate(optimizer.param_groups):
                name = group.get("name") or f"pg{j}"
                if len(trainer.optimizers) > 1:
                    name = f"opt{i}/{name}"
                schedule["lrs"].setdefault(name, []).append(float(group["lr"]))
        unfreezing = self._unfreezing(trainer)
        if unfreezing is None or not unfreezing.layer_groups:
            return
        frozen = unfreezing.frozen_groups_at(trainer.global_step, trainer.current_epoch)
        flags = {}
        for group in unfreezing.layer_groups:
            is_frozen = group in frozen
            schedule["frozen"].setdefault(group, []).append(is_frozen)
            flags[f"unfreezing/frozen/{group}"] = float(is_frozen)
        log_host_scalars(trainer, flags)

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        schedule = self._schedule
        if not trainer.is_global_zero or not schedule.get("steps"):
            return
        lrs = {k: v for k, v in schedule["lrs"].items() if len(v) == len(schedule["steps"])}
        frozen = {k: v for k, v in schedule["frozen"].items() if len(v) == len(schedule["steps"])}
        path = plots.schedule_figure(schedule["steps"], lrs, frozen, self._dir(trainer) / "schedule.png")
        self._image(trainer, "train/schedule", path, "learning rate per layer group, and frozen / trainable groups, per step")

    # ---------------------------------------------------------------- test
    def _reset_test(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._wrong: list[tuple[float, int, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # min-heap
        self._explain: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._seen = 0
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset_test()

    @override
    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not isinstance(outputs, torch.Tensor) or not isinstance(batch, (list, tuple)) or len(batch) < 2:
            return
        task = getattr(pl_module, "task", None)
        if task is None:
            return
        probs, targets = outputs.detach().float().cpu(), batch[1].detach().cpu()
        images = batch[0].detach().cpu()
        self._probs.append(probs)
        self._targets.append(targets)
        for i in range(min(len(images), self.heatmaps - len(self._explain))):
            self._explain.append((images[i].clone(), targets[i].clone(), probs[i].clone()))
        if self.wrong_images:
            wrong, confidence = confidently_wrong(task, probs, targets)
            for i in torch.nonzero(wrong).reshape(-1).tolist():
                item = (float(confidence[i]), self._seen + i, images[i].clone(), targets[i].clone(), probs[i].clone())
                if len(self._wrong) < self.wrong_images:
                    heapq.heappush(self._wrong, item)
                elif item[:2] > self._wrong[0][:2]:
                    heapq.heapreplace(self._wrong, item)
        self._seen += len(images)

    def confident_wrong(self) -> list[tuple[float, int]]:
        """``(confidence, test index)`` of the wrong test images kept for the panel, most confident first."""
        return [item[:2] for item in sorted(self._wrong, key=lambda item: item[:2], reverse=True)]

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._probs:
            return
        probs, targets = torch.cat(self._probs), torch.cat(self._targets)
        if trainer.world_size > 1:  # every rank saw its own shard: gather the numbers (panels stay rank 0's)
            probs = pl_module.all_gather(probs.to(pl_module.device)).flatten(0, 1).cpu()
            targets = pl_module.all_gather(targets.to(pl_module.device)).flatten(0, 1).cpu()
        self._gathered = (probs, targets)

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self._gathered is not None:
            self._test_pictures(trainer, pl_module, *self._gathered)
        if self.console_table:
            print(metrics_table(trainer.callback_metrics, len(self._gathered[0]) if self._gathered else None))

    def _test_pictures(self, trainer: L.Trainer, pl_module: L.LightningModule, probs: torch.Tensor, targets: torch.Tensor) -> None:
        task, names = pl_module.task, list(pl_module.class_names)
        out = self._dir(trainer)
        curves = class_curves(task, probs, targets, names)
        shown = [c for c in curves if c.fpr.size] if task != "binary" else [c for c in curves[1:] if c.fpr.size]
        path = plots.roc_figure({c.name: (c.fpr, c.tpr, c.auc) for c in shown}, out / "roc_curve.png", title=f"test ROC ({len(targets)} images)")
        self._image(trainer, "test/roc_curve", path, "ROC curve" + (f" of {names[1]} (positive class)" if task == "binary" else "s, one vs rest"))
        rows = [[c.name, None if np.isnan(c.auc) else round(c.auc, 6), c.positives, c.negatives] for c in curves]
        self._table(trainer, "test/per_class_auc", out / "per_class_auc.csv", ["class", "auc", "positives", "negatives"], rows)
        matrices = confusion_matrices(task, probs, targets, names)
        labels = ["absent", "present"] if task == "multilabel" else names
        title = "threshold 0.5 per label" if task == "multilabel" else ("threshold 0.5" if task == "binary" else "argmax")
        path = plots.confusion_figure(matrices, labels, out / "confusion_matrix.png", title=f"test confusion matrix ({title})")
        self._image(trainer, "test/confusion_matrix", path, "rows: true class, columns: predicted class")
        if self._wrong:
            ranked = sorted(self._wrong, key=lambda item: item[:2], reverse=True)
            images = [_to_display(image) for _, _, image, _, _ in ranked]
            titles = [
                f"true {label_text(task, t, names)}\n{prediction_text(task, p, names)}" for _, _, _, t, p in ranked
            ]
            path = plots.image_grid(images, titles, out / "confident_wrong.png", title="most confidently wrong test images")
            self._image(trainer, "test/confident_wrong", path, f"{len(ranked)} most confidently wrong test images")
        if self._explain:
            images = torch.stack([_as_channels(image, self._explain[0][0].shape[0]) for image, _, _ in self._explain])
            probs_shown = torch.stack([p for _, _, p in self._explain])
            classes = predicted_classes(task, probs_shown if task != "binary" else probs_shown.reshape(-1))
            try:
                heat = classifier_heatmaps(pl_module, images.to(pl_module.device), classes, self.cam_layer, self.cam_method).cpu()
            except NoFeatureMapError as err:  # a transformer backbone: the run and its other pictures stand
                rank_zero_warn(f"RunReport: no heatmaps for this backbone ({err}). HINT: --report.heatmaps 0 skips them")
                return
            overlays = [overlay(image, h) for image, h in zip(images, heat)]
            titles = [
                f"true {label_text(task, t, names)}\nheat for {names[int(c)]}" for (_, t, _), c in zip(self._explain, classes)
            ]
            path = plots.image_grid(overlays, titles, out / "heatmaps.png", title=f"{self.cam_method} heatmaps of the predicted class")
            self._image(trainer, "test/heatmaps", path, f"{self.cam_method} heatmaps of {len(overlays)} test images")


def _as_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    return image if image.shape[0] == channels else image[:1].expand(channels, -1, -1)
