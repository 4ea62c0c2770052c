"""Images in class folders, as most hospital exports and public sets come: ``root/<class>/<images>``
(the module makes val / test) or ``root/{train,val,test}/<class>/<images>`` (the given splits are kept)."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from smallmed.datamodules.files import ImageCatalog, ImageFilesDataModule, data_path
from smallmed.datamodules.images import image_files
from smallmed.datamodules.splits import normalise_split_name


class ImageFolderDataModule(ImageFilesDataModule):
    """A folder of class folders, trained exactly like an npz file (same subset sampling, loaders, model).

    Layouts (found by looking at ``path``):

    - ``path/<class>/<images>``: the module splits the pool into train / val / test once
      (``val_fraction``, ``test_fraction``, ``split_seed``), stratified by class and, with
      ``patient_pattern``, grouped by patient.
    - ``path/{train,val,test}/<class>/<images>``: the given splits are kept (``valid`` /
      ``validation`` count as ``val``; without a val folder, ``val_fraction`` of train is held out).

    Images may sit in sub-folders of a class folder (e.g. one per patient). PNG, JPEG and DICOM
    (``.dcm``, ``.dicom`` or no suffix) are read; other files are ignored with one summary warning,
    hidden files (``.DS_Store``) silently. Class folders are taken in sorted order unless ``classes``
    gives the order: for two classes the second is the positive class of the binary metrics.

    Args:
        path: the data folder.
        classes: class folder names in label order; folders not listed are ignored (with a warning).
        patient_pattern: regular expression searched in each image's path relative to its class
            folder (``/``-separated); its ``patient`` group, else its first group, else the whole match
            is the patient ID. E.g. ``person(\\d+)_`` for Kermany's ``person1000_virus_1681.jpeg``, or
            ``^([^/]+)/`` for one sub-folder per patient. Without it every image counts as its own
            patient: give it whenever a patient can have several images, or val / test leak.
        **kwargs: see :class:`~smallmed.datamodules.files.ImageFilesDataModule` (splits, bad images,
            16-bit / DICOM ranges, channels) and :class:`~smallmed.datamodules.base.SmallImageDataModule`
            (``train_size``, ``sampling``, ``seed``, ``image_size``...).
        root: deprecated name of ``path``.

    Example:
        >>> dm = ImageFolderDataModule("xrays/", train_size=100, patient_pattern=r"person(\\d+)_")  # doctest: +SKIP
        >>> dm.setup()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | None = None,
        classes: list[str] | None = None,
        patient_pattern: str | None = None,
        root: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.path = data_path(type(self).__name__, path, "root", root, "the folder of class folders")
        self.classes = list(classes) if classes is not None else None
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has duplicates: {self.classes}")
        try:
            self.patient_pattern = re.compile(patient_pattern) if patient_pattern else None
        except re.error as err:
            raise ValueError(f"patient_pattern {patient_pattern!r} is not a valid regular expression: {err}") from err

    def source_name(self) -> str:
        return str(self.path)

    def build_catalog(self) -> ImageCatalog:
        if not self.path.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.path}")
        top = _subfolders(self.path)
        split_dirs = {name: normalise_split_name(name) for name in top}
        given = {name: split for name, split in split_dirs.items() if split is not None}
        if "train" in given.values():
            others = sorted(set(top) - set(given))
            if others:
                raise ValueError(
                    f"{self.path} mixes split folders {sorted(given)} with other folders {others}; use either "
                    "root/<class>/ or root/{train,val,test}/<class>/"
                )
            class_dirs = {split: {c: self.path / d / c for c in _subfolders(self.path / d)} for d, split in given.items()}
            origin = f"given by the folders {', '.join(sorted(given))}"
        else:
            class_dirs = {None: {c: self.path / c for c in top}}
            origin = ""
        names = self._class_list(class_dirs)

        paths, relative, labels, splits, unknown = [], [], [], [], Counter()
        unknown_example: Path | None = None
        for split, dirs in class_dirs.items():
            for label, name in enumerate(names):
                folder = dirs.get(name)
                if folder is None:
                    continue
                found, skipped = image_files(folder)
                unknown.update(p.suffix.lower() or "(no suffix)" for p in skipped)
                unknown_example = unknown_example or (skipped[0] if skipped else None)
                if not found:
                    extra = f" ({len(skipped)} file(s) of unknown type)" if skipped else ""
                    raise ValueError(f"class folder {folder} holds no images{extra}; remove it, or add images")
                paths += found
                relative += [p.relative_to(folder).as_posix() for p in found]
                labels += [label] * len(found)
                splits += [split] * len(found)
        if unknown:
            kinds = ", ".join(f"{suffix}: {n}" for suffix, n in sorted(unknown.items()))
            warnings.warn(
                f"{self.path}: ignored {sum(unknown.values())} file(s) of unknown type ({kinds}), e.g. {unknown_example}; "
                "PNG, JPEG and DICOM are read",
                UserWarning,
                stacklevel=2,
            )
        groups = None
        if self.patient_pattern is not None:
            groups = np.array([self._patient(rel, path) for rel, path in zip(relative, paths)])
        return ImageCatalog(
            paths=paths,
            labels=np.asarray(labels, dtype=np.int64),
            class_names=names,
            groups=groups,
            given_splits=np.array(splits) if None not in class_dirs else None,
            origin=origin,
        )

    def _class_list(self, class_dirs: dict[str | None, dict[str, Path]]) -> list[str]:
        found = sorted({c for dirs in class_dirs.values() for c in dirs})
        if self.classes is None:
            if not found:
                raise ValueError(f"{self.path} holds no class folders; expected path/<class>/<images>")
            return found
        missing = [c for c in self.classes if c not in found]
        if missing:
            raise ValueError(f"{self.path}: no folder for class(es) {missing}; class folders found: {found}")
        ignored = [c for c in found if c not in self.classes]
        if ignored:
            message = f"{self.path}: class folders {ignored} are not in classes {self.classes}; ignored"
            warnings.warn(message, UserWarning, stacklevel=3)
        return list(self.classes)

    def _patient(self, relative: str, path: Path) -> str:
        """The patient ID in an image's path relative to its class folder."""
        match = self.patient_pattern.search(relative)
        if match is None:
            raise ValueError(
                f"patient_pattern '{self.patient_pattern.pattern}' does not match {relative!r} ({path}); every image "
                "needs a patient ID"
            )
        if "patient" in self.patient_pattern.groupindex:
            return match.group("patient")
        return match.group(1) if self.patient_pattern.groups else match.group(0)


def _subfolders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
