"""Make `smallmed.callbacks` and `smallmed.datamodules` importable straight from a source checkout.

The repository keeps `callbacks/` and `datamodules/` beside `smallmed/` (the layout is the
architecture), and `pyproject.toml` installs them *inside* the package. An editable or a wheel
install therefore already resolves `smallmed.callbacks`; this finder covers the one remaining
case, running from the repository root without any install (e.g. `python train.py` in a fresh
clone). It maps only those two names, so nothing else at the top of the repository leaks into
the `smallmed` namespace.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = ("callbacks", "datamodules")


class _SourceTreeFinder(importlib.abc.MetaPathFinder):
    def __init__(self, mapping: dict[str, Path]) -> None:
        self.mapping = mapping

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102 - importlib protocol
        folder = self.mapping.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )


def install(package_name: str, package_dir: Path) -> None:
    """Register the finder when `package_dir` sits in a checkout whose siblings hold the subpackages."""
    mapping = {}
    for name in SUBPACKAGES:
        inside = package_dir / name / "__init__.py"
        beside = package_dir.parent / name / "__init__.py"
        if not inside.is_file() and beside.is_file():
            mapping[f"{package_name}.{name}"] = beside.parent
    if mapping and not any(isinstance(f, _SourceTreeFinder) for f in sys.meta_path):
        # First, not last: when another checkout is installed in editable mode, its finder would
        # otherwise hand this checkout's `smallmed` the other one's callbacks and data modules.
        sys.meta_path.insert(0, _SourceTreeFinder(mapping))
