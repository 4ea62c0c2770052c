"""Save every global random stream in the checkpoint, so a resumed run draws what the uninterrupted one drew.

A run draws from torch's CPU (and CUDA) generator for shuffling, augmentation and dropout, and may
draw from NumPy's and Python's. Lightning's checkpoints keep none of them, so a run resumed after a
kill takes other batches, other flips and other dropout masks than the run that was not killed.
:class:`RandomStates` keeps them in its ``state_dict`` (written with every checkpoint) and puts them
back when a resumed fit starts, and again after Lightning's sanity check (every DataLoader iterator,
a validation one too, draws its base seed from torch's generator), so the first epoch's shuffle,
built right after, draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override


def collect_states() -> dict[str, Any]:
    """The global random states of torch (CPU and every CUDA device), NumPy and Python, as tensors and
    plain numbers (checkpoints load with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = states["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RandomStates(Callback):
    """Checkpoint the global random states; restore them when a resumed run starts training.

    Example:
        >>> trainer = L.Trainer(callbacks=[RandomStates()])  # doctest: +SKIP
        >>> trainer.fit(model, ckpt_path="last.ckpt")  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return collect_states()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = dict(state_dict)  # applied later: loading comes before set-up that may draw

    def _apply(self) -> None:
        if self._restored is not None:
            restore_states(self._restored)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply()

    @override
    def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply()  # the first training iterator is made next, before on_train_start

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restored = None
