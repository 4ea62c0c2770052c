"""WiSE-FT: test a mix of the weights the fine-tune started from and the weights it reached.

Wortsman et al. (CVPR 2022) found that interpolating linearly between the pretrained and the
fine-tuned weights keeps more of what pretraining knew and is often better than either end. With 50
training images a fine-tune can drift far from a good starting point in a few noisy steps, so the
mix is chosen on the validation split, never the test split: mixing coefficient ``alpha`` 0 is the
start, 1 is the fine-tuned model, and ``alpha=1`` wins ties (what the run would test without this
callback).

The start end keeps the *fitted* head by default: the body the fine-tune started from with the head
it learned (a re-initialised head at the start would be noise). ``head="start"`` mixes the head too,
which makes sense after a linear probe (``HeadReparameterization(mode="linear_probe")``).

The fine-tuned end is what the run selected: the in-memory best weights
(:class:`~smallmed.callbacks.BestWeightsInMemory`), the best checkpoint file, or else the last
weights. The mix replaces it everywhere the run reads it afterwards: the module, the in-memory best,
or a ``wise_ft.ckpt`` written beside the best checkpoint that ``trainer.test(ckpt_path="best")`` loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.functional import auroc
from typing_extensions import override

from smallmed.callbacks.best_weights import BestWeightsInMemory
from smallmed.callbacks.head_reparameterization import HeadReparameterization

State = dict[str, torch.Tensor]


class WiSEFT(Callback):
    """Choose, on the validation split, the mix of start and fine-tuned weights the run keeps.

    Args:
        alphas: mixing coefficients to try (0: the starting body, 1: the fine-tuned weights).
        head: ``fitted`` keeps the fine-tuned head at both ends; ``start`` mixes the head as well.
        head_path: dotted path of the head module, for modules without a timm model (as in
            :class:`~smallmed.callbacks.HeadReparameterization`).

    Attributes:
        alpha: the chosen coefficient (after fit).
        scores: ``{alpha: validation AUROC}`` of every coefficient tried.

    Example:
        >>> trainer = L.Trainer(callbacks=[HeadReparameterization(), WiSEFT()])  # doctest: +SKIP
    """

    def __init__(self, alphas: Sequence[float] = tuple(i / 10 for i in range(11)), head: Literal["fitted", "start"] = "fitted",
                 head_path: str | None = None) -> None:
        alphas = sorted({float(a) for a in alphas})
        if not alphas or alphas[0] < 0 or alphas[-1] > 1:
            raise ValueError(f"WiSEFT: alphas must be in [0, 1], got {alphas}")
        if head not in ("fitted", "start"):
            raise ValueError(f"WiSEFT: head must be 'fitted' or 'start', got {head!r}")
        self.alphas = alphas
        self.head = head
        self.head_path = head_path
        self.alpha: float | None = None
        self.scores: dict[float, float] = {}
        self._start: State | None = None

    # ------------------------------------------------------------- the two ends
    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        # The first step, after every callback's on_train_start (the head is re-initialised or probed by then).
        if self._start is None:
            self._start = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def _fine_tuned(self, trainer: L.Trainer, pl_module: L.LightningModule) -> State:
        best = next((cb for cb in trainer.callbacks if isinstance(cb, BestWeightsInMemory)), None)
        if best is not None and best.best_state is not None:
            return best.best_state
        path = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if path:
            return torch.load(path, map_location=pl_module.device, weights_only=False)["state_dict"]
        return {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def _head_keys(self, pl_module: L.LightningModule) -> set[str]:
        if self.head == "start":
            return set()
        _, _, head = HeadReparameterization(head=self.head_path).find_head(pl_module)
        prefix = next(name for name, module in pl_module.named_modules() if module is head)
        return {k for k in pl_module.state_dict() if k.startswith(prefix + ".")}

    @staticmethod
    def mix(start: State, tuned: State, alpha: float, keep: set[str] = frozenset()) -> State:
        """``(1 - alpha) * start + alpha * tuned`` for every floating tensor; the keys in ``keep`` and the
        integer buffers (BatchNorm's step count) come from ``tuned``."""
        out = {}
        for key, value in tuned.items():
            if key in keep or not value.is_floating_point() or key not in start:
                out[key] = value.clone()
            else:
                out[key] = torch.lerp(start[key].to(value), value, alpha)
        return out

    # -------------------------------------------------------------- the choice
    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:  # nothing was trained
            return
        tuned = self._fine_tuned(trainer, pl_module)
        keep = self._head_keys(pl_module)
        for alpha in self.alphas:
            pl_module.load_state_dict(self.mix(self._start, tuned, alpha, keep))
            self.scores[alpha] = validation_auroc(trainer, pl_module)
        finite = {a: s for a, s in self.scores.items() if not math.isnan(s)}
        self.alpha = max(finite, key=lambda a: (finite[a], a)) if finite else 1.0
        chosen = self.mix(self._start, tuned, self.alpha, keep)
        pl_module.load_state_dict(chosen)
        self._hand_over(trainer, pl_module, chosen)
        for logger in trainer.loggers:
            logger.log_metrics({"wise_ft/alpha": self.alpha, "wise_ft/val_auroc": self.scores.get(self.alpha, float("nan"))},
                               step=trainer.global_step)
        shown = ", ".join(f"{a:g}: {s:.4f}" for a, s in self.scores.items())
        rank_zero_info(f"WiSE-FT: alpha {self.alpha:g} chosen on the validation split (val AUROC by alpha: {shown})")

    def _hand_over(self, trainer: L.Trainer, pl_module: L.LightningModule, chosen: State) -> None:
        """Make the mix what the rest of the run reads as its best weights."""
        best = next((cb for cb in trainer.callbacks if isinstance(cb, BestWeightsInMemory)), None)
        if best is not None and best.best_state is not None:
            best.best_state = chosen
            return
        callback = trainer.checkpoint_callback
        if callback is not None and getattr(callback, "best_model_path", ""):
            path = str(Path(callback.best_model_path).with_name("wise_ft.ckpt"))
            trainer.save_checkpoint(path, weights_only=True)
            callback.best_model_path = path

    # ------------------------------------------------------------------ resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"start": self._start, "alpha": self.alpha}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._start = state_dict.get("start")
        self.alpha = state_dict.get("alpha")


@torch.no_grad()
def validation_auroc(trainer: L.Trainer, pl_module: L.LightningModule) -> float:
    """Macro ROC AUC of ``pl_module`` on the trainer's validation loaders, all ranks' images together.

    Batches go through the module's and the data module's batch transfer hooks as in validation; the
    probabilities come from the module's ``predict_proba`` when it has one (softmax, or the sigmoid of
    a single logit, otherwise).
    """
    loaders = trainer.val_dataloaders
    if loaders is None:
        raise RuntimeError("WiSEFT chooses its mix on the validation split, and this run has no val loader")
    loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
    stage, was_training = trainer.state.stage, pl_module.training
    trainer.validating = True  # the data module serves the val split (device-resident batches look at the stage)
    pl_module.eval()
    probs, targets = [], []
    try:
        for idx, loader in enumerate(loaders):
            for batch in loader:
                images, target = trainer.strategy.batch_to_device(batch, pl_module.device, dataloader_idx=idx)[:2]
                if hasattr(pl_module, "predict_proba"):
                    p = pl_module.predict_proba(images)
                else:
                    logits = pl_module(images)
                    p = logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)
                probs.append(p.float())
                targets.append(target)
    finally:
        trainer.state.stage = stage
        pl_module.train(was_training)
    p, t = torch.cat(probs), torch.cat(targets)
    if trainer.world_size > 1:
        p, t = trainer.strategy.all_gather(p).flatten(0, 1), trainer.strategy.all_gather(t).flatten(0, 1)
    if t.ndim == 2:
        return float(auroc(p, t.long(), task="multilabel", num_labels=t.shape[1]))
    if p.ndim == 1 or p.shape[-1] == 1:
        return float(auroc(p.reshape(-1), t.long(), task="binary"))
    return float(auroc(p, t.long(), task="multiclass", num_classes=p.shape[-1]))
