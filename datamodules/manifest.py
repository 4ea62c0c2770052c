"""A CSV manifest of images, as spreadsheets from hospital exports come: one row per image with its
path, label(s), and optionally the patient ID and a given split."""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from smallmed.datamodules.files import ImageCatalog, ImageFilesDataModule, data_path
from smallmed.datamodules.images import image_kind
from smallmed.datamodules.splits import normalise_split_name


class ManifestDataModule(ImageFilesDataModule):
    """Images listed in a CSV file, trained exactly like an npz file (same subset sampling, loaders, model).

    Row numbers in messages are the spreadsheet's (the header is row 1).

    - **Paths** are relative to ``image_root`` (default: the CSV's folder) unless absolute. A missing
      file is an error naming the row; files of unknown type are left out with one summary warning.
    - **Labels** are class names, or integers ``0..num_classes-1``. ``classes`` fixes the names and
      their order (for two classes the second is the positive class); otherwise integer labels are
      used as they are and names are sorted. With ``multi_label`` (by default: when any label cell
      holds ``label_separator``), a cell such as ``Effusion|Mass`` becomes a multi-hot row and an empty
      cell means no finding (all zeros), as ChestX-ray14's ``Finding Labels``.
    - **Patients** (``patient_column``): the module's splits keep each patient in one split, and
      given splits are checked for patients in two.
    - **Splits** (``split_column``): ``train``/``val``/``test`` (also ``valid``, ``validation``) are kept;
      without val rows, ``val_fraction`` of train is held out. Without the column the module splits.

    Args:
        path: the manifest (CSV file).
        image_root: folder the relative paths start from (default: the CSV's folder).
        path_column: column of image paths.
        label_column: column of labels.
        patient_column: column of patient IDs, if any.
        split_column: column of given splits, if any.
        label_separator: separator of several labels in one cell.
        multi_label: ``True``/``False`` to say whether rows hold several labels; ``None`` decides from
            the cells (set it explicitly when a subset might hold no multi-label row).
        classes: class names in label order; labels outside them are errors naming the row.
        delimiter: the CSV field delimiter (``;`` for some spreadsheet exports).
        csv_path: deprecated name of ``path``.
        **kwargs: see :class:`~smallmed.datamodules.files.ImageFilesDataModule` and
            :class:`~smallmed.datamodules.base.SmallImageDataModule`.

    Example:
        >>> dm = ManifestDataModule("export/labels.csv", patient_column="patient_id", train_size=200)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | None = None,
        image_root: str | None = None,
        path_column: str = "path",
        label_column: str = "label",
        patient_column: str | None = None,
        split_column: str | None = None,
        label_separator: str = "|",
        multi_label: bool | None = None,
        classes: list[str] | None = None,
        delimiter: str = ",",
        csv_path: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.path = data_path(type(self).__name__, path, "csv_path", csv_path, "the CSV manifest")
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.path_column = path_column
        self.label_column = label_column
        self.patient_column = patient_column
        self.split_column = split_column
        self.label_separator = label_separator
        self.multi_label = multi_label
        self.classes = list(classes) if classes is not None else None
        self.delimiter = delimiter
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {self.classes}")

    def source_name(self) -> str:
        return str(self.path)

    def _where(self, row: int) -> str:
        return f"{self.path} row {row}"

    def _read_rows(self) -> list[tuple[int, dict[str, str]]]:
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest not found: {self.path}")
        with self.path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
            reader = csv.DictReader(f, delimiter=self.delimiter)
            header = reader.fieldnames or []
            wanted = [c for c in (self.path_column, self.label_column, self.patient_column, self.split_column) if c]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise ValueError(f"{self.path} lacks the column(s) {missing}; its columns are {header}")
            rows = [(number, row) for number, row in enumerate(reader, start=2)]
        if not rows:
            raise ValueError(f"{self.path} lists no images")
        return rows

    def build_catalog(self) -> ImageCatalog:
        paths, cells, patients, splits, rows = [], [], [], [], []
        unknown: Counter[str] = Counter()
        unknown_example = None
        for number, row in self._read_rows():
            cell = (row.get(self.path_column) or "").strip()
            if not cell:
                raise ValueError(f"{self._where(number)}: empty {self.path_column!r}")
            path = Path(cell) if Path(cell).is_absolute() else self.image_root / cell
            if not path.is_file():
                raise FileNotFoundError(f"{self._where(number)}: image file not found: {path}")
            head = None
            if path.suffix == "":
                with path.open("rb") as f:
                    head = f.read(132)
            if image_kind(path, head) is None:
                unknown[path.suffix.lower() or "(no suffix)"] += 1
                unknown_example = unknown_example or f"{path} (row {number})"
                continue
            paths.append(path)
            cells.append((row.get(self.label_column) or "").strip())
            rows.append(number)
            if self.patient_column:
                patient = (row.get(self.patient_column) or "").strip()
                if not patient:
                    raise ValueError(f"{self._where(number)}: empty patient ID in {self.patient_column!r}")
                patients.append(patient)
            if self.split_column:
                value = row.get(self.split_column) or ""
                split = normalise_split_name(value)
                if split is None:
                    raise ValueError(
                        f"{self._where(number)}: split {value!r} in {self.split_column!r} is not train, val or test"
                    )
                splits.append(split)
        if unknown:
            kinds = ", ".join(f"{suffix}: {n}" for suffix, n in sorted(unknown.items()))
            warnings.warn(
                f"{self.path}: ignored {sum(unknown.values())} row(s) of unknown file type ({kinds}), e.g. "
                f"{unknown_example}; PNG, JPEG and DICOM are read",
                UserWarning,
                stacklevel=2,
            )
        labels, names = self._parse_labels(cells, rows)
        return ImageCatalog(
            paths=paths,
            labels=labels,
            class_names=names,
            groups=np.array(patients) if self.patient_column else None,
            given_splits=np.array(splits) if self.split_column else None,
            origin=f"given by the column {self.split_column!r}" if self.split_column else "",
            where=[f"row {number}" for number in rows],
        )

    def _parse_labels(self, cells: list[str], rows: list[int]) -> tuple[np.ndarray, list[str] | None]:
        multi = self.multi_label if self.multi_label is not None else any(self.label_separator in c for c in cells)
        if multi:
            parts = [[p.strip() for p in c.split(self.label_separator) if p.strip()] for c in cells]
            names = self.classes or sorted({p for ps in parts for p in ps})
            index = {n: i for i, n in enumerate(names)}
            labels = np.zeros((len(cells), len(names)), dtype=np.int64)
            for r, (ps, number) in enumerate(zip(parts, rows)):
                for p in ps:
                    if p not in index:
                        raise ValueError(f"{self._where(number)}: label {p!r} is not one of the classes {names}")
                    labels[r, index[p]] = 1
            return labels, names
        for c, number in zip(cells, rows):
            if not c:
                raise ValueError(f"{self._where(number)}: empty label in {self.label_column!r}")
        if self.classes is None and all(_is_int(c) for c in cells):
            labels = np.array([int(c) for c in cells], dtype=np.int64)
            limit = self._num_classes if self._num_classes is not None else None
            for value, number in zip(labels, rows):
                if limit is not None and not 0 <= value < limit:
                    raise ValueError(
                        f"{self._where(number)}: label {value} is outside num_classes={limit} (valid labels are 0..{limit - 1})"
                    )
                if value < 0:
                    raise ValueError(f"{self._where(number)}: label {value} is negative (labels are 0..num_classes-1)")
            return labels, None
        names = self.classes or sorted(set(cells))
        index = {n: i for i, n in enumerate(names)}
        for c, number in zip(cells, rows):
            if c not in index:
                raise ValueError(f"{self._where(number)}: label {c!r} is not one of the classes {names}")
        return np.array([index[c] for c in cells], dtype=np.int64), names


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
