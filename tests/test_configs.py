"""Every shipped config parses, and each training config completes a fast_dev_run (tiny backbone)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from smallmed.cli import fit_and_test
from smallmed.study import load_study_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def kind(path: Path) -> str:
    raw = yaml.safe_load(path.read_text())
    if "targets" in raw:
        return "study"
    return "train" if "model" in raw else "fragment"


TRAIN = [p for p in CONFIGS if kind(p) == "train"]
# Runnable on the shared data as shipped; the others (folder_example.yaml names a placeholder
# folder) are parsed and resolved below.
NPZ_TRAIN = [p for p in TRAIN if "NpzDataModule" in p.read_text()]
STUDY = [p for p in CONFIGS if kind(p) == "study"]


def test_configs_are_found():
    assert len(TRAIN) >= 7 and len(STUDY) >= 2


@pytest.mark.parametrize("config", NPZ_TRAIN, ids=lambda p: p.stem)
def test_training_config_fast_dev_run(config, tmp_path, monkeypatch, breastmnist):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(REPO)  # configs name data and weights relative to the repository root
    raw = yaml.safe_load(config.read_text())
    assert raw["data"]["init_args"]["path"].startswith("../shared/data/")
    data_args = [f"--data.init_args.path={breastmnist}"]
    metrics = fit_and_test([
        "--config", str(config), *data_args,
        "--model.init_args.backbone=test_efficientnet", "--model.init_args.pretrained=false",
        "--data.init_args.image_size=32", "--trainer.fast_dev_run=true",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
        "--report.heatmaps=0", "--report.train_images=0",
    ])
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    assert not (REPO / "report").exists(), "a test run wrote its report into the repository"


@pytest.mark.parametrize("config", STUDY, ids=lambda p: p.stem)
def test_study_config_parses(config, monkeypatch):
    monkeypatch.chdir(REPO)
    study = load_study_config(config)
    assert study.methods and study.sizes


@pytest.mark.parametrize("config", [p for p in TRAIN if p not in NPZ_TRAIN], ids=lambda p: p.stem)
def test_other_training_configs_resolve(config, monkeypatch, capsys):
    from smallmed.cli import main

    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(config), "--print_config"])
    assert exc.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["data"]["class_path"].startswith("smallmed.datamodules.")
