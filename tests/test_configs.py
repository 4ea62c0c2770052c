"""Every shipped config parses, and each training config completes a fast_dev_run (tiny backbone)."""

from __future__ import annotations

import math
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
    if "model" in raw:
        return "train"
    if set(raw) == {"data"} and "class_path" in raw["data"]:
        return "data"  # your own images, replacing the recipe's data set
    return "fragment"  # a few keys added after a recipe (configs/image_size_128.yaml)


TRAIN = [p for p in CONFIGS if kind(p) == "train"]
NPZ_TRAIN = [p for p in TRAIN if "NpzDataModule" in p.read_text()]  # runnable on the shared data as shipped
DATA = [p for p in CONFIGS if kind(p) == "data"]  # your own images, added after a recipe
STUDY = [p for p in CONFIGS if kind(p) == "study"]
FRAGMENTS = [p for p in CONFIGS if kind(p) == "fragment"]


def test_configs_are_found():
    assert len(TRAIN) >= 7 and len(STUDY) >= 2 and len(DATA) == 2 and TRAIN == NPZ_TRAIN


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
    assert math.isfinite(metrics["test/auroc"])
    assert not (REPO / "report").exists(), "a test run wrote its report into the repository"


@pytest.mark.parametrize("config", STUDY, ids=lambda p: p.stem)
def test_study_config_parses(config, monkeypatch):
    monkeypatch.chdir(REPO)
    study = load_study_config(config)
    assert study.methods and study.sizes


def paper_recipe_with(capsys, *configs: Path) -> dict:
    """The paper recipe with ``configs`` added after it, as ``train.py --print_config`` resolves it."""
    from smallmed.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--config", str(REPO / "configs/paper_recipe.yaml"), *(f"--config={c}" for c in configs), "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def _flat(mapping: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in mapping.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _holds(resolved, wanted) -> bool:
    """``resolved`` has every value of ``wanted`` (the parser adds defaults next to them)."""
    if isinstance(wanted, dict):
        return isinstance(resolved, dict) and all(k in resolved and _holds(resolved[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(resolved, list) and len(resolved) == len(wanted) and all(map(_holds, resolved, wanted))
    return resolved == wanted


@pytest.mark.parametrize("config", FRAGMENTS, ids=lambda p: p.stem)
def test_a_fragment_changes_only_its_own_keys_of_the_paper_recipe(config, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    before, after = _flat(paper_recipe_with(capsys)), _flat(paper_recipe_with(capsys, config))
    wanted = _flat(yaml.safe_load(config.read_text()))
    assert wanted and all(_holds(after.get(k), v) for k, v in wanted.items()), wanted
    assert {k for k in after if after[k] != before.get(k)} <= set(wanted)


@pytest.mark.parametrize("config", DATA, ids=lambda p: p.stem)
def test_the_own_images_configs_start_from_the_paper_recipe(config, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train.py"])
    resolved = paper_recipe_with(capsys, config)
    assert resolved["data"]["class_path"] in ("smallmed.datamodules.ImageFolderDataModule", "smallmed.datamodules.ManifestDataModule")
    assert resolved["data"]["init_args"]["image_size"] == 64 and resolved["data"]["init_args"]["batch_size"] == 16
    callbacks = [c["class_path"].rsplit(".", 1)[-1] for c in resolved["trainer"]["callbacks"]]
    assert callbacks == ["HeadReparameterization", "DiscriminativeLR", "GradualUnfreezing"]
    assert resolved["model"]["init_args"]["lr_schedule"] == "one_cycle" and resolved["model"]["init_args"]["drop_rate"] == 0.2


def test_the_folder_config_trains_the_paper_recipe_on_a_folder_of_real_pngs(tmp_path, monkeypatch):
    from helpers_images import KERMANY_CLASSES, PATIENT_PATTERN, kermany_pool, write_class_folders

    images, labels, _, stems = kermany_pool()
    chosen = [*range(0, 40), *range(len(labels) - 40, len(labels))]
    write_class_folders(tmp_path / "scans", images[chosen], labels[chosen], KERMANY_CLASSES, [stems[i] for i in chosen])
    monkeypatch.setattr(sys, "argv", ["train.py"])
    monkeypatch.chdir(REPO)
    metrics = fit_and_test([
        "--config", str(REPO / "configs/paper_recipe.yaml"), "--config", str(REPO / "configs/folder_example.yaml"),
        f"--data.init_args.path={tmp_path / 'scans'}", f"--data.init_args.patient_pattern={PATIENT_PATTERN}",
        "--data.init_args.train_size=20", "--model.init_args.backbone=test_efficientnet", "--model.init_args.pretrained=false",
        "--data.init_args.image_size=32", "--trainer.fast_dev_run=true", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}", "--report.heatmaps=0", "--report.train_images=0",
    ])
    assert metrics["test/images"] > 0
