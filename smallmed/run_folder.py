"""One run, one folder, whatever the loggers: config, metrics, report pictures and checkpoints together.

Lightning puts checkpoints under the *first* logger's folder (``<save_dir>/<project>/<W&B run id>``
when W&B comes first) and the CSV log, with the report, under its own ``version_N``; the CLI's
``config.yaml`` went to the first logger's ``save_dir``, shared by every W&B run. Here the run folder
is the CSV (or TensorBoard) logger's ``version_N`` when there is one, else the folder Lightning gives
a W&B-only run's checkpoints, else the trainer's ``default_root_dir``; everything of the run goes in it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from typing_extensions import override



def run_dir(trainer: L.Trainer) -> Path:
    """The run's folder (see the module docstring). Rank zero's view; it never broadcasts."""
    for logger in trainer.loggers:
        if isinstance(logger, (CSVLogger, TensorBoardLogger)):
            return Path(logger.log_dir)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return Path(logger.save_dir or trainer.default_root_dir) / str(logger.name) / str(logger.version)
    return Path(trainer.default_root_dir)


class RunFolderCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, writing into ``<run folder>/checkpoints`` unless given a ``dirpath``,
    and keeping a true ``last.ckpt``.

    Lightning's ``save_last`` refreshes ``last.ckpt`` only when the monitored value improves, so a
    killed run would resume from its best epoch, not its last. Here, with ``save_last`` unset or
    ``true``, ``last.ckpt`` is rewritten (atomically, by the trainer's checkpoint writer) at the end of
    every training epoch, after validation; ``save_last: false`` keeps none, ``link`` is Lightning's.
    """

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.dirpath is None:
            folder = str(run_dir(trainer) / "checkpoints") if trainer.is_global_zero else None
            self.dirpath = trainer.strategy.broadcast(folder)
        if not hasattr(self, "true_last"):
            self.true_last = self.save_last in (None, True)
            if self.true_last:
                self.save_last = False  # Lightning's rule for last.ckpt is replaced by the one below
        super().setup(trainer, pl_module, stage)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.true_last and not trainer.fast_dev_run and not trainer.sanity_checking:
            path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
            self.last_model_path = str(path)  # before saving: the checkpoint's own state names it
            trainer.save_checkpoint(path, weights_only=False)


class SaveConfigToRunFolder(SaveConfigCallback):
    """Saves the resolved ``config.yaml`` into the run folder, and sends it to W&B as the run's config.

    The whole config (trainer, callbacks, model, data) goes into the W&B run's config under ``config``,
    so a run on the W&B page says exactly how it was made.
    """

    @override
    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        folder = run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)
        keep_none = _keep_none()
        self.parser.save(self.config, str(folder / self.config_filename), overwrite=True, multifile=self.multifile, **keep_none)
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            import yaml

            config = yaml.safe_load(self.parser.dump(self.config, **keep_none))
            for logger in loggers:
                logger.log_hyperparams({"config": config})


def last_checkpoint(folder: Path) -> Path | None:
    """``<run folder>/checkpoints/last.ckpt`` if it exists."""
    path = Path(folder) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def newest_last_checkpoint(root: Path) -> Path | None:
    """The most recently written ``*/checkpoints/last.ckpt`` under a log root (``runs/smallmed``)."""
    found = sorted(Path(root).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def newest_metrics_log(root: Path) -> Path | None:
    """The most recently written ``*/metrics.csv`` (a CSV logger's ``version_N``) under a logger's ``save_dir``:
    the run that finished last, when a cell or source stage was run more than once."""
    found = sorted(Path(root).glob("*/metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _keep_none() -> dict[str, bool]:
    """jsonargparse's switch for writing keys whose value is None (renamed in 4.49)."""
    from importlib.metadata import version

    major, minor = (int(part) for part in version("jsonargparse").split(".")[:2])
    return {"skip_unset": False} if (major, minor) >= (4, 49) else {"skip_none": False}


def remove_if_unused(folder: Path) -> bool:
    """Remove a run folder that a failed start left without a checkpoint or a logged metric (its config
    and start-of-fit pictures only): the next run then finds no hollow ``version_N`` beside real ones."""
    if not folder.is_dir() or (folder / "checkpoints").exists():
        return False
    metrics = folder / "metrics.csv"
    if metrics.is_file() and len(metrics.read_text().splitlines()) > 1:
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
