"""``PredictionWriter``: predictions for a folder of new images as a CSV, with optional heatmaps.

``python train.py predict --config FILE --ckpt_path BEST.ckpt --predictions.images new_images/`` writes one
row per readable image: ``file`` (path relative to the folder), ``predicted`` (class name; for
multi-label the ``+``-joined labels at 0.5), then one ``p_<class>`` probability column per class
(binary: ``1 - p`` and ``p``, so each row sums to 1, as for multiclass). Probabilities come from the
model's ``predict_proba``, so the model's ``tta`` setting applies. Files that cannot be read are
listed in ``<out>.unreadable.csv`` (file, reason) and one warning; the run goes on.

With ``--predictions.heatmaps true``, each image also gets ``<out stem>_heatmaps/<file>.heatmap.png``:
the class-activation heatmap of its predicted class over the image (see :mod:`smallmed.report.gradcam`;
images under 128 px are enlarged by a whole factor, pixel for pixel, to be seen),
and the first few are logged to W&B as ``predict/heatmaps`` when a ``WandbLogger`` is configured.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from smallmed.datamodules.predict import ImagesToPredict
from smallmed.labels import predicted_label
from smallmed.report.gradcam import CamMethod, classifier_heatmaps, overlay

WANDB_HEATMAPS = 16  # heatmaps logged to W&B per predict run (all are written as files)
VIEW_SIZE = 128  # heatmap files of smaller images are enlarged by a whole factor (nearest) to at least this


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results on a folder of images to a CSV (see the module docstring).

    Inert unless ``images`` is set: then the CLI predicts on that folder instead of the data module's
    test split (:class:`~smallmed.datamodules.predict.PredictFolderDataModule`).

    Args:
        images: folder of new images (searched recursively) or one image file.
        out: the CSV to write (default ``predictions.csv`` in the run's log folder).
        heatmaps: also write a heatmap PNG per image.
        cam_method: ``layercam`` (default) or ``gradcam``.
        cam_layer: ``auto``, ``final`` or a module name of the timm backbone.

    Example:
        >>> # python train.py predict --config runs/smallmed/version_0/config.yaml \\
        >>> #     --ckpt_path runs/smallmed/version_0/checkpoints/best-epoch07.ckpt \\
        >>> #     --predictions.images new_images/ --predictions.out predictions.csv --predictions.heatmaps true
    """

    def __init__(
        self,
        images: str | None = None,
        out: str | None = None,
        heatmaps: bool = False,
        cam_method: CamMethod = "layercam",
        cam_layer: str = "auto",
    ) -> None:
        super().__init__(write_interval="batch")
        self.images = images
        self.out = Path(out) if out else None
        self.heatmaps = heatmaps
        self.cam_method = cam_method
        self.cam_layer = cam_layer
        self.unreadable: list[tuple[str, str]] = []
        self.written = 0
        self.csv_path: Path | None = None
        self.heatmap_dir: Path | None = None
        self._file = None
        self._writer = None
        self._logged: list[tuple[Path, str]] = []

    @property
    def unreadable_path(self) -> Path | None:
        """``<out stem>.unreadable.csv`` beside the CSV."""
        return self.csv_path.with_name(self.csv_path.stem + ".unreadable.csv") if self.csv_path else None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict" or not self.images:
            return
        if trainer.world_size > 1:
            raise ValueError("predict on a folder runs on one device; set --trainer.devices 1")
        self.csv_path = self.out or Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"
        self.heatmap_dir = self.csv_path.with_name(self.csv_path.stem + "_heatmaps") if self.heatmaps else None

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.images:
            return
        names = list(pl_module.class_names)
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.csv_path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["file", "predicted", *(f"p_{name}" for name in names)])
        self.unreadable, self.written, self._logged = [], 0, []

    @override
    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.images or self._writer is None:
            return
        dataset = getattr(trainer.datamodule, "dataset", None)
        if not isinstance(dataset, ImagesToPredict):
            return
        images, indices, errors = batch
        task, names = pl_module.task, list(pl_module.class_names)
        probs = prediction.detach().float().cpu()
        per_class = torch.stack([1 - probs, probs], dim=1) if task == "binary" else probs
        ok = [i for i, error in enumerate(errors) if not error]
        for i, error in enumerate(errors):
            if error:
                self.unreadable.append((dataset.name(int(indices[i])), error))
        for i in ok:
            p = per_class[i].tolist()
            predicted = predicted_label(names, p, task == "multilabel")
            self._writer.writerow([dataset.name(int(indices[i])), predicted, *(f"{v:.6f}" for v in p)])
        self.written += len(ok)
        if self.heatmaps and ok:
            self._write_heatmaps(pl_module, dataset, images[ok], indices[ok], per_class[ok], names)

    def _write_heatmaps(self, pl_module, dataset, images, indices, per_class, names) -> None:
        classes = per_class.argmax(dim=1)
        heat = classifier_heatmaps(pl_module, images.to(pl_module.device), classes, self.cam_layer, self.cam_method).cpu()
        from PIL import Image

        for image, h, index, c in zip(images.cpu(), heat, indices.tolist(), classes.tolist()):
            name = dataset.name(int(index))
            path = self.heatmap_dir / f"{name}.heatmap.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            picture = overlay(image, h)
            scale = max(1, -(-VIEW_SIZE // min(picture.shape[:2])))  # small scans: whole pixels, viewable size
            Image.fromarray(np.ascontiguousarray(picture.repeat(scale, 0).repeat(scale, 1))).save(path)
            if len(self._logged) < WANDB_HEATMAPS:
                self._logged.append((path, f"{name}: heat for {names[c]}"))

    @override
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.images or self._file is None:
            return
        self._file.close()
        self._file = self._writer = None
        if self.unreadable:
            with self.unreadable_path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["file", "reason"])
                writer.writerows(self.unreadable)
            listing = "; ".join(f"{name} ({reason})" for name, reason in self.unreadable[:10])
            more = f" and {len(self.unreadable) - 10} more" if len(self.unreadable) > 10 else ""
            warnings.warn(
                f"{len(self.unreadable)} file(s) in {self.images} could not be read and have no prediction: {listing}{more}; "
                f"listed in {self.unreadable_path}",
                UserWarning,
                stacklevel=2,
            )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and self._logged:
                logger.log_image("predict/heatmaps", [str(p) for p, _ in self._logged], caption=[c for _, c in self._logged])
        extra = f", heatmaps in {self.heatmap_dir}" if self.heatmaps else ""
        print(f"wrote {self.written} prediction(s) to {self.csv_path}{extra}" + (f"; {len(self.unreadable)} unreadable file(s) listed in {self.unreadable_path}" if self.unreadable else ""))
