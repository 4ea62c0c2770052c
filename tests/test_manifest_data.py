"""ManifestDataModule on real images listed in CSV files written at run time: patients, given splits,
multi-label rows, mixed PNG / 16-bit PNG / DICOM sources, and every bad-row error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_images import KERMANY, KERMANY_CLASSES, kermany_pool, real, save, truncate, write_dicom, write_manifest

from smallmed.datamodules import LeakageError, ManifestDataModule

SEEDS = range(25)


@pytest.fixture(scope="module")
def kermany_images(tmp_path_factory) -> tuple[Path, list[dict[str, object]]]:
    """All Kermany B images as ``images/<stem>.png``, and one manifest row per image (with its given split)."""
    images, labels, patients, stems = kermany_pool()
    data = real(KERMANY)
    given = np.concatenate([[s] * len(data[f"{s}_labels"]) for s in ("train", "val", "test")])
    folder = tmp_path_factory.mktemp("kermany_csv")
    rows = []
    for image, label, patient, stem, split in zip(images, labels, patients, stems, given):
        save(folder / "images" / f"{stem}.png", image)
        rows.append({"path": f"images/{stem}.png", "label": KERMANY_CLASSES[label], "patient_id": patient, "split": split})
    return folder, rows


def manifest(folder: Path, rows, name: str = "manifest.csv", columns=None) -> Path:
    return write_manifest(folder / name, rows, columns)


def make(csv_path, **kwargs) -> ManifestDataModule:
    kwargs.setdefault("image_size", 32)
    return ManifestDataModule(str(csv_path), **kwargs)


def setup(csv_path, **kwargs) -> ManifestDataModule:
    dm = make(csv_path, **kwargs)
    dm.setup("fit")
    return dm


# --------------------------------------------------------------- patients


def test_patient_column_groups_the_module_splits_over_many_seeds(kermany_images):
    folder, rows = kermany_images
    path = manifest(folder, rows, columns=["path", "label", "patient_id"])
    for seed in SEEDS:
        dm = make(path, patient_column="patient_id", split_seed=seed)
        by_split = {s: set(dm.catalog.groups[i]) for s, i in dm.split_indices().items()}
        assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"] or by_split["val"] & by_split["test"])
        assert sum(len(p) for p in by_split.values()) == len(set(r["patient_id"] for r in rows))
    dm = setup(path, patient_column="patient_id", train_size=60)
    assert dm.class_names == list(KERMANY_CLASSES) and dm.summary()["train"] == [30, 30]
    assert dm.splits["test"].images.dtype == torch.uint8


def test_val_and_test_stay_fixed_and_subsets_nest(kermany_images, monkeypatch):
    monkeypatch.setattr(
        "smallmed.datamodules.files.read_image_and_digest", lambda p, r=None: (torch.zeros(1, 8, 8, dtype=torch.uint8), str(p))
    )
    folder, rows = kermany_images
    path = manifest(folder, rows, columns=["path", "label", "patient_id"])
    reference = None
    for seed in SEEDS:
        train_sets = []
        for n in (50, 100, 200):
            dm = setup(path, patient_column="patient_id", train_size=n, seed=seed, image_size=8)
            held_out = [tuple(dm.split_indices()[s]) for s in ("val", "test")]
            reference = reference or held_out
            assert held_out == reference
            train_sets.append(set(dm.split_indices()["train"][dm.train_indices]))
        assert train_sets[0] < train_sets[1] < train_sets[2]


# ------------------------------------------------------------------ given splits


def test_given_split_column_is_kept(kermany_images):
    folder, rows = kermany_images
    data = real(KERMANY)
    dm = setup(manifest(folder, rows), split_column="split", image_size=64, resize_to=64)
    for split in ("train", "val", "test"):
        assert dm.summary()[split] == np.bincount(data[f"{split}_labels"]).tolist()
    np.testing.assert_array_equal(dm.splits["val"].images[:, 0].numpy(), data["val_images"])
    assert "given by the column 'split'" in dm.summary_text()


def test_given_splits_sharing_patients_are_leakage(kermany_images):
    # The real Kermany B file's own train and test splits share 26 patients: caught once IDs are known.
    folder, rows = kermany_images
    test_patients = {r["patient_id"] for r in rows if r["split"] == "test"}
    shared = {r["patient_id"] for r in rows if r["split"] != "test"} & test_patients
    assert len(shared) == 38  # 26 with train, 12 with val
    with pytest.raises(LeakageError, match=r"38 patient\(s\) are in two splits: 'P\d+' \((train|val) and test\)"):
        make(manifest(folder, rows), split_column="split", patient_column="patient_id").num_classes


def test_given_splits_without_val_hold_val_out_of_train_by_patient(kermany_images):
    folder, rows = kermany_images
    shared = {r["patient_id"] for r in rows if r["split"] != "test"} & {r["patient_id"] for r in rows if r["split"] == "test"}
    kept = [dict(r, split="train" if r["split"] == "val" else r["split"]) for r in rows if r["patient_id"] not in shared]
    dm = make(manifest(folder, kept), split_column="split", patient_column="patient_id", val_fraction=0.2)
    idx = dm.split_indices()
    assert len(idx["test"]) == sum(r["split"] == "test" for r in kept)
    assert abs(len(idx["val"]) / (len(idx["train"]) + len(idx["val"])) - 0.2) < 0.03
    assert not set(dm.catalog.groups[idx["train"]]) & set(dm.catalog.groups[idx["val"]])


# ------------------------------------------------------------------ labels


def test_multi_label_rows(kermany_images):
    folder, rows = kermany_images
    multi = []
    for i, r in enumerate(rows[:240]):
        labels = [] if i % 5 == 0 else [str(r["label"])] + (["effusion"] if i % 3 == 0 else [])
        multi.append({"path": r["path"], "label": " | ".join(labels), "patient_id": r["patient_id"]})
    dm = setup(manifest(folder, multi, "multi.csv"), patient_column="patient_id", train_size=40, seed=2)
    assert dm.task == "multilabel" and dm.num_classes == 3
    assert dm.class_names == ["bacterial", "effusion", "viral"]
    labels = dm.catalog.labels
    assert labels.shape == (240, 3)
    assert labels[0].tolist() == [0, 0, 0]  # empty cell: no finding
    assert labels[3].tolist() == ([1, 1, 0] if rows[3]["label"] == "bacterial" else [0, 1, 1])
    assert dm.splits["train"].labels.shape == (40, 3)
    for split, idx in dm.split_indices().items():  # every label keeps about its share in every split
        assert np.all(np.abs(labels[idx].mean(axis=0) - labels.mean(axis=0)) < 0.1), split


def test_integer_labels_and_labels_outside_num_classes(kermany_images):
    folder, rows = kermany_images
    numeric = [{"path": r["path"], "label": KERMANY_CLASSES.index(r["label"])} for r in rows[:60]]
    dm = make(manifest(folder, numeric, "int.csv"))
    assert dm.num_classes == 2 and dm.class_names == ["0", "1"]
    numeric[7]["label"] = 5
    path = manifest(folder, numeric, "int.csv")
    with pytest.raises(ValueError, match=rf"{path} row 9: label 5 is outside num_classes=2 \(valid labels are 0..1\)"):
        make(path, num_classes=2).num_classes
    # without num_classes the labels say how many there are: a stray 5 would make classes 2..5, so it is refused
    with pytest.raises(ValueError, match=r"class '2' has no image\..*class '5' has 1 image\(s\) \(row 9\)\..*min_class_images"):
        make(path).num_classes
    with pytest.raises(ValueError, match=r"class\(es\) \['5'\] have no image in the val split"):
        make(path, min_class_images=0).num_classes  # accepted as rare, it still cannot be validated
    numeric[7]["label"] = -1
    with pytest.raises(ValueError, match=r"row 9: label -1 is negative"):
        make(manifest(folder, numeric, "int.csv")).num_classes


def test_label_not_in_classes_names_the_row(kermany_images):
    folder, rows = kermany_images
    edited = [dict(r) for r in rows[:30]]
    edited[4]["label"] = "fungal"
    path = manifest(folder, edited, "cls.csv")
    with pytest.raises(ValueError, match=rf"{path} row 6: label 'fungal' is not one of the classes \['bacterial', 'viral'\]"):
        make(path, classes=list(KERMANY_CLASSES)).num_classes
    # without classes, what the rows hold: a one-image class beside classes of 14 and 15 is refused, naming its row
    with pytest.raises(ValueError, match=r"class 'fungal' has 1 image\(s\) \(row 6\)\. That is fewer than min_class_images=5"):
        make(path).num_classes
    with pytest.raises(ValueError, match=r"class\(es\) \['fungal'\] have no image in the val split"):
        make(path, min_class_images=0).num_classes  # accepted as rare, it still cannot be validated


def test_a_label_typo_is_refused_with_the_class_it_was_meant_to_be(kermany_images):
    """A 'bacterail' row trained a 3-class model from a 1-image class, headlined test AUC 0.3333, and said nothing."""
    folder, rows = kermany_images
    edited = [dict(r) for r in rows[:30]]
    edited[11]["label"] = "bacterail"
    path = manifest(folder, edited, "typo.csv")
    with pytest.raises(ValueError, match=r"class 'bacterail' has 1 image\(s\) \(row 13\)\. Did you mean 'bacterial'\?"):
        make(path).num_classes


# --------------------------------------------------------------- sources


def test_png_16bit_png_and_dicom_rows_mix(tmp_path):
    images, labels, _, _ = kermany_pool()
    rows = []
    for i in range(24):
        if i % 3 == 0:
            p = save(tmp_path / f"{i}.png", images[i])
        elif i % 3 == 1:
            p = save(tmp_path / f"{i}.png", images[i].astype(np.uint16) * 256)
        else:
            p = write_dicom(tmp_path / f"{i}.dcm", images[i].astype(np.int64) * 16, slope=1, intercept=0)
        rows.append({"file": p.name if i % 2 else str(p), "diagnosis": KERMANY_CLASSES[labels[i]]})
    dm = setup(manifest(tmp_path, rows), path_column="file", label_column="diagnosis", val_fraction=0.25, test_fraction=0.25)
    assert sum(len(s.labels) for s in dm.splits.values()) == 24
    assert all(s.images.shape[1] == 1 for s in dm.splits.values())


def test_image_root_and_semicolon_delimiter_with_a_byte_order_mark(tmp_path):
    images, labels, _, _ = kermany_pool()
    for i in range(12):
        save(tmp_path / "export" / f"{i}.png", images[i])
    text = "path;label\n" + "".join(f"{i}.png;{KERMANY_CLASSES[i % 2]}\n" for i in range(12))
    (tmp_path / "labels.csv").write_text("\ufeff" + text)
    dm = make(tmp_path / "labels.csv", image_root=str(tmp_path / "export"), delimiter=";", val_fraction=0.25, test_fraction=0.25)
    assert len(dm.catalog.paths) == 12 and dm.num_classes == 2


# -------------------------------------------------------------- bad rows


def test_missing_file_names_the_row(kermany_images):
    folder, rows = kermany_images
    edited = [dict(r) for r in rows[:20]]
    edited[10]["path"] = "images/lost.png"
    path = manifest(folder, edited, "missing.csv")
    with pytest.raises(FileNotFoundError, match=rf"{path} row 12: image file not found: {folder / 'images' / 'lost.png'}"):
        make(path).num_classes


def test_missing_columns_and_bad_cells(kermany_images):
    folder, rows = kermany_images
    path = manifest(folder, rows[:20], "cols.csv")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['diagnosis'\]; its columns are \['path', 'label', 'patient_id', 'split'\]"):
        make(path, label_column="diagnosis").num_classes
    edited = [dict(r) for r in rows[:20]]
    edited[2]["split"] = "holdout"
    with pytest.raises(ValueError, match=r"row 4: split 'holdout' in 'split' is not train, val or test"):
        make(manifest(folder, edited, "split.csv"), split_column="split").num_classes
    edited = [dict(r) for r in rows[:20]]
    edited[3]["patient_id"] = ""
    with pytest.raises(ValueError, match=r"row 5: empty patient ID in 'patient_id'"):
        make(manifest(folder, edited, "pid.csv"), patient_column="patient_id").num_classes
    edited = [dict(r) for r in rows[:20]]
    edited[1]["label"] = ""
    with pytest.raises(ValueError, match=r"row 3: empty label in 'label'"):
        make(manifest(folder, edited, "lab.csv")).num_classes
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        make(folder / "absent.csv").num_classes


def test_unknown_file_types_are_ignored_with_one_warning(kermany_images):
    folder, rows = kermany_images
    (folder / "report.pdf").write_bytes(b"%PDF")
    (folder / "scan.tiff").write_bytes(b"II*")
    extra = [{"path": "report.pdf", "label": "viral"}, {"path": "scan.tiff", "label": "viral"}, {"path": "report.pdf", "label": "viral"}]
    path = manifest(folder, [{"path": r["path"], "label": r["label"]} for r in rows[:20]] + extra, "types.csv")
    with pytest.warns(UserWarning, match=r"ignored 3 row\(s\) of unknown file type \(\.pdf: 2, \.tiff: 1\), e\.g\. .*report.pdf \(row 22\)") as record:
        assert len(make(path).catalog.paths) == 20
    assert len(record) == 1


def test_corrupt_image_in_a_manifest_is_skipped_when_asked(kermany_images, tmp_path):
    _, rows = kermany_images
    images, labels, _, _ = kermany_pool()
    listed = []
    for i in range(20):
        listed.append({"path": str(save(tmp_path / f"{i}.png", images[i])), "label": KERMANY_CLASSES[labels[i]]})
    truncate(tmp_path / "3.png", 0.4)
    path = manifest(tmp_path, listed)
    with pytest.raises(ValueError, match=rf"cannot read image {tmp_path / '3.png'}: corrupt or truncated"):
        setup(path, val_fraction=0.25, test_fraction=0.25)
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable image\(s\): {tmp_path / '3.png'}"):
        dm = setup(path, val_fraction=0.25, test_fraction=0.25, on_bad_image="skip")
    assert sum(len(s.labels) for s in dm.splits.values()) == 19


def test_csv_path_is_a_deprecated_alias_of_path(tmp_path):
    with pytest.warns(FutureWarning, match=r"ManifestDataModule\(csv_path=...\) is deprecated.*HINT: data.init_args.path"):
        dm = ManifestDataModule(csv_path=str(tmp_path / "labels.csv"))
    assert dm.path == tmp_path / "labels.csv" and dm.image_root == tmp_path
    with pytest.raises(ValueError, match="needs `path`: the CSV manifest"):
        ManifestDataModule()
