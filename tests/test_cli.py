"""The LightningCLI entry point: help, resolved configs, typos, and fit-then-test runs."""

from __future__ import annotations

import math
import csv
import re
import sys
from pathlib import Path

import pytest
import yaml

from smallmed.checkpoint_io import DirectFileCheckpointIO
from smallmed.cli import build_cli, fit_and_test, main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "paper_recipe.yaml"


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when both ``args`` and ``sys.argv`` (here pytest's own) hold arguments."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


def run_exit(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def tiny_run_args(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--model=smallmed.SmallMedClassifier",
        "--model.init_args.backbone=test_resnet",
        "--model.init_args.pretrained=false",
        "--model.init_args.lr=0.01",
        "--data=smallmed.datamodules.NpzDataModule",
        f"--data.init_args.path={data}",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=4",
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.max_epochs=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        *extra,
    ]


# ----------------------------------------------------------------- parsing


def test_help_lists_model_data_and_trainer_options(capsys):
    assert run_exit(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--config", "--model", "--data", "--trainer.max_epochs", "--trainer.precision", "--checkpoint.monitor", "--seed_everything"):
        assert option in out, option


def test_class_help_lists_init_args(capsys):
    # jsonargparse's class help prints the keys without `init_args` (both spellings parse).
    assert run_exit(["--model.help", "SmallMedClassifier"]) == 0
    out = capsys.readouterr().out
    for option in ("--model.backbone", "--model.pretrained", "--model.lr_schedule", "one_cycle,constant,plateau"):
        assert option in out, option
    assert run_exit(["--data.help", "NpzDataModule"]) == 0
    out = capsys.readouterr().out
    for option in ("--data.path", "--data.train_size", "--data.sampling", "--data.seed"):
        assert option in out, option


def test_print_config_resolves_the_demo(capsys):
    assert run_exit(["--config", str(DEMO), "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    model, data = config["model"], config["data"]
    assert model["class_path"] == "smallmed.SmallMedClassifier"
    assert model["init_args"]["backbone"] == "tf_efficientnet_lite0"
    assert model["init_args"]["lr_schedule"] == "one_cycle"
    assert data["class_path"] == "smallmed.datamodules.NpzDataModule"
    assert data["init_args"]["train_size"] == 50
    assert "num_classes" in data["init_args"]  # linked into the model at instantiation
    assert config["trainer"]["max_epochs"] == 20
    assert config["checkpoint"]["monitor"] == "val/auroc"
    assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.CSVLogger"
    assert config["trainer"]["plugins"] == [{"class_path": "smallmed.checkpoint_io.DirectFileCheckpointIO"}]


def test_print_config_applies_flags(capsys):
    assert run_exit(["--config", str(DEMO), "--data.init_args.train_size", "100", "--model.init_args.lr_schedule", "cosine", "--print_config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["init_args"]["train_size"] == 100
    assert config["model"]["init_args"]["lr_schedule"] == "cosine"


def test_flag_typo_is_an_error(capsys):
    assert run_exit(["--config", str(DEMO), "--trainer.max_epoch", "1", "--print_config"]) == 2
    assert "--trainer.max_epoch" in capsys.readouterr().err


def test_flag_typo_is_an_error_with_a_subcommand(capsys):
    assert run_exit(["fit", "--config", str(DEMO), "--trainer.max_epoch", "1", "--print_config"]) == 2
    assert "--trainer.max_epoch" in capsys.readouterr().err


def test_config_file_typo_is_an_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainr:\n  max_epochs: 1\n")
    assert run_exit(["--config", str(DEMO), "--config", str(bad), "--print_config"]) == 2
    assert "trainr" in capsys.readouterr().err


def test_bad_choice_is_an_error(capsys):
    assert run_exit(["--config", str(DEMO), "--model.init_args.lr_schedule", "linear", "--print_config"]) == 2
    assert "lr_schedule" in capsys.readouterr().err


# --------------------------------------------------------------- end to end


def test_fit_and_test_tiny_run(tmp_path, make_npz, capsys):
    data = make_npz(train=(8, 8), val=(4, 4), test=(5, 5))
    metrics = fit_and_test(tiny_run_args(tmp_path, data, "--data.init_args.train_size=8", "--trainer.max_epochs=2"))
    assert math.isfinite(metrics["test/auroc"])
    assert {"test/acc", "test/f1"} <= set(metrics)
    out = capsys.readouterr().out
    assert "test ROC AUC" in out and "10 test images" in out
    run_dir = tmp_path / "logs" / "smallmed" / "version_0"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # the resolved config beside the log
    assert config["data"]["init_args"]["train_size"] == 8
    assert config["model"]["init_args"]["backbone"] == "test_resnet"
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val/auroc") for r in rows) and any(r.get("test/auroc") for r in rows)
    assert any(r.get("lr-Adam/head") for r in rows)  # LearningRateMonitor is on, one key per layer group
    checkpoints = list((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
    assert len(checkpoints) == 1
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [checkpoints[0].name, "last.ckpt"]  # no partial files


def test_trainer_writes_checkpoints_with_direct_file_io(tmp_path, make_npz):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    trainer = build_cli(tiny_run_args(tmp_path, data), run=False).trainer
    assert isinstance(trainer.strategy.checkpoint_io, DirectFileCheckpointIO)
    trainer = build_cli(tiny_run_args(tmp_path, data, "--trainer.plugins=null"), run=False).trainer
    assert type(trainer.strategy.checkpoint_io).__name__ == "TorchCheckpointIO"  # a config can go back to Lightning's


def test_run_without_a_logger_drops_the_lr_monitor(tmp_path, make_npz):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    args = [a for a in tiny_run_args(tmp_path, data) if not a.startswith("--trainer.logger")] + ["--trainer.logger=false"]
    metrics = fit_and_test(args)  # Lightning's LearningRateMonitor would raise: no logger
    assert math.isfinite(metrics["test/auroc"])
    assert list((tmp_path / "checkpoints").glob("best-epoch*.ckpt"))  # in default_root_dir, as Lightning puts them


def test_run_without_checkpointing_tests_the_last_weights(tmp_path, make_npz, capsys):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    metrics = fit_and_test(tiny_run_args(tmp_path, data, "--trainer.enable_checkpointing=false"))
    assert math.isfinite(metrics["test/auroc"])
    assert "(last weights, 4 test images: 0: 2, 1: 2)" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.ckpt"))


def test_sanity_check_on_part_of_a_class_sorted_val_split_is_quiet(tmp_path, make_npz, recwarn):
    # The sanity pass sees 2 eval batches of 4: class 0 only. Its per-class AUROC used to warn.
    data = make_npz(train=(4, 4, 4), val=(8, 8, 8), test=(2, 2, 2))
    metrics = fit_and_test(tiny_run_args(tmp_path, data, "--data.init_args.eval_batch_size=4", "--trainer.num_sanity_val_steps=2"))
    assert math.isfinite(metrics["test/auroc"])
    assert not [w for w in recwarn if "No positive samples" in str(w.message)]


def test_subcommand_fit(tmp_path, make_npz):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    main(["fit", *tiny_run_args(tmp_path, data, "--trainer.limit_train_batches=1")])
    assert (tmp_path / "logs" / "smallmed" / "version_0" / "config.yaml").is_file()


def test_real_breastmnist_with_lite0_weights(tmp_path, breastmnist, lite0_weights, capsys):
    args = [
        "--config",
        str(DEMO),
        f"--model.init_args.pretrained={lite0_weights}",
        f"--data.init_args.path={breastmnist}",
        "--data.init_args.train_size=50",
        "--data.init_args.image_size=32",
        "--trainer.max_epochs=4",  # 12 steps: the unfreezing milestones fall on steps 1 and 2
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    metrics = fit_and_test(args)
    auroc = metrics["test/auroc"]
    assert isinstance(auroc, float) and math.isfinite(auroc)
    out = capsys.readouterr().out
    assert "test ROC AUC" in out and "156 test images" in out
    assert re.search(r"train\s+25\s+25\s+50\n", out)  # the data module's subset summary
