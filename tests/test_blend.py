"""``train.py blend``: prediction CSVs of several runs averaged, and the inputs that cannot be."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from smallmed.blend import blend_predictions

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


BINARY = ["file", "predicted", "p_malignant", "p_benign"]


def test_the_mean_of_two_runs_decides_the_prediction(tmp_path):
    # the runs disagree on b.png; their mean (0.55 benign) decides, in the first file's order
    fe = write(tmp_path / "fe.csv", BINARY, [["a.png", "benign", 0.2, 0.8], ["b.png", "malignant", 0.6, 0.4]])
    paper = write(tmp_path / "paper.csv", BINARY, [["b.png", "benign", 0.3, 0.7], ["a.png", "benign", 0.1, 0.9]])
    rows = read(blend_predictions([fe, paper], tmp_path / "out" / "blend.csv"))
    assert [(r["file"], r["predicted"]) for r in rows] == [("a.png", "benign"), ("b.png", "benign")]
    assert [(float(r["p_malignant"]), float(r["p_benign"])) for r in rows] == [
        pytest.approx((0.15, 0.85)), pytest.approx((0.45, 0.55))]


def test_multilabel_csvs_keep_every_label_at_half_or_more(tmp_path):
    header = ["file", "predicted", "p_effusion", "p_nodule"]
    one = write(tmp_path / "one.csv", header, [["x.png", "effusion+nodule", 0.9, 0.6], ["y.png", "", 0.1, 0.2]])
    two = write(tmp_path / "two.csv", header, [["x.png", "effusion", 0.7, 0.2], ["y.png", "nodule", 0.3, 0.8]])
    rows = read(blend_predictions([one, two], tmp_path / "blend.csv"))
    assert [(r["file"], r["predicted"]) for r in rows] == [("x.png", "effusion"), ("y.png", "nodule")]  # 0.8/0.4, 0.2/0.5


@pytest.mark.parametrize(("other", "message"), [
    ([["a.png", "benign", 0.2, 0.8]], r"other.csv and .*fe.csv do not list the same images: 1 only in .*fe.csv \(e.g. \['b.png'\]\)"),
    ([["a.png", "benign", 0.2, 0.8], ["b.png", "benign", 0.2]], r"other.csv, line 3: expected 4 fields"),
    ([["a.png", "benign", 0.2, 0.8], ["b.png", "benign", "nan", 0.8]], r"other.csv, line 3: expected 4 fields with probabilities"),
    ([["a.png", "benign", 0.2, 0.8], ["a.png", "benign", 0.2, 0.8]], r"other.csv, line 3: 'a.png' is listed twice"),
    ([], r"other.csv: no predictions in the file"),
])
def test_csvs_that_cannot_be_averaged_name_the_file_and_write_nothing(tmp_path, other, message):
    fe = write(tmp_path / "fe.csv", BINARY, [["a.png", "benign", 0.2, 0.8], ["b.png", "malignant", 0.6, 0.4]])
    bad = write(tmp_path / "other.csv", BINARY, other)
    with pytest.raises(ValueError, match=message):
        blend_predictions([fe, bad], tmp_path / "blend.csv")
    assert not (tmp_path / "blend.csv").exists()


def test_other_classes_or_headers_are_refused(tmp_path):
    fe = write(tmp_path / "fe.csv", BINARY, [["a.png", "benign", 0.2, 0.8]])
    swapped = write(tmp_path / "swapped.csv", ["file", "predicted", "p_benign", "p_malignant"], [["a.png", "benign", 0.8, 0.2]])
    with pytest.raises(ValueError, match=r"swapped.csv has the classes \['benign', 'malignant'\], .*fe.csv has \['malignant', 'benign'\]"):
        blend_predictions([fe, swapped], tmp_path / "blend.csv")
    labels = write(tmp_path / "labels.csv", ["path", "label"], [["a.png", "benign"]])
    with pytest.raises(ValueError, match=r"labels.csv: not a train.py predict CSV"):
        blend_predictions([fe, labels], tmp_path / "blend.csv")


def test_the_command_line_blends_and_reports_errors_by_file(tmp_path):
    fe = write(tmp_path / "fe.csv", BINARY, [["a.png", "benign", 0.2, 0.8]])
    paper = write(tmp_path / "paper.csv", BINARY, [["a.png", "malignant", 0.9, 0.1]])
    out = tmp_path / "blend.csv"
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "blend", "--out", str(out), str(fe), str(paper)],
                          capture_output=True, text=True, check=True)
    assert "wrote the mean of 2 prediction CSVs" in done.stdout
    assert read(out)[0]["predicted"] == "malignant"  # 0.55 malignant
    failed = subprocess.run([sys.executable, str(REPO / "train.py"), "blend", "--out", str(out), str(fe), str(tmp_path / "gone.csv")],
                            capture_output=True, text=True)
    assert failed.returncode == 1 and "prediction CSV not found: " in failed.stderr and "gone.csv" in failed.stderr
