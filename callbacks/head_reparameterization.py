"""Rebuild the classification head after transfer instead of inheriting it.

A pretrained (or source-task) head carries nothing useful for the new classes, and a random head's
large early gradients distort the transferred features (Kumar et al., ICLR 2022). Three remedies:

``reinit``
    Small random weights and a bias set to the class prior, so the first steps start from the
    right base rate instead of pushing the body around to learn it.
``linear_probe`` (LP-FT)
    Fit the head first, as a linear probe on frozen features computed once, then fine-tune
    everything from there.
``classifier: cosine``
    A weight-normalised (cosine) classifier with a learned scale, less sensitive to the feature
    norm shift between source and target images.

Head dropout is not this callback's job: it has one home, the module (smallmed's
``model.init_args.drop_rate``, timm's ``create_model(drop_rate=...)``). The old ``dropout`` argument
still works, with a deprecation warning, for modules that have no dropout of their own.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from smallmed.callbacks.layer_groups import find_timm_model


class CosineClassifier(nn.Module):
    """``scale * cos(x, w_c) + b_c``: logits from directions, not norms, with a learned scale."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0, learn_scale: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * 0.01)
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1)) * self.scale + self.bias


class HeadReparameterization(Callback):
    """Re-initialise, linear-probe or swap (cosine) the head of any LightningModule before fine-tuning.

    Args:
        mode: ``reinit`` (prior-bias init) or ``linear_probe`` (fit the head on frozen features, LP-FT).
        classifier: ``linear`` keeps the module's head type; ``cosine`` replaces it by a
            :class:`CosineClassifier` (done in ``setup``, so the optimizer sees its parameters).
        prior_bias: set the head's bias to the training set's class prior (log-odds).
        dropout: deprecated: put the dropout in the module (smallmed: ``model.init_args.drop_rate``).
            Still applied in front of the head by a forward pre-hook when given.
        cosine_scale: initial scale of the cosine classifier.
        probe_steps: L-BFGS iterations of the linear probe.
        probe_weight_decay: L2 penalty of the probe (small data needs some).
        head: dotted attribute path of the head on the LightningModule (e.g. ``backbone.fc``);
            default: the ``get_classifier()`` of the timm model it holds.
        init_std: standard deviation of the re-initialised weights.

    The head is changed once per run: a resumed run keeps the head its checkpoint restored.
    Under DDP, rank 0 computes the new head and broadcasts it, so every rank starts identical.
    """

    def __init__(
        self,
        mode: Literal["reinit", "linear_probe"] = "reinit",
        classifier: Literal["linear", "cosine"] = "linear",
        prior_bias: bool = True,
        dropout: float | None = None,
        cosine_scale: float = 10.0,
        probe_steps: int = 100,
        probe_weight_decay: float = 1e-3,
        head: str | None = None,
        init_std: float = 0.01,
    ) -> None:
        if mode not in ("reinit", "linear_probe"):
            raise ValueError(f"unknown mode {mode!r}; choose reinit or linear_probe")
        if classifier not in ("linear", "cosine"):
            raise ValueError(f"unknown classifier {classifier!r}; choose linear or cosine")
        if dropout is not None and not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if dropout is not None:
            warnings.warn(
                "HeadReparameterization(dropout=...) is deprecated: head dropout belongs to the module. HINT: set "
                "model.init_args.drop_rate (smallmed) or timm.create_model(..., drop_rate=...) and drop the argument",
                FutureWarning,
                stacklevel=2,
            )
        if probe_steps < 1:
            raise ValueError(f"probe_steps must be positive, got {probe_steps}")
        self.mode = mode
        self.classifier = classifier
        self.prior_bias = prior_bias
        self.dropout = dropout
        self.cosine_scale = cosine_scale
        self.probe_steps = probe_steps
        self.probe_weight_decay = probe_weight_decay
        self.head_path = head
        self.init_std = init_std
        self.applied = False
        self.probe_loss: float | None = None
        self._hooked: set[int] = set()

    # ------------------------------------------------------------ the head
    def find_head(self, pl_module: nn.Module) -> tuple[nn.Module, str, nn.Module]:
        """``(parent, attribute, head)`` of the head module on ``pl_module``."""
        if self.head_path is not None:
            parent_path, _, attr = self.head_path.rpartition(".")
            try:
                parent = pl_module.get_submodule(parent_path) if parent_path else pl_module
                head = getattr(parent, attr)
            except AttributeError as err:
                raise ValueError(f"{type(pl_module).__name__} has no head module at {self.head_path!r}") from err
            return parent, attr, head
        found = find_timm_model(pl_module)
        if found is None:
            raise ValueError(
                f"{type(pl_module).__name__} holds no timm model; HINT: pass `head='path.to.classifier'`"
            )
        _, model = found
        target = model.get_classifier()
        for name, module in pl_module.named_modules():
            if module is target and name:
                parent_path, _, attr = name.rpartition(".")
                return (pl_module.get_submodule(parent_path) if parent_path else pl_module), attr, module
        raise ValueError(f"the classifier of {type(model).__name__} is not a submodule of {type(pl_module).__name__}")

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        parent, attr, head = self.find_head(pl_module)
        if not hasattr(head, "weight") or not hasattr(head, "out_features"):
            raise ValueError(
                f"the head {attr!r} is a {type(head).__name__}; HeadReparameterization needs a linear layer "
                "(weight, bias, in/out_features)"
            )
        if self.classifier == "cosine" and not isinstance(head, CosineClassifier):
            head = CosineClassifier(head.in_features, head.out_features, self.cosine_scale).to(head.weight.device)
            setattr(parent, attr, head)
        if self.dropout:
            found = find_timm_model(pl_module)
            own = getattr(found[1], "drop_rate", 0.0) if found else 0.0
            if own:
                raise ValueError(
                    f"head dropout is set twice: the model's drop_rate={own} and HeadReparameterization(dropout="
                    f"{self.dropout}). HINT: keep the model's drop_rate and remove the callback's dropout"
                )
        if self.dropout is not None and id(head) not in self._hooked:
            p = self.dropout
            head.register_forward_pre_hook(lambda m, args: (F.dropout(args[0], p, training=m.training), *args[1:]))
            self._hooked.add(id(head))

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The training data is set up by now (trainer.train_dataloader); no step has been taken.
        if self.applied:  # restored from a checkpoint: keep the trained head
            return
        _, _, head = self.find_head(pl_module)
        new_state = None
        if trainer.is_global_zero:
            new_state = self._new_head_state(trainer, pl_module, head)
        new_state = trainer.strategy.broadcast(new_state, src=0)
        head.load_state_dict({k: v.to(head.weight.device) for k, v in new_state.items()})
        self.applied = True

    def _new_head_state(self, trainer: L.Trainer, pl_module: L.LightningModule, head: nn.Module) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            nn.init.normal_(head.weight, std=self.init_std)
            if getattr(head, "bias", None) is not None:
                head.bias.zero_()
        if self.prior_bias or self.mode == "linear_probe":
            features, targets = collect_head_inputs(trainer, pl_module, head, need_features=self.mode == "linear_probe")
            if self.prior_bias and getattr(head, "bias", None) is not None:
                with torch.no_grad():
                    head.bias.copy_(prior_bias(targets, head.out_features).to(head.bias))
            if self.mode == "linear_probe":
                self.probe_loss = fit_linear_probe(head, features, targets, self.probe_steps, self.probe_weight_decay)
        return {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}

    # ---------------------------------------------------------------- resume
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "probe_loss": self.probe_loss}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.applied = bool(state_dict.get("applied", False))
        self.probe_loss = state_dict.get("probe_loss")


def _one_pass_loader(trainer: L.Trainer) -> DataLoader:
    """Every training sample once, in order, on this process.

    The class prior and the probe describe the training set itself, so they must not depend on which
    samples a shuffled loader with ``drop_last``, a weighted sampler or a DDP shard happens to yield.
    """
    loader = trainer.train_dataloader
    if loader is None:
        raise ValueError("HeadReparameterization needs the training data: pass a datamodule or train_dataloaders to trainer.fit")
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader  # several loaders or a stream: use what the trainer iterates
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size or 64,
        shuffle=False,
        drop_last=False,
        collate_fn=loader.collate_fn,
        num_workers=0,
    )


def collect_head_inputs(
    trainer: L.Trainer, pl_module: L.LightningModule, head: nn.Module, need_features: bool
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One pass over the training data in eval mode: the head's inputs (features) and the targets.

    Batches are ``(inputs, targets, ...)`` sequences, as Lightning's image examples use.
    """
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda m, args: captured.append(args[0].detach().float().cpu())) if need_features else None
    targets = []
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            for batch in _one_pass_loader(trainer):
                # The trainer's own transfer, with the data module's batch hooks (a device-resident
                # loader yields indices; on_after_batch_transfer turns them into images).
                batch = trainer.strategy.batch_to_device(batch)
                if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                    raise ValueError("HeadReparameterization expects (inputs, targets) batches")
                inputs, target = batch[0], batch[1]
                targets.append(torch.as_tensor(target).cpu())
                if need_features:
                    pl_module(inputs)
    finally:
        if hook is not None:
            hook.remove()
        pl_module.train(was_training)
    features = torch.cat(captured) if need_features else None
    return features, torch.cat(targets)


def _is_bce(out_features: int, targets: torch.Tensor) -> bool:
    return out_features == 1 or targets.ndim > 1


def prior_bias(targets: torch.Tensor, out_features: int, eps: float = 1e-3) -> torch.Tensor:
    """Bias that makes an all-zero feature predict the class prior (log-odds for BCE, log p for softmax)."""
    if _is_bce(out_features, targets):
        p = targets.float().reshape(len(targets), -1).mean(0).clamp(eps, 1 - eps)
        return torch.log(p / (1 - p)).reshape(out_features)
    counts = torch.bincount(targets.long().reshape(-1), minlength=out_features).float()[:out_features]
    return torch.log((counts / counts.sum()).clamp_min(eps))


def fit_linear_probe(head: nn.Module, features: torch.Tensor, targets: torch.Tensor, steps: int, weight_decay: float) -> float:
    """Fit ``head`` on fixed features with full-batch L-BFGS; return the final training loss."""
    device = head.weight.device
    x = features.to(device)
    y = targets.to(device)
    bce = _is_bce(head.out_features, y)
    params = [p for p in head.parameters() if p.requires_grad]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    was_training = head.training
    head.eval()  # no dropout while probing

    def loss_fn() -> torch.Tensor:
        logits = head(x)
        if bce:
            loss = F.binary_cross_entropy_with_logits(logits.reshape(y.shape[0], -1), y.float().reshape(y.shape[0], -1))
        else:
            loss = F.cross_entropy(logits, y.long())
        return loss + weight_decay * head.weight.pow(2).sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
        final = float(loss_fn().detach())
    for p in params:
        p.grad = None
    head.train(was_training)
    if not math.isfinite(final):
        raise RuntimeError("the linear probe diverged (non-finite loss); HINT: raise probe_weight_decay")
    return final
