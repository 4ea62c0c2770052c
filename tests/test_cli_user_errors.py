"""What a hospital user hits through ``train.py``: silent mistakes made loud, errors said in one line.

Each test here failed before its fix (issue "What a hospital user hits", items 2 to 9).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from test_cli import DEMO, tiny_run_args

from smallmed.cli import main


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train.py"])


def fails(args: list[str], capsys) -> tuple[int, str]:
    """Run ``main(args)``, expecting it to stop; its exit code and what it wrote to stderr."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code, capsys.readouterr().err


# ------------------------------------------------------------------------ item 2: a linked option
@pytest.mark.parametrize("where", ["command line", "config file"])
def test_a_num_classes_that_disagrees_with_the_data_is_refused_naming_both(tmp_path, make_npz, capsys, where):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    extra = ["--model.init_args.num_classes", "3"]
    if where == "config file":
        override = tmp_path / "mine.yaml"
        override.write_text(yaml.safe_dump({"model": {"init_args": {"num_classes": 3}}}))
        extra = ["--config", str(override)]
    code, err = fails(tiny_run_args(tmp_path, data, *extra), capsys)
    source = "on the command line" if where == "command line" else f"in {tmp_path / 'mine.yaml'}"
    assert code == 1
    assert f"model.init_args.num_classes=3 ({source}) disagrees with the data: NpzDataModule gives num_classes=2" in err


def test_a_num_classes_that_agrees_with_the_data_is_fine(tmp_path, make_npz):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    main(tiny_run_args(tmp_path, data, "--model.init_args.num_classes", "2"))


# ------------------------------------------------------------- item 3: predict without images
def test_predict_without_images_says_what_it_needs_and_writes_nothing(tmp_path, make_npz, capsys):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    code, err = fails(["predict", *tiny_run_args(tmp_path, data)], capsys)
    assert code == 1 and "predict needs the images to predict: --predictions.images DIR" in err and "train.py test" in err
    assert not list(tmp_path.rglob("predictions.csv"))


# ------------------------------------------------------- item 4: nothing trained, item 6: tiny test split
def test_zero_epochs_warns_that_the_test_scores_untrained_weights(tmp_path, make_npz, capsys):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    with pytest.warns(UserWarning, match=r"nothing was trained \(trainer.max_epochs=0.*the test scores the initial weights"):
        main(tiny_run_args(tmp_path, data, "--trainer.max_epochs=0"))
    assert "(untrained weights, 4 test images" in capsys.readouterr().out


def test_an_auc_from_a_two_image_test_split_says_what_it_rests_on(tmp_path, make_npz, capsys):
    data = make_npz(train=(4, 4), val=(2, 2), test=(1, 1))
    with pytest.warns(UserWarning, match=r"the test AUC rests on 0: 1, 1: 1 image\(s\): with fewer than 10 of a class"):
        main(tiny_run_args(tmp_path, data))
    assert "2 test images: 0: 1, 1: 1)" in capsys.readouterr().out


# --------------------------------------------------------------- item 7: errors, first and alone
def test_an_error_raised_while_building_a_class_is_said_alone(tmp_path, make_npz, capsys):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    code, err = fails(tiny_run_args(tmp_path, data, "--data.init_args.image_size=7"), capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1
    assert lines[0] == "train.py: error: image_size must be at least 8 pixels, got 7"
    assert len(lines) == 2 and "Union subtypes" not in err and "NoneType" not in err
    with pytest.raises(ValueError, match="image_size must be at least 8"):  # --traceback: the whole trace
        main(tiny_run_args(tmp_path, data, "--data.init_args.image_size=7", "--traceback"))


def test_a_typo_in_a_config_file_names_the_file_and_the_key_it_meant(tmp_path, capsys):
    config = yaml.safe_load(DEMO.read_text())
    config["model"]["init_args"]["lrr"] = config["model"]["init_args"].pop("lr")
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(config))
    code, err = fails(["--config", str(typo)], capsys)
    assert code == 2
    assert err.splitlines()[0] == (f"train.py: error: model.init_args.lrr (in {typo}): SmallMedClassifier has no option 'lrr'. "
                                   "Did you mean 'lr'?")
    code, err = fails(["--config", str(DEMO), "--trainer.max_epoch", "3"], capsys)
    assert "unknown option(s): --trainer.max_epoch (did you mean --trainer.max_epochs?)" in err
    assert "usage:" not in err


def test_a_checkpoint_for_another_backbone_names_its_own(tmp_path, make_npz, capsys):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    main(tiny_run_args(tmp_path, data))
    (ckpt,) = (tmp_path / "logs").rglob("best-*.ckpt")
    code, err = fails(tiny_run_args(tmp_path, data, "--model.init_args.backbone=test_efficientnet",
                                    f"--model.init_args.pretrained={ckpt}"), capsys)
    assert code == 1 and f"{ckpt} is a smallmed checkpoint of backbone 'test_resnet'; this run builds 'test_efficientnet'" in err
    assert "HINT: --model.init_args.backbone test_resnet" in err


# ------------------------------------------------------------ item 8: one run, one folder
def test_with_wandb_a_runs_config_metrics_report_and_checkpoints_share_one_folder(tmp_path, make_npz, capsys):
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    loggers = [{"class_path": "lightning.pytorch.loggers.WandbLogger",
                "init_args": {"project": "smallmed", "save_dir": str(tmp_path / "runs"), "offline": True}},
               {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "runs"), "name": "smallmed"}}]
    import wandb

    for _ in range(2):
        main([*tiny_run_args(tmp_path, data), "--trainer.logger", yaml.safe_dump(loggers, default_flow_style=True)])
        wandb.finish()
    out = capsys.readouterr().out
    for version in ("version_0", "version_1"):
        folder = tmp_path / "runs" / "smallmed" / version
        assert (folder / "config.yaml").is_file() and (folder / "metrics.csv").is_file()
        assert list((folder / "checkpoints").glob("best-epoch*.ckpt")) and (folder / "report").is_dir()
        assert f"run folder: {folder} (best checkpoint: {folder / 'checkpoints'}" in out
    assert not (tmp_path / "runs" / "config.yaml").exists()  # no config shared (and overwritten) by every W&B run
    assert not [p for p in (tmp_path / "runs" / "smallmed").iterdir() if not p.name.startswith("version_")]


# ------------------------------------------------------- item 9: a failed run leaves no hollow folder
def test_a_run_that_fails_to_start_leaves_no_empty_run_folder(tmp_path, make_npz, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_npz(train=(4, 4), val=(2, 2), test=(2, 2))
    args = [a for a in tiny_run_args(tmp_path, data) if not a.startswith("--trainer.logger")]  # the default: runs/smallmed
    main(args)
    assert sorted(p.name for p in Path("runs/smallmed").iterdir()) == ["version_0"]
    code, err = fails([*args, "--model.init_args.lr_schedule=fastai_fine_tune"], capsys)  # fails in configure_optimizers
    assert code == 1 and "restarts its cycle when the body unfreezes" in err
    assert sorted(p.name for p in Path("runs/smallmed").iterdir()) == ["version_0"]
