"""Two-process DDP (CPU, gloo) run across unfreezing milestones; each rank saves what it ended with.

Run by tests/test_ddp.py as a script, because Lightning's DDP launcher starts the other rank by
re-running the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from plain_module import PlainTimmModule, random_loader

from smallmed.callbacks import DiscriminativeLR, GradualUnfreezing, HeadReparameterization


class FrozenWatch(Callback):
    """Checks, at every step while a group is frozen, that it has not moved since training began."""

    def __init__(self, unfreezing: GradualUnfreezing) -> None:
        self.unfreezing = unfreezing
        self.start: dict[str, torch.Tensor] = {}
        self.violations: list[str] = []
        self.checked = 0
        self.requires_grad_toggled = False

    def on_train_start(self, trainer, pl_module):
        self.start = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        for group in self.unfreezing.frozen:
            for name in self.unfreezing.layer_groups[group]:
                self.checked += 1
                if not torch.equal(params[name], self.start[name]):
                    self.violations.append(f"step {trainer.global_step}: {name}")
                if not params[name].requires_grad:
                    self.requires_grad_toggled = True


def main(out: Path) -> None:
    L.seed_everything(0)
    unfreezing = GradualUnfreezing(milestones=[2, 5], unit="step", bn_policy="freeze_all")
    watch = FrozenWatch(unfreezing)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[HeadReparameterization(), DiscriminativeLR(ratio=1 / 3), unfreezing, watch],
    )
    module = PlainTimmModule()
    # 32 images, batch 4, two ranks: 4 steps per epoch, 8 in all; unfreezes at steps 2 and 5.
    trainer.fit(module, train_dataloaders=random_loader(n=32, batch_size=4), val_dataloaders=random_loader(n=8, seed=1))
    torch.save(
        {
            "state": {k: v.detach().cpu() for k, v in module.state_dict().items()},
            "start": watch.start,
            "violations": watch.violations,
            "checked": watch.checked,
            "requires_grad_toggled": watch.requires_grad_toggled,
            "global_step": trainer.global_step,
            "groups": unfreezing.layer_groups,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
