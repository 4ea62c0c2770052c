"""ImageFolderDataModule on real images written at run time: both layouts, splits, sampling, bad input, a fine-tune."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers_images import (
    BREAST,
    BREAST_CLASSES,
    KERMANY_CLASSES,
    PATIENT_PATTERN,
    kermany_pool,
    real,
    save,
    truncate,
    write_class_folders,
    write_dicom,
)

from smallmed.datamodules import (
    BadImageError,
    ImageFolderDataModule,
    LeakageError,
    SubsetTooLargeError,
    stratified_group_split,
)

SEEDS = range(25)


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kermany_root(tmp_path_factory) -> Path:
    """All 1,128 Kermany B chest X-rays as ``root/{bacterial,viral}/person<ID>_<kind>_<n>.png`` (490 patients)."""
    images, labels, _, stems = kermany_pool()
    root = tmp_path_factory.mktemp("kermany")
    write_class_folders(root, images, labels, KERMANY_CLASSES, stems)
    return root


# Real BreastMNIST holds one image twice: train #115 (malignant) is byte for byte test #76 (benign).
BREAST_DUPLICATE = {"train": 115, "test": 76}


@pytest.fixture(scope="module")
def breast_split_root(tmp_path_factory) -> Path:
    """Real BreastMNIST's official splits as ``root/{train,val,test}/{malignant,benign}/imgNNNNN.png``,
    without test #76 (the copy of a training image, see :func:`test_real_breastmnist_duplicate_is_caught`)."""
    data = real(BREAST)
    root = tmp_path_factory.mktemp("breast")
    for split in ("train", "val", "test"):
        keep = [i for i in range(len(data[f"{split}_labels"])) if split != "test" or i != BREAST_DUPLICATE["test"]]
        labels = data[f"{split}_labels"].reshape(-1)[keep]
        write_class_folders(root / split, data[f"{split}_images"][keep], labels, BREAST_CLASSES, [f"img{i:05d}" for i in keep])
    return root


def small_folder(root: Path, per_class: int = 20, suffix: str = ".png") -> Path:
    """``per_class`` real Kermany images per class, with their patient file names."""
    images, labels, _, stems = kermany_pool()
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in (0, 1)])
    write_class_folders(root, images[keep], labels[keep], KERMANY_CLASSES, [stems[i] for i in keep], suffix)
    return root


def make(root, **kwargs) -> ImageFolderDataModule:
    kwargs.setdefault("image_size", 32)
    return ImageFolderDataModule(str(root), **kwargs)


def setup(root, **kwargs) -> ImageFolderDataModule:
    dm = make(root, **kwargs)
    dm.setup("fit")
    return dm


def files(dm: ImageFolderDataModule, split: str) -> list[str]:
    """The files a split holds after setup (train: the drawn subset), by name."""
    idx = dm.split_indices()[split]
    if split == "train":
        idx = idx[dm.train_indices]
    return [dm.catalog.paths[i].name for i in idx]


@pytest.fixture
def stub_decoder(monkeypatch):
    """Skip decoding for properties about *which* files go where (each file becomes a blank 8 px image)."""

    def fake(path, value_range=None):
        return torch.zeros(1, 8, 8, dtype=torch.uint8), str(path)

    monkeypatch.setattr("smallmed.datamodules.files.read_image_and_digest", fake)


# ------------------------------------------------------------------- layouts


def test_class_folders_are_split_by_the_module_by_patient(kermany_root, capsys):
    dm = setup(kermany_root, patient_pattern=PATIENT_PATTERN, train_size=100)
    assert dm.class_names == list(KERMANY_CLASSES) and dm.num_classes == 2 and dm.task == "binary"
    sizes = {s: len(i) for s, i in dm.split_indices().items()}
    assert sum(sizes.values()) == 1128
    for split, share in (("train", 0.7), ("val", 0.15), ("test", 0.15)):
        assert abs(sizes[split] / 1128 - share) < 0.03, sizes
        pool = dm.catalog.labels[dm.split_indices()[split]]
        assert abs(pool.mean() - dm.catalog.labels.mean()) < 0.05  # stratified: same viral share
    assert dm.summary()["train"] == [50, 50]
    assert dm.splits["val"].images.shape[1:] == (1, 34, 34)  # grey stays one channel, stored at resize_to
    out = capsys.readouterr().out
    assert "bacterial" in out and "viral" in out and "patients, none in two splits" in out


def test_given_split_folders_are_kept(breast_split_root):
    data = real(BREAST)
    dm = setup(breast_split_root, image_size=28, resize_to=28)
    assert dm.class_names == ["benign", "malignant"]  # sorted folder names ...
    dm = setup(breast_split_root, image_size=28, resize_to=28, classes=list(BREAST_CLASSES))  # ... or as given
    assert dm.summary() == {"train": [147, 399], "val": [21, 57], "test": [42, 113]}  # 114 less the duplicate
    for split in ("val", "test"):
        labels = data[f"{split}_labels"].reshape(-1)
        images = data[f"{split}_images"]
        if split == "test":
            labels, images = np.delete(labels, BREAST_DUPLICATE["test"]), np.delete(images, BREAST_DUPLICATE["test"], axis=0)
        order = np.argsort(labels, kind="stable")  # the module lists class by class, files in name order
        np.testing.assert_array_equal(dm.splits[split].labels, labels[order])
        np.testing.assert_array_equal(dm.splits[split].images[:, 0].numpy(), images[order])
    assert "given by the folders test, train, val" in dm.summary_text()


def test_real_breastmnist_duplicate_is_caught(tmp_path, breast_split_root):
    data = real(BREAST)
    root = tmp_path / "breast"
    shutil.copytree(breast_split_root, root)
    copy = save(root / "test" / "benign" / "img00076.png", data["test_images"][BREAST_DUPLICATE["test"]])
    original = root / "train" / "malignant" / "img00115.png"
    with pytest.raises(LeakageError, match=rf"1 image\(s\) are in two splits .*: {original} \(train\) and {copy} \(test\)"):
        setup(root)


def test_patient_ids_keep_a_patients_duplicate_files_together(kermany_root):
    # Kermany B holds 8 pairs of byte-identical files, each pair from one patient: grouped by patient
    # they always share a split; as independent images some pair is split apart, which is leakage.
    setup(kermany_root, patient_pattern=PATIENT_PATTERN, image_size=8)
    with pytest.raises(LeakageError, match=r"image\(s\) are in two splits .*person\d+_\w+_\d+.png"):
        setup(kermany_root, image_size=8)


def test_without_a_val_folder_val_is_held_out_of_train(tmp_path, breast_split_root):
    root = tmp_path / "no_val"
    shutil.copytree(breast_split_root / "train", root / "train")
    shutil.copytree(breast_split_root / "test", root / "testing")  # an alias of test
    dm = setup(root, val_fraction=0.2)
    sizes = {s: len(i) for s, i in dm.split_indices().items()}
    assert sizes["test"] == 155 and sizes["train"] + sizes["val"] == 546  # 156 less the duplicate
    assert abs(sizes["val"] - 0.2 * 546) <= 2
    assert "val = 20% of the given train split" in dm.summary_text()


def test_images_in_patient_subfolders_and_dicom(tmp_path):
    images, labels, _, _ = kermany_pool()
    for i in range(12):
        patient = f"patient{i // 2}"  # two images per patient
        name = KERMANY_CLASSES[i % 2]
        if i % 3:
            save(tmp_path / name / patient / f"{i}.png", images[i])
        else:
            write_dicom(tmp_path / name / patient / f"{i}.dcm", images[i].astype(np.int64) * 16)
    dm = make(tmp_path, patient_pattern=r"^([^/]+)/", val_fraction=0.25, test_fraction=0.25)
    assert sorted(set(dm.catalog.groups)) == [f"patient{i}" for i in range(6)]
    assert sum(p.suffix == ".dcm" for p in dm.catalog.paths) == 4
    dm.setup()
    assert sum(len(s.labels) for s in dm.splits.values()) == 12


# ------------------------------------------------------------ split properties


def test_no_patient_in_two_splits_over_many_seeds(kermany_root):
    for seed in SEEDS:
        dm = make(kermany_root, patient_pattern=PATIENT_PATTERN, split_seed=seed)
        groups = {s: set(dm.catalog.groups[i]) for s, i in dm.split_indices().items()}
        assert not groups["train"] & groups["val"], seed
        assert not groups["train"] & groups["test"], seed
        assert not groups["val"] & groups["test"], seed
        assert sum(len(i) for i in dm.split_indices().values()) == 1128


def test_split_seed_moves_the_splits_and_is_reproducible(kermany_root):
    a, b, c = (make(kermany_root, patient_pattern=PATIENT_PATTERN, split_seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.split_indices()["test"], b.split_indices()["test"])
    assert not np.array_equal(a.split_indices()["test"], c.split_indices()["test"])


@pytest.mark.usefixtures("stub_decoder")
@pytest.mark.parametrize("sampling", ["balanced", "stratified"])
def test_nested_subsets_and_fixed_val_test_over_many_seeds(kermany_root, sampling):
    reference = None
    for seed in SEEDS:
        sets = []
        for n in (50, 100, 200):
            dm = setup(kermany_root, patient_pattern=PATIENT_PATTERN, train_size=n, seed=seed, sampling=sampling, image_size=8)
            held_out = (files(dm, "val"), files(dm, "test"))
            reference = reference or held_out
            assert held_out == reference, f"val/test moved at seed {seed}, N={n}"
            sets.append(set(files(dm, "train")))
            assert len(sets[-1]) == n
        assert sets[0] < sets[1] < sets[2], f"seed {seed}"


def test_nesting_and_fixed_val_test_with_real_decoding(kermany_root):
    for seed in (0, 1):
        dms = [setup(kermany_root, patient_pattern=PATIENT_PATTERN, train_size=n, seed=seed) for n in (50, 100, 200)]
        small, mid, large = (set(files(dm, "train")) for dm in dms)
        assert small < mid < large
        for split in ("val", "test"):
            for dm in dms[1:]:
                assert torch.equal(dm.splits[split].images, dms[0].splits[split].images)
                np.testing.assert_array_equal(dm.splits[split].labels, dms[0].splits[split].labels)


def test_stratified_and_explicit_class_counts(kermany_root):
    dm = setup(kermany_root, patient_pattern=PATIENT_PATTERN, train_size=90, sampling="stratified")
    share = dm.splits["train"].labels.mean()
    pool_share = dm.catalog.labels[dm.split_indices()["train"]].mean()
    assert abs(share - pool_share) <= 1 / 90 + 1e-9
    assert setup(kermany_root, patient_pattern=PATIENT_PATTERN, class_counts={0: 5, 1: 12}).summary()["train"] == [5, 12]


def test_split_helper_directly():
    labels = np.array([0] * 60 + [1] * 20)
    groups = np.repeat(np.arange(40), 2)  # two images per patient
    parts = stratified_group_split(labels, {"train": 0.5, "val": 0.25, "test": 0.25}, groups, seed=3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(80))
    assert [len(p) for p in parts.values()] == [40, 20, 20]
    for part, share in zip(parts.values(), (0.5, 0.25, 0.25)):  # within one patient of exact proportions
        assert np.all(np.abs(np.bincount(labels[part], minlength=2) - share * np.array([60, 20])) <= 1)
    assert not set(groups[parts["train"]]) & set(groups[parts["test"]])
    again = stratified_group_split(labels, {"train": 0.5, "val": 0.25, "test": 0.25}, groups, seed=3)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)
    with pytest.raises(ValueError, match="split fractions must be positive and sum to 1"):
        stratified_group_split(labels, {"train": 0.9, "test": 0.2})
    with pytest.raises(ValueError, match=r"only 2 patients: too few to fill the test split"):
        stratified_group_split(labels[:4], {"train": 0.5, "val": 0.3, "test": 0.2}, [0, 0, 1, 1])


# -------------------------------------------------------------------- channels


def test_grey_saved_as_rgb_is_kept_as_one_channel(tmp_path):
    images, labels, _, _ = kermany_pool()
    for i in range(16):
        save(tmp_path / KERMANY_CLASSES[i % 2] / f"{i}.jpg", np.stack([images[i]] * 3, axis=-1))
    dm = setup(tmp_path, val_fraction=0.25, test_fraction=0.25)
    assert dm.splits["train"].images.shape[1] == 1


def test_colour_images_make_every_image_rgb_and_channels_can_be_forced(tmp_path):
    root = small_folder(tmp_path, per_class=8)
    xray = kermany_pool()[0][0]
    save(root / "viral" / "colour.png", np.stack([xray, xray // 2, 255 - xray], axis=-1))
    dm = setup(root, val_fraction=0.25, test_fraction=0.25)
    assert all(s.images.shape[1] == 3 for s in dm.splits.values())
    images = torch.cat([s.images for s in dm.splits.values()])
    coloured = ~((images[:, 0] == images[:, 1]).all(dim=(1, 2)) & (images[:, 0] == images[:, 2]).all(dim=(1, 2)))
    assert int(coloured.sum()) == 1  # grey images decoded before the colour one were turned into RGB too
    grey = setup(root, val_fraction=0.25, test_fraction=0.25, channels=1)
    assert all(s.images.shape[1] == 1 for s in grey.splits.values())


@pytest.mark.parametrize("in_chans", [1, 3])
def test_grey_batches_reach_a_1_or_3_channel_backbone(tmp_path, in_chans):
    from smallmed import SmallMedClassifier

    dm = setup(small_folder(tmp_path, per_class=8), train_size=8, batch_size=4, val_fraction=0.25, test_fraction=0.25)
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 1, 32, 32) and images.dtype == torch.uint8
    model = SmallMedClassifier("test_resnet", num_classes=2, pretrained=False, in_chans=in_chans)
    assert model.backbone(model.preprocess(images)).shape == (4, 1)
    assert model.preprocess(images).shape[1] == in_chans


# --------------------------------------------------------------------- counts


def test_counts_are_logged_to_the_trainer_loggers(tmp_path):
    class Recorder:
        def __init__(self):
            self.params = {}

        def log_hyperparams(self, params):
            self.params.update(params)

    recorder = Recorder()
    dm = make(small_folder(tmp_path, per_class=10), train_size=6, val_fraction=0.2, test_fraction=0.2)
    dm.trainer = type("FakeTrainer", (), {"loggers": [recorder]})()
    dm.setup("fit")
    assert recorder.params["data/train/bacterial"] == 3 and recorder.params["data/train/total"] == 6
    assert recorder.params["data/val/total"] + recorder.params["data/test/total"] == 8
    recorder.params.clear()
    dm.setup("test")  # a second setup keeps the data and does not log again
    assert recorder.params == {}


# ------------------------------------------------------------------ bad input


def test_corrupt_image_is_named_or_skipped_with_one_warning(tmp_path):
    root = small_folder(tmp_path, per_class=10)
    bad = truncate(next((root / "viral").glob("*.png")), 0.5)
    junk = root / "bacterial" / "zz_junk.png"
    junk.write_bytes(b"not a png at all")
    with pytest.raises(BadImageError, match=rf"cannot read image {junk}|cannot read image {bad}") as err:
        setup(root)
    assert "on_bad_image: skip" in str(err.value)
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable image\(s\):") as record:
        dm = setup(root, on_bad_image="skip")
    message = str(record[0].message)
    assert str(bad) in message and str(junk) in message and "truncated" in message
    assert sum(len(s.labels) for s in dm.splits.values()) == 19  # 21 files, 2 unreadable
    assert sorted(p.name for p, _ in dm.skipped) == sorted([bad.name, junk.name])


def test_empty_class_folder_is_named(tmp_path):
    root = small_folder(tmp_path, per_class=5)
    (root / "normal").mkdir()
    (root / "normal" / "readme.txt").write_text("nothing here yet")
    with pytest.raises(ValueError, match=rf"class folder {root / 'normal'} holds no images \(1 file\(s\) of unknown type\)"):
        make(root).num_classes


def test_subset_larger_than_a_class_names_it_and_its_count(kermany_root):
    dm = make(kermany_root, patient_pattern=PATIENT_PATTERN, train_size=700)
    viral = int((dm.load_labels()["train"] == 1).sum())
    with pytest.raises(SubsetTooLargeError, match=rf"class 'viral' \(label 1\) holds {viral} training images"):
        dm.setup()
    with pytest.raises(SubsetTooLargeError, match=r"class 'bacterial' \(label 0\) holds \d+ training images; 5000 were asked"):
        setup(kermany_root, patient_pattern=PATIENT_PATTERN, class_counts={0: 5000, 1: 2})


def test_unknown_file_types_are_ignored_with_one_summary_warning(tmp_path):
    root = small_folder(tmp_path, per_class=6)
    (root / "viral" / "notes.txt").write_text("x")
    (root / "viral" / "report.pdf").write_bytes(b"%PDF")
    (root / "bacterial" / "more.txt").write_text("y")
    (root / "bacterial" / ".DS_Store").write_bytes(b"junk")  # hidden: silently ignored
    with pytest.warns(UserWarning, match=r"ignored 3 file\(s\) of unknown type \(\.pdf: 1, \.txt: 2\)") as record:
        dm = make(root, val_fraction=0.25, test_fraction=0.25)
        assert len(dm.catalog.paths) == 12
    assert len(record) == 1


def test_same_image_in_two_given_splits_is_leakage(tmp_path):
    images, labels, _, _ = kermany_pool()
    for split in ("train", "val", "test"):
        write_class_folders(tmp_path / split, images[:6], [0, 1] * 3, KERMANY_CLASSES, [f"{split}{i}" for i in range(6)])
    # different pixels everywhere except one copied file
    for split in ("val", "test"):
        for i, path in enumerate(sorted((tmp_path / split).rglob("*.png"))):
            save(path, np.roll(images[10 + i + (6 if split == "test" else 0)], 1))
    copied = tmp_path / "test" / "viral" / "copied.png"
    shutil.copy(tmp_path / "train" / "bacterial" / "train0.png", copied)
    with pytest.raises(LeakageError, match=rf"1 image\(s\) are in two splits .*train0.png \(train\) and {copied} \(test\)"):
        setup(tmp_path)


def test_duplicate_files_split_apart_by_the_module_are_leakage(tmp_path):
    images, _, _, _ = kermany_pool()
    for i in range(40):
        save(tmp_path / KERMANY_CLASSES[i % 2] / f"copy{i}.png", images[i % 2])  # 20 copies of each image
    with pytest.raises(LeakageError, match=r"in two splits \(identical file content\).*HINT: remove the duplicate copies"):
        setup(tmp_path)


def test_more_classes_than_num_classes(tmp_path):
    root = small_folder(tmp_path, per_class=5)
    with pytest.raises(ValueError, match=r"found 2 classes \['bacterial', 'viral'\], but num_classes is 3"):
        make(root, num_classes=3).num_classes


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        make(tmp_path / "absent").num_classes
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no class folders"):
        make(tmp_path / "empty").num_classes
    mixed = small_folder(tmp_path / "mixed", per_class=3)
    (mixed / "train" / "viral").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"mixes split folders \['train'\] with other folders \['bacterial', 'viral'\]"):
        make(mixed).num_classes


def test_classes_pick_and_order_the_folders(tmp_path):
    root = small_folder(tmp_path, per_class=6)
    dm = make(root, classes=["viral", "bacterial"], val_fraction=0.25, test_fraction=0.25)
    assert dm.class_names == ["viral", "bacterial"]
    assert all(dm.catalog.labels[i] == 0 for i, p in enumerate(dm.catalog.paths) if p.parent.name == "viral")
    with pytest.raises(ValueError, match=r"no folder for class\(es\) \['normal'\]"):
        make(root, classes=["normal", "viral"]).num_classes
    with pytest.warns(UserWarning, match=r"class folders \['bacterial'\] are not in classes \['viral'\]"):
        with pytest.raises(ValueError, match=r"1 class \['viral'\]: a classifier needs at least 2"):
            make(root, classes=["viral"]).num_classes


def test_given_splits_need_train_and_test_and_every_class_in_train(tmp_path):
    images = kermany_pool()[0]
    write_class_folders(tmp_path / "a" / "train", images[:4], [0, 1, 0, 1], KERMANY_CLASSES)
    write_class_folders(tmp_path / "a" / "val", images[4:8], [0, 1, 0, 1], KERMANY_CLASSES)
    with pytest.raises(ValueError, match="the given splits hold no test images"):
        make(tmp_path / "a").num_classes
    write_class_folders(tmp_path / "b" / "train", images[:4], [0, 0, 0, 0], KERMANY_CLASSES)
    write_class_folders(tmp_path / "b" / "test", images[4:8], [0, 1, 0, 1], KERMANY_CLASSES)
    with pytest.raises(ValueError, match=r"no training images of class\(es\) \['viral'\]"):
        make(tmp_path / "b", min_class_images=0).num_classes  # 2 viral images: a rare class, on purpose


def test_patient_pattern_must_match_every_file(tmp_path):
    root = small_folder(tmp_path, per_class=4)
    save(root / "viral" / "anonymous.png", kermany_pool()[0][0])
    with pytest.raises(ValueError, match=r"patient_pattern 'person\(\\d\+\)_' does not match 'anonymous.png'"):
        make(root, patient_pattern=PATIENT_PATTERN).num_classes
    with pytest.raises(ValueError, match="is not a valid regular expression"):
        make(root, patient_pattern="person(")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"val_fraction \(0.6\) and test_fraction \(0.5\)"):
        ImageFolderDataModule("x", val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="on_bad_image must be 'error' or 'skip'"):
        ImageFolderDataModule("x", on_bad_image="ignore")
    with pytest.raises(ValueError, match=r"value_range must be \[low, high\]"):
        ImageFolderDataModule("x", value_range=(10, 0))


# ------------------------------------------------------------------ end to end


def test_fine_tune_from_a_folder_with_the_cli(tmp_path, monkeypatch, capsys):
    from smallmed.cli import fit_and_test

    monkeypatch.setattr(sys, "argv", ["train.py"])
    root = small_folder(tmp_path / "data", per_class=20)
    metrics = fit_and_test(
        [
            "--model=smallmed.SmallMedClassifier",
            "--model.init_args.backbone=test_resnet",
            "--model.init_args.pretrained=false",
            "--model.init_args.lr=0.01",
            "--data=smallmed.datamodules.ImageFolderDataModule",
            f"--data.init_args.path={root}",
            f"--data.init_args.patient_pattern={PATIENT_PATTERN}",
            "--data.init_args.train_size=16",
            "--data.init_args.val_fraction=0.25",
            "--data.init_args.test_fraction=0.25",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=8",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.max_epochs=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        ]
    )
    assert math.isfinite(metrics["test/auroc"])
    out = capsys.readouterr().out
    assert "test ROC AUC" in out and "bacterial" in out
    hparams = yaml.safe_load((tmp_path / "logs" / "smallmed" / "version_0" / "hparams.yaml").read_text())
    assert hparams["data/train/bacterial"] == 8 and hparams["data/train/viral"] == 8
    assert hparams["data/val/total"] > 0 and hparams["data/test/total"] > 0


def test_root_is_a_deprecated_alias_of_path(tmp_path):
    with pytest.warns(FutureWarning, match=r"ImageFolderDataModule\(root=...\) is deprecated.*HINT: data.init_args.path: x"):
        dm = ImageFolderDataModule(root="x")
    assert dm.path == Path("x")
    with pytest.raises(ValueError, match="needs `path`: the folder of class folders"):
        ImageFolderDataModule()
    with pytest.raises(ValueError, match="got both path='a' and the deprecated root='b'"), pytest.warns(FutureWarning):
        ImageFolderDataModule("a", root="b")
