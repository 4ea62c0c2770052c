"""The run report: its numbers, the PNG / CSV files beside the CSV log, and a W&B offline run read back.

The W&B test reads the run's own ``.wandb`` transaction log (no account, no network): every history
row, config update, artifact and media file the run wrote is checked there, not just that
``log_image`` was called.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers_wandb import wandb_run

from smallmed.cli import fit_and_test
from smallmed.report import (
    RunReport,
    class_curves,
    confidently_wrong,
    confusion_matrices,
    metrics_table,
)

REPORT_PNGS = ("train_augmented", "schedule", "roc_curve", "confusion_matrix", "confident_wrong", "heatmaps")


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])


# ------------------------------------------------------------------ the numbers


def test_confidently_wrong_per_task():
    wrong, conf = confidently_wrong("binary", torch.tensor([0.9, 0.2, 0.6, 0.45]), torch.tensor([0, 0, 1, 1]))
    assert wrong.tolist() == [True, False, False, True]
    torch.testing.assert_close(conf, torch.tensor([0.9, 0.8, 0.6, 0.55]))
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]])
    wrong, conf = confidently_wrong("multiclass", probs, torch.tensor([0, 0, 1]))
    assert wrong.tolist() == [False, True, False]
    torch.testing.assert_close(conf, torch.tensor([0.7, 0.6, 0.5]))
    # multi-label: the largest probability put on the wrong side of 0.5, over the wrong labels only
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.7], [0.2, 0.8]])
    wrong, conf = confidently_wrong("multilabel", probs, torch.tensor([[0, 0], [1, 1], [0, 1]]))
    assert wrong.tolist() == [True, True, False]
    torch.testing.assert_close(conf, torch.tensor([0.9, 0.6, 0.0]))


def test_class_curves_match_torchmetrics_and_mark_undefined_aucs():
    from torchmetrics.functional.classification import binary_auroc, multilabel_auroc

    probs, targets = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.7]), torch.tensor([0, 0, 1, 1, 0])
    curves = class_curves("binary", probs, targets, ["normal", "tumour"])
    assert [c.name for c in curves] == ["normal", "tumour"]
    expected = float(binary_auroc(probs, targets))
    assert curves[1].auc == pytest.approx(expected) and curves[0].auc == pytest.approx(expected)
    assert (curves[1].positives, curves[1].negatives) == (2, 3)
    assert curves[1].fpr[0] == 0 and curves[1].tpr[-1] == 1

    probs = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.7, 0.4], [0.6, 0.6, 0.3], [0.3, 0.1, 0.2]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])  # label 2 never present
    curves = class_curves("multilabel", probs, targets, ["a", "b", "c"])
    per_label = multilabel_auroc(probs[:, :2], targets[:, :2], num_labels=2, average="none")
    assert [c.auc for c in curves[:2]] == pytest.approx(per_label.tolist())
    assert math.isnan(curves[2].auc) and curves[2].positives == 0


def test_confusion_matrices_rows_are_true_columns_predicted():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.2, 0.2, 0.6]])
    (matrix,) = confusion_matrices("multiclass", probs, torch.tensor([0, 0, 1, 2]), ["a", "b", "c"]).values()
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    (matrix,) = confusion_matrices("binary", torch.tensor([0.9, 0.2, 0.6]), torch.tensor([0, 0, 1]), ["n", "p"]).values()
    assert matrix.tolist() == [[1, 1], [0, 1]]
    per_label = confusion_matrices("multilabel", torch.tensor([[0.9, 0.1], [0.4, 0.7]]), torch.tensor([[0, 0], [1, 1]]), ["x", "y"])
    assert per_label["x"].tolist() == [[0, 1], [1, 0]] and per_label["y"].tolist() == [[1, 0], [0, 1]]


def test_metrics_table_lists_scalar_test_metrics_summary_first():
    table = metrics_table(
        {"test/f1": 0.5, "test/auroc/benign": torch.tensor(0.75), "test/auroc": torch.tensor(0.8123), "val/auroc": 0.1,
         "test/acc": 0.7, "test/vector": torch.ones(3)},
        images=156,
    )
    assert table.splitlines() == [
        "test metrics (156 images)",
        "  metric          value",
        "  auroc          0.8123",
        "  acc            0.7000",
        "  f1             0.5000",
        "  auroc/benign   0.7500",
    ]


def test_the_panel_keeps_the_most_confidently_wrong_images_across_batches():
    report = RunReport(wrong_images=3, heatmaps=0)
    module = SimpleNamespace(task="binary")
    report.on_test_epoch_start(None, module)
    images = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    batches = [  # (probabilities, targets): wrong at 0.9, 0.7 | 0.95, 0.6 | 0.8 (confidences)
        (torch.tensor([0.9, 0.3, 0.7, 0.1]), torch.tensor([0, 0, 0, 0])),
        (torch.tensor([0.05, 0.6, 0.2, 0.9]), torch.tensor([1, 0, 0, 1])),
        (torch.tensor([0.2, 0.8, 0.5, 0.5]), torch.tensor([1, 0, 1, 1])),
    ]
    for i, (probs, targets) in enumerate(batches):
        report.on_test_batch_end(None, module, probs, (images, targets), i)
    assert report.confident_wrong() == [(pytest.approx(0.95), 4), (pytest.approx(0.9), 0), (pytest.approx(0.8), 9)]


def test_report_options_are_checked():
    with pytest.raises(ValueError, match=r"heatmaps must be >= 0, got -1"):
        RunReport(heatmaps=-1)
    with pytest.raises(ValueError, match=r"unknown cam_method 'cam\+\+'"):
        RunReport(cam_method="cam++")


# ------------------------------------------------------------------- end to end


def write_config(tmp_path: Path, data: Path, loggers: list[dict], **data_args) -> Path:
    """A tiny paper-style run: test_resnet at 32 px, 3 layer groups, LR ratio 1/3, unfreezing at 25% / 50%."""
    config = {
        "model": {"class_path": "smallmed.SmallMedClassifier",
                  "init_args": {"backbone": "test_resnet", "pretrained": False, "lr": 0.01}},
        "data": {"class_path": "smallmed.datamodules.NpzDataModule",
                 "init_args": {"path": str(data), "image_size": 32, "batch_size": 4, **data_args}},
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_epochs": 2, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False, "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": "smallmed.callbacks.DiscriminativeLR", "init_args": {"ratio": 0.333}},
                {"class_path": "smallmed.callbacks.GradualUnfreezing", "init_args": {"milestones": [0.25, 0.5]}},
            ],
            "logger": loggers,
        },
        "report": {"heatmaps": 4, "wrong_images": 4, "train_images": 6},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def csv_logger(save_dir: Path) -> dict:
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(save_dir), "name": "smallmed"}}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path, min_width: int = 100) -> None:
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width and image.height >= 50, (path, image.size)


def test_without_wandb_the_pictures_are_pngs_beside_the_csv_log(tmp_path, make_npz, capsys):
    """Multi-label (3 labels, per-label ROC / 2x2 matrices / AUC rows) with the paper's unfreezing."""
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, 2, size=(n, 3)) for s, n in (("train", 12), ("val", 6), ("test", 10))}
    for y in labels.values():  # every label present and absent in every split
        y[0], y[1] = 1, 0
    data = make_npz(train=(6, 6), val=(3, 3), test=(5, 5), overrides={f"{s}_labels": y for s, y in labels.items()})
    config = write_config(tmp_path, data, [csv_logger(tmp_path / "logs")], class_names=["mass", "calcification", "cyst"])
    metrics = fit_and_test(["--config", str(config)])
    out = capsys.readouterr().out
    run = tmp_path / "logs" / "smallmed" / "version_0"
    report = run / "report"
    for name in REPORT_PNGS:
        assert_png(report / f"{name}.png")

    summary = read_rows(report / "data_summary.csv")
    assert [r["split"] for r in summary] == ["train", "val", "test"]
    assert [int(r["total"]) for r in summary] == [12, 6, 10]
    assert [int(r["mass"]) for r in summary] == [int(labels[s][:, 0].sum()) for s in ("train", "val", "test")]
    assert {r["seed"] for r in summary} == {"0"} and {r["image_size"] for r in summary} == {"32"}

    aucs = read_rows(report / "per_class_auc.csv")
    assert [r["class"] for r in aucs] == ["mass", "calcification", "cyst"]
    for row in aucs:  # the same numbers as the logged per-class test metrics
        assert float(row["auc"]) == pytest.approx(metrics[f"test/auroc/{row['class']}"], abs=1e-5)
        assert int(row["positives"]) == int(labels["test"][:, ["mass", "calcification", "cyst"].index(row["class"])].sum())

    rows = read_rows(run / "metrics.csv")
    frozen = [(float(r["unfreezing/frozen/early"]), float(r["unfreezing/frozen/late"]), float(r["unfreezing/frozen/head"]))
              for r in rows if r.get("unfreezing/frozen/early")]
    phases = [state for i, state in enumerate(frozen) if i == 0 or state != frozen[i - 1]]
    assert phases == [(1.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 0.0)]  # head only, + late body, + early body
    assert any(r.get("lr-Adam/early") for r in rows) and any(r.get("lr-Adam/head") for r in rows)

    # the console ends with one short table (not Lightning's long one), then the AUC line
    assert "DataLoader 0" not in out and "Test metric" not in out
    assert re.search(r"test metrics \(10 images\)\n  metric +value\n  auroc +\d\.\d{4}\n  acc +\d\.\d{4}\n  f1 +\d\.\d{4}\n"
                     r"  auroc/calcification +\d\.\d{4}\n  auroc/cyst +\d\.\d{4}\n  auroc/mass +\d\.\d{4}\ntest ROC AUC: ", out)


# --------------------------------------------------------------- W&B, read back


def test_wandb_offline_run_holds_every_key_and_media_item(tmp_path, make_npz):
    import wandb

    data = make_npz(train=(8, 8), val=(4, 4), test=(5, 5))
    wandb_logger = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {"project": "smallmed-test", "save_dir": str(tmp_path / "wb"),
                                  "log_model": True, "group": "breast/imagenet/paper/N16"}}
    config = write_config(tmp_path, data, [wandb_logger, csv_logger(tmp_path / "logs")], class_names=["malignant", "benign"])
    try:
        metrics = fit_and_test(["--config", str(config)])
    finally:
        wandb.finish()
    run = wandb_run(tmp_path / "wb")
    history, files = run["history"], run["dir"] / "files"

    # scalars: test metrics, per-group LRs, the unfreezing phase per step
    assert history["test/auroc"][-1] == pytest.approx(metrics["test/auroc"])
    for key in ("test/acc", "test/f1", "val/auroc", "train/loss_step", "lr-Adam/early", "lr-Adam/late", "lr-Adam/head",
                "unfreezing/trainable_groups"):
        assert key in history, key
    assert history["unfreezing/frozen/early"][0] == 1 and history["unfreezing/frozen/early"][-1] == 0
    assert set(history["unfreezing/frozen/head"]) == {0}
    assert history["unfreezing/trainable_groups"][0] == 1 and history["unfreezing/trainable_groups"][-1] == 3

    # media: images are the report's own PNG files, byte for byte; tables hold the report's rows
    report = tmp_path / "logs" / "smallmed" / "version_0" / "report"
    for key, name in (("data/train_augmented", "train_augmented"), ("train/schedule", "schedule"),
                      ("test/roc_curve", "roc_curve"), ("test/confusion_matrix", "confusion_matrix"),
                      ("test/confident_wrong", "confident_wrong"), ("test/heatmaps", "heatmaps")):
        assert history[f"{key}/_type"] == ["images/separated"], key
        (filenames,) = history[f"{key}/filenames"]
        assert (files / filenames[0]).read_bytes() == (report / f"{name}.png").read_bytes(), key
    for key, csv_name in (("data/summary", "data_summary.csv"), ("test/per_class_auc", "per_class_auc.csv")):
        assert history[f"{key}/_type"] == ["table-file"], key
        (table_path,) = history[f"{key}/path"]
        table = json.loads((files / table_path).read_text())
        rows = read_rows(report / csv_name)
        assert table["columns"] == list(rows[0]) and len(table["data"]) == len(rows), key
    summary = json.loads((files / history["data/summary/path"][0]).read_text())
    assert summary["data"][0][:4] == ["train", 8, 8, 16] and summary["columns"][1:3] == ["malignant", "benign"]

    # the resolved config, the study cell as group, the best checkpoint as an artifact
    assert run["config"]["config"]["model"]["init_args"]["backbone"] == "test_resnet"
    assert run["config"]["config"]["report"]["heatmaps"] == 4
    assert run["config"]["backbone"] == "test_resnet"  # the model's own hyperparameters, as before
    assert (report.parent / "config.yaml").is_file()  # W&B is the first logger: a copy beside the CSV log too
    assert run["group"] == "breast/imagenet/paper/N16"
    assert ("model", ["model.ckpt"], ["best", "latest"]) in [(t, p, sorted(a)) for t, p, a in run["artifacts"]]


def test_a_transformer_backbone_run_ends_with_its_test_and_every_picture_but_the_heatmaps(tmp_path, make_npz, capsys, recwarn):
    """A ViT gives tokens, not feature maps: class-activation heatmaps cannot be drawn, and that must not
    cost the run its test (it used to end in a ValueError after training)."""
    data = make_npz(train=(6, 6), val=(3, 3), test=(5, 5))
    config = write_config(tmp_path, data, [csv_logger(tmp_path / "logs")])
    metrics = fit_and_test(["--config", str(config), "--model.init_args.backbone", "test_vit"])
    assert any(re.search(r"RunReport: no heatmaps for this backbone .*not a \(B, C, h, w\) feature map", str(w.message))
               for w in recwarn)
    assert math.isfinite(metrics["test/auroc"]) and "test ROC AUC" in capsys.readouterr().out
    report = tmp_path / "logs" / "smallmed" / "version_0" / "report"
    for name in REPORT_PNGS:
        if name != "heatmaps":
            assert_png(report / f"{name}.png")
    assert not (report / "heatmaps.png").exists()


def test_a_fixed_size_backbone_at_another_size_is_refused_before_training(tmp_path, make_npz):
    data = make_npz(train=(6, 6), val=(3, 3), test=(5, 5))
    config = write_config(tmp_path, data, [csv_logger(tmp_path / "logs")])
    with pytest.raises(ValueError, match=r"backbone 'vit_tiny_patch16_224' takes 224x224 px inputs only.*gives 32x32\. "
                                         r"HINT: set data.init_args.image_size: 224"):
        fit_and_test(["--config", str(config), "--model.init_args.backbone", "vit_tiny_patch16_224"])
    assert not list(tmp_path.rglob("*.ckpt"))
