"""One run of a recipe, as a config: the single runner the study and the benchmarks share.

A :class:`RunSpec` names recipe config files, a data section and overrides of any config key
(``data.init_args.train_size``, ``model.init_args.backbone``, ``trainer.max_epochs``...). It
resolves to the same nested dict a ``train.py`` config file holds, which goes to the CLI as it is:
nothing is turned into command-line strings, so a parameter can be followed from the study config
to the trainer that uses it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smallmed.cli_errors import class_arguments

SUBCLASS_SECTIONS = ("model", "data")
RECIPE_DATA_ONLY = ("path", "root", "csv_path", "download", "class_names", "num_classes", "task", "classes", "class_counts")
DATA_MODULES = {
    ".npz": "smallmed.datamodules.NpzDataModule",
    ".csv": "smallmed.datamodules.ManifestDataModule",
}


def data_section(data: str | Mapping[str, Any]) -> dict[str, Any]:
    """A ``data`` config section from a section or from a bare location: an ``.npz`` file, a CSV
    manifest, or a folder of class folders."""
    if isinstance(data, Mapping):
        section = copy.deepcopy(dict(data))
        if "class_path" not in section:
            raise ValueError(f"a data section needs a class_path (e.g. smallmed.datamodules.NpzDataModule); got {section}")
        section.setdefault("init_args", {})
        return section
    path = Path(str(data))
    class_path = DATA_MODULES.get(path.suffix.lower(), "smallmed.datamodules.ImageFolderDataModule")
    return {"class_path": class_path, "init_args": {"path": str(data)}}


def set_key(config: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (``data.init_args.train_size``) in a nested config; ``model.lr`` means
    ``model.init_args.lr``; a key ending in ``+`` appends to a list (``trainer.callbacks+``)."""
    append = key.endswith("+")
    parts = key.rstrip("+").split(".")
    if parts[0] in SUBCLASS_SECTIONS and len(parts) > 1 and parts[1] not in ("class_path", "init_args", "dict_kwargs"):
        parts.insert(1, "init_args")
    node = config
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    if append:
        existing = node.get(parts[-1]) or []
        node[parts[-1]] = [*existing, *(value if isinstance(value, list) else [value])]
    else:
        node[parts[-1]] = copy.deepcopy(value)


def flags_to_overrides(flags: Sequence[str]) -> dict[str, Any]:
    """``["--trainer.max_epochs", "5", "--data.init_args.seed=2"]`` -> ``{"trainer.max_epochs": 5, ...}``
    (values read as YAML, as the CLI reads them): the older list form of a study's overrides."""
    out: dict[str, Any] = {}
    items = list(flags)
    i = 0
    while i < len(items):
        flag = items[i]
        if not flag.startswith("--"):
            raise ValueError(f"expected a --key flag, got {flag!r} in {list(flags)}")
        if "=" in flag:
            key, text = flag[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(items):
                raise ValueError(f"flag {flag} has no value in {list(flags)}")
            key, text = flag[2:], items[i + 1]
            i += 2
        out[key] = yaml.safe_load(text)
    return out


def with_data(config: dict[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with its data section replaced by ``data``: the recipe's settings of the subset and the
    loaders (``train_size``, ``image_size``, ``batch_size``...) carry over where the new class takes
    them, what describes the recipe's own data set (its location, class names) does not, and the
    new section's own arguments win."""
    out = copy.deepcopy(config)
    old = out.get("data") or {}
    kept = dict(old.get("init_args") or {})
    if old.get("class_path") != data["class_path"]:
        accepted = class_arguments(data["class_path"])
        kept = {k: v for k, v in kept.items() if not accepted or k in accepted}
    for key in RECIPE_DATA_ONLY:  # what describes the recipe's own data set never carries over
        kept.pop(key, None)
    out["data"] = {"class_path": data["class_path"], "init_args": {**kept, **copy.deepcopy(dict(data.get("init_args") or {}))}}
    return out


def read_mapping(path: str | Path, what: str = "recipe config") -> dict[str, Any]:
    """A YAML file that must hold a mapping of keys (a recipe or a study config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: a {what} is a mapping of keys, got {type(loaded).__name__}")
    return loaded


def load_configs(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Config files merged in order, as ``--config a.yaml --config b.yaml`` merges them."""
    merged: dict[str, Any] = {}
    for path in paths:
        _merge(merged, read_mapping(path))
    return merged


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            if key in SUBCLASS_SECTIONS and value.get("class_path") not in (None, into[key].get("class_path")):
                into[key] = copy.deepcopy(dict(value))
                continue
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


@dataclass
class RunSpec:
    """A run: recipe configs, an optional data section replacing theirs, and overrides of any key.

    Attributes:
        configs: recipe config files, merged in order.
        data: a data section (``class_path`` / ``init_args``) or a bare location (npz, CSV, folder).
        overrides: ``{dotted key: value}``, applied last.
    """

    configs: list[str]
    data: str | dict[str, Any] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The resolved config, as a ``train.py`` config file would hold it."""
        config = load_configs(self.configs)
        if self.data is not None:
            config = with_data(config, data_section(self.data))
        for key, value in self.overrides.items():
            set_key(config, key, value)
        return config

    def with_overrides(self, **overrides: Any) -> RunSpec:
        return RunSpec(list(self.configs), copy.deepcopy(self.data), {**self.overrides, **overrides})


def config_digest(config: Mapping[str, Any], drop: Sequence[str] = ("trainer.logger",)) -> str:
    """A short stable hash of a resolved config (for cache keys), without the keys in ``drop``."""
    config = copy.deepcopy(dict(config))
    for key in drop:
        node: Any = config
        *parents, last = key.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def csv_logger(save_dir: str | Path, name: str = "") -> dict[str, Any]:
    return {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(save_dir), "name": name}}


def run_spec(spec: RunSpec | Mapping[str, Any], lean: bool = True) -> dict[str, float]:
    """Fit, then test the best weights; the test metrics plus ``wall_s`` (the whole run, set-up included).

    ``lean``: the study cell's variant of ``train.py`` (best weights in memory, no report pictures, no
    sanity pass; same model and metrics), see :func:`smallmed.cli.fit_and_test`.
    """
    from smallmed.cli import fit_and_test

    config = spec.config() if isinstance(spec, RunSpec) else dict(spec)
    start = time.perf_counter()
    metrics = fit_and_test(config, study_cell=lean)
    return {**metrics, "wall_s": time.perf_counter() - start}
