"""`callbacks/` and `datamodules/` ship inside the smallmed package, and resolve from a bare checkout too."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "runs", "weights", "wandb", "lightning_logs", "__pycache__", ".pytest_cache"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Names inside a wheel built from a copy of the checkout (the build never writes into the repository)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=BUILD_IGNORE)
    out = tmp / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(out.glob("smallmed-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


@pytest.mark.parametrize(
    "name",
    [
        "smallmed/__init__.py",
        "smallmed/model.py",
        "smallmed/cli.py",
        "smallmed/callbacks/__init__.py",
        "smallmed/callbacks/layer_groups.py",
        "smallmed/datamodules/__init__.py",
        "smallmed/datamodules/npz.py",
        "smallmed/datamodules/sampling.py",
        "smallmed/report/callback.py",
        "smallmed/speed/callback.py",
        "smallmed/study/executors.py",
    ],
)
def test_wheel_contains(wheel_names, name):
    assert name in wheel_names


def test_wheel_has_no_top_level_callbacks_or_datamodules(wheel_names):
    top = {n.split("/")[0] for n in wheel_names}
    assert not top & {"callbacks", "datamodules", "tests", "configs"}, sorted(top)
    assert all(n.startswith(("smallmed/", "smallmed-")) for n in wheel_names), sorted(top)


def test_wheel_declares_the_convert_script(wheel, wheel_names):
    (entry_points,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert "smallmed-convert-lite0 = smallmed.convert_lite0:main" in text


def test_source_checkout_resolves_subpackages_without_install(tmp_path):
    """A fresh clone, no install: `smallmed.callbacks` must come from the checkout's top-level folder."""
    for name in ("smallmed", "callbacks", "datamodules"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    # `-S` skips site-packages' .pth files, so the editable install's finder cannot answer; the
    # dependencies stay importable through PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *site.getsitepackages()])
    code = (
        "import smallmed, smallmed.callbacks, smallmed.datamodules, smallmed.datamodules.sampling\n"
        "print(smallmed.__file__); print(smallmed.callbacks.__file__); print(smallmed.datamodules.sampling.__file__)\n"
        "import importlib.util\n"
        "print(importlib.util.find_spec('smallmed.configs'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    *files, spec = proc.stdout.split()
    assert [Path(f) for f in files] == [
        tmp_path / "smallmed" / "__init__.py",
        tmp_path / "callbacks" / "__init__.py",
        tmp_path / "datamodules" / "sampling.py",
    ]
    assert spec == "None"  # only the two subpackages are mapped


def test_another_checkout_uses_its_own_subpackages_beside_an_editable_install(tmp_path):
    """A second checkout (a worktree, an old commit) run from its root, while this one is installed in
    editable mode: its `smallmed` must not be handed this checkout's callbacks and data modules."""
    for name in ("smallmed", "callbacks", "datamodules"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = "import smallmed.callbacks, smallmed.datamodules; print(smallmed.callbacks.__file__); print(smallmed.datamodules.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [Path(f) for f in proc.stdout.split()] == [tmp_path / "callbacks" / "__init__.py", tmp_path / "datamodules" / "__init__.py"]


def test_installed_package_imports_the_same_modules():
    import smallmed.callbacks
    import smallmed.datamodules

    assert Path(smallmed.callbacks.__file__).resolve() == REPO / "callbacks" / "__init__.py"
    assert Path(smallmed.datamodules.__file__).resolve() == REPO / "datamodules" / "__init__.py"
    assert smallmed.datamodules.NpzDataModule.__module__ == "smallmed.datamodules.npz"
