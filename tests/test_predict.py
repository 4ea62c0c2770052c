"""``train.py predict`` on a folder of new images: the CSV, unreadable files listed, heatmap files, TTA.

The images are real BreastMNIST test images written as PNG, JPEG, 16-bit PNG and DICOM files.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers_images import BREAST, real, save, truncate, write_dicom
from helpers_wandb import wandb_run
from PIL import Image

from smallmed.cli import main
from smallmed.datamodules import ImagesToPredict, NpzDataModule, PredictFolderDataModule
from smallmed.model import SmallMedClassifier
from smallmed.prediction import PredictionWriter

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["malignant", "benign"]


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny fitted run on real BreastMNIST: its saved config.yaml, best checkpoint and npz file."""
    d = real(BREAST)
    root = tmp_path_factory.mktemp("trained")
    arrays = {}
    for split, n in (("train", 8), ("val", 4), ("test", 6)):
        y = d[f"{split}_labels"].reshape(-1)
        idx = np.concatenate([np.flatnonzero(y == 0)[:n], np.flatnonzero(y == 1)[:n]])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = d[f"{split}_images"][idx], y[idx]
    data = root / "breast.npz"
    np.savez(data, **arrays)
    main([
        "fit", "--model=smallmed.SmallMedClassifier", "--model.init_args.backbone=test_resnet", "--model.init_args.pretrained=false",
        "--data=smallmed.datamodules.NpzDataModule", f"--data.init_args.path={data}", "--data.init_args.image_size=32",
        "--data.init_args.batch_size=4", f"--data.init_args.class_names={CLASSES}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root / 'logs'}",
        "--report.train_images=0",
    ])
    run = root / "logs" / "smallmed" / "version_0"
    (ckpt,) = (run / "checkpoints").glob("best-*.ckpt")
    return {"config": run / "config.yaml", "ckpt": ckpt, "data": data, "test": arrays["test_images"], "root": root}


def new_images(folder: Path, test_images: np.ndarray) -> dict[str, int]:
    """A folder as a hospital export looks: PNG, JPEG in a sub-folder, 16-bit PNG, DICOM (with and without a
    suffix), plus a truncated PNG, a text file and a hidden file. Returns ``{8-bit PNG name: test index}``."""
    pngs = {}
    for i in range(4):
        name = f"patient{i}.png"
        save(folder / name, test_images[i])
        pngs[name] = i
    save(folder / "follow-up" / "scan.jpg", test_images[4], quality=95)
    save(folder / "detector16.png", test_images[5].astype(np.uint16) * 16 + 100)  # a 12-bit detector's values
    write_dicom(folder / "ct.dcm", test_images[6].astype(np.uint16) * 16, bits_stored=12)
    write_dicom(folder / "IM0001", test_images[7].astype(np.uint16) * 16, bits_stored=12, window=(2048, 4096))
    truncate(save(folder / "broken.png", test_images[8]), keep=0.4)
    (folder / "notes.txt").write_text("reported by dr. x\n")
    (folder / "manifest.csv").write_text("path,label\npatient0.png,benign\n")
    (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 Windows thumbnail cache")
    save(folder / ".thumbnail.png", test_images[9])
    return pngs


def test_predict_a_folder_of_real_images_to_csv_with_heatmaps(trained, tmp_path, capsys):
    folder = tmp_path / "new_images"
    pngs = new_images(folder, trained["test"])
    out = tmp_path / "out" / "preds.csv"
    with pytest.warns(UserWarning) as seen:
        main(["predict", "--config", str(trained["config"]), "--ckpt_path", str(trained["ckpt"]),
              "--predictions.images", str(folder), "--predictions.out", str(out), "--predictions.heatmaps", "true"])
    said = [str(w.message) for w in seen]
    # files that are not images are left out, as training leaves them out; only the broken image is "unreadable"
    assert any(re.search(r"left out 3 file\(s\) that are not PNG, JPEG or DICOM images \(Thumbs\.db, manifest\.csv, notes\.txt\)", m)
               for m in said), said
    assert any(re.search(r"1 file\(s\) in .*new_images could not be read and have no prediction: broken\.png", m) for m in said), said

    columns, rows = read_rows(out)
    assert columns == ["file", "predicted", "p_malignant", "p_benign"]
    readable = ["IM0001", "ct.dcm", "detector16.png", "follow-up/scan.jpg", *sorted(pngs)]
    assert [r["file"] for r in rows] == sorted(readable)
    for r in rows:
        p = np.array([float(r["p_malignant"]), float(r["p_benign"])])
        assert p.sum() == pytest.approx(1.0, abs=1e-5) and (p >= 0).all()
        assert r["predicted"] == CLASSES[int(p.argmax())]

    # new PNGs go through exactly the test-time path: same probabilities as the data module's test tensors
    model = SmallMedClassifier.load_from_checkpoint(trained["ckpt"]).eval()
    dm = NpzDataModule(str(trained["data"]), image_size=32)
    dm.setup()
    test = dm.dataset("test")
    with torch.no_grad():
        expected = model.predict_proba(torch.stack([test[i][0] for i in range(4)]))
    by_file = {r["file"]: float(r["p_benign"]) for r in rows}
    assert [by_file[name] for name in sorted(pngs)] == pytest.approx(expected[[pngs[n] for n in sorted(pngs)]].tolist(), abs=1e-5)

    _, unreadable = read_rows(out.with_name("preds.unreadable.csv"))
    assert [r["file"] for r in unreadable] == ["broken.png"]
    assert "corrupt" in unreadable[0]["reason"] or "truncated" in unreadable[0]["reason"]

    heat_dir = tmp_path / "out" / "preds_heatmaps"
    assert sorted(p.relative_to(heat_dir).as_posix() for p in heat_dir.rglob("*.png")) == sorted(f"{n}.heatmap.png" for n in readable)
    with Image.open(heat_dir / "patient0.png.heatmap.png") as image:
        assert image.mode == "RGB" and image.size == (128, 128)  # 32 px crop, enlarged 4x pixel for pixel
        pixels = np.asarray(image)
    assert pixels.std() > 0
    assert f"wrote {len(readable)} prediction(s) to {out}" in capsys.readouterr().out


def test_predict_default_output_is_in_the_run_folder(trained, tmp_path):
    folder = tmp_path / "one"
    save(folder / "a.png", trained["test"][0])
    logs = tmp_path / "logs"
    main(["predict", "--config", str(trained["config"]), "--ckpt_path", str(trained["ckpt"]),
          f"--trainer.logger.init_args.save_dir={logs}", "--predictions.images", str(folder)])
    _, rows = read_rows(logs / "smallmed" / "version_0" / "predictions.csv")
    assert [r["file"] for r in rows] == ["a.png"]
    assert not (logs / "smallmed" / "version_0" / "predictions_heatmaps").exists()  # heatmaps only when asked


def test_two_predict_runs_blend_into_their_mean(trained, tmp_path):
    """``train.py blend`` reads what ``predict`` writes: two checkpoints (the second with its last bias moved)."""
    from smallmed.blend import blend_predictions

    folder = tmp_path / "imgs"
    for i in range(4):
        save(folder / f"{i}.png", trained["test"][i])
    moved = torch.load(trained["ckpt"], map_location="cpu", weights_only=False)
    bias = [k for k in moved["state_dict"] if k.endswith(".bias")][-1]
    moved["state_dict"][bias] += 1.0
    torch.save(moved, tmp_path / "moved.ckpt")
    outs = []
    for ckpt in (trained["ckpt"], tmp_path / "moved.ckpt"):
        outs.append(tmp_path / f"{Path(ckpt).stem}.csv")
        main(["predict", "--config", str(trained["config"]), "--ckpt_path", str(ckpt),
              f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", "--predictions.images", str(folder),
              "--predictions.out", str(outs[-1])])
    one, other = (read_rows(o)[1] for o in outs)
    assert all(abs(float(a["p_benign"]) - float(b["p_benign"])) > 0.05 for a, b in zip(one, other))
    columns, rows = read_rows(blend_predictions(outs, tmp_path / "blend.csv"))
    assert columns == ["file", "predicted", "p_malignant", "p_benign"] and [r["file"] for r in rows] == [r["file"] for r in one]
    for r, a, b in zip(rows, one, other):
        assert float(r["p_benign"]) == pytest.approx((float(a["p_benign"]) + float(b["p_benign"])) / 2, abs=2e-6)
        assert r["predicted"] == CLASSES[int(float(r["p_benign"]) >= 0.5)]


def test_multiclass_with_tta_rows_sum_to_one_and_use_the_tta_average(tmp_path):
    d = real(BREAST)
    folder = tmp_path / "imgs"
    for i in range(5):
        save(folder / f"{i}.png", d["test_images"][i])
    shutil.copy(folder / "0.png", folder / "rgb_copy.png")
    save(folder / "rgb.png", np.stack([d["test_images"][5], d["test_images"][6], d["test_images"][7]], axis=-1))
    torch.manual_seed(0)
    names = ["normal", "benign", "malignant"]
    model = SmallMedClassifier("test_efficientnet", num_classes=3, task="multiclass", pretrained=False, tta=True, class_names=names)
    out = tmp_path / "p.csv"
    writer = PredictionWriter(images=str(folder), out=str(out))
    dm = PredictFolderDataModule(str(folder), image_size=32, batch_size=3)
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[writer], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.predict(model, datamodule=dm)
    columns, rows = read_rows(out)
    assert columns == ["file", "predicted", "p_normal", "p_benign", "p_malignant"]
    assert [r["file"] for r in rows] == ["0.png", "1.png", "2.png", "3.png", "4.png", "rgb.png", "rgb_copy.png"]
    probs = torch.tensor([[float(r[f"p_{n}"]) for n in names] for r in rows])
    torch.testing.assert_close(probs.sum(1), torch.ones(len(rows)), atol=1e-5, rtol=0)
    model.eval()
    dataset = ImagesToPredict(folder, image_size=32)
    with torch.no_grad():
        grey = torch.stack([dataset[i][0] for i in (0, 1, 2, 3, 4)])
        with_tta = model.predict_proba(grey)
        model.hparams.tta = False
        without = model.predict_proba(grey)
    torch.testing.assert_close(probs[:5], with_tta, atol=1e-5, rtol=0)
    assert not torch.allclose(with_tta, without, atol=1e-4)  # the four passes did change the answer
    assert dataset[6][0].shape == (1, 32, 32)  # grey saved as RGB is read as grey, as in training


def test_a_predict_run_prints_no_notices_the_user_cannot_act_on(trained, tmp_path):
    """In a real process (pytest's own filters set aside): no "The dirpath has changed" for another run's
    checkpoint, no pytree "LeafSpec" deprecation."""
    folder = tmp_path / "images"
    save(folder / "a.png", trained["test"][0])
    done = subprocess.run([sys.executable, "-W", "default", str(REPO / "train.py"), "predict", "--config", str(trained["config"]),
                           "--ckpt_path", str(trained["ckpt"]), "--predictions.images", str(folder),
                           "--predictions.out", str(tmp_path / "p.csv")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dirpath has changed" not in done.stderr and "LeafSpec" not in done.stderr, done.stderr[-2000:]
    assert (tmp_path / "p.csv").is_file()


def test_missing_or_empty_folders_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such folder of images to predict: .*nowhere"):
        ImagesToPredict(tmp_path / "nowhere", image_size=32)
    (tmp_path / "empty" / ".cache").mkdir(parents=True)
    (tmp_path / "empty" / ".cache" / "x.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"empty holds no image files to predict"):
        ImagesToPredict(tmp_path / "empty", image_size=32)


def test_predict_heatmaps_are_logged_to_wandb(tmp_path):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    d = real(BREAST)
    folder = tmp_path / "imgs"
    for i in range(3):
        save(folder / f"case{i}.png", d["test_images"][i])
    model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False, class_names=CLASSES)
    writer = PredictionWriter(images=str(folder), out=str(tmp_path / "p.csv"), heatmaps=True)
    trainer = L.Trainer(accelerator="cpu", devices=1, callbacks=[writer], enable_progress_bar=False,
                        logger=WandbLogger(project="smallmed-test", save_dir=str(tmp_path / "wb")),
                        enable_model_summary=False, default_root_dir=tmp_path)
    try:
        trainer.predict(model, datamodule=PredictFolderDataModule(str(folder), image_size=32))
    finally:
        wandb.finish()
    run = wandb_run(tmp_path / "wb")
    (filenames,) = run["history"]["predict/heatmaps/filenames"]
    (captions,) = run["history"]["predict/heatmaps/captions"]
    assert len(filenames) == 3 and all((run["dir"] / "files" / f).is_file() for f in filenames)
    assert [c.split(":")[0] for c in captions] == ["case0.png", "case1.png", "case2.png"]
    assert (tmp_path / "p_heatmaps" / "case0.png.heatmap.png").is_file()
