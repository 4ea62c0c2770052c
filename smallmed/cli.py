"""The command line: ``python train.py --config FILE.yaml`` fits, then tests the best checkpoint.

It is Lightning's own ``LightningCLI`` (jsonargparse underneath), so every config key is also a flag,
``--help`` lists them, ``--print_config`` prints the resolved config, and multi-GPU or mixed precision
are plain Trainer options (``--trainer.devices 2 --trainer.strategy ddp --trainer.precision bf16-mixed``).
The usual subcommands (``fit``, ``validate``, ``test``, ``predict``) work as in any LightningCLI;
``train.py study`` (:mod:`smallmed.study`) runs grids of such runs.

Every run also gets :class:`~smallmed.report.RunReport` (``--report.*``: the pictures beside the log
and in W&B), and ``predict --predictions.images DIR`` predicts a folder of new images into a CSV
(:class:`~smallmed.prediction.PredictionWriter`).

Checkpoints are written by :class:`~smallmed.checkpoint_io.DirectFileCheckpointIO` (the default
``trainer.plugins``; a config that sets its own ``plugins`` list replaces it, and ``null`` goes back
to Lightning's writer).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from smallmed.datamodules.base import SmallImageDataModule
from smallmed.datamodules.predict import PredictFolderDataModule
from smallmed.model import SmallMedClassifier
from smallmed.prediction import PredictionWriter
from smallmed.report import RunReport
from smallmed.speed import SpeedUps

SUBCOMMANDS = ("fit", "validate", "test", "predict")


class SmallMedCLI(LightningCLI):
    """LightningCLI with smallmed's links: the data module owns the classes, the model reads them."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.task", "model.init_args.task", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/auroc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:02d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        # The run's pictures (PNG beside the CSV log, W&B media): --report.heatmaps 16, --report.train_images 0 ...
        parser.add_lightning_class_args(RunReport, "report")
        # How the run computes, never what: --speed.mode off turns the speed-ups off (smallmed.speed).
        parser.add_lightning_class_args(SpeedUps, "speed")
        # predict on a folder of new images (the key cannot be "predict": Lightning's predict subcommand has that group):
        # python train.py predict ... --predictions.images new_images/ [--predictions.out x.csv] [--predictions.heatmaps true]
        parser.add_lightning_class_args(PredictionWriter, "predictions")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, without the parts of this CLI that the user's trainer options switch off.

        ``--trainer.enable_checkpointing false``: no ``checkpoint`` callback (Lightning refuses a
        ModelCheckpoint then). ``--trainer.logger false``: no LR monitor (Lightning's refuses to start
        without a logger, and would have nothing to write to). The first lines are LightningCLI's own
        ``instantiate_trainer`` (Lightning 2.x), which has no public hook between instantiating the
        callback groups and building the Trainer from them.
        """
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("enable_checkpointing") is False:
            callbacks = [cb for cb in callbacks if not isinstance(cb, ModelCheckpoint)]
        trainer = self._instantiate_trainer(config, callbacks)
        if not trainer.loggers:
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        return trainer

    def before_predict(self) -> None:
        """With ``--predictions.images``, predict on that folder, sized like the configured data module (never loaded)."""
        writer = next((cb for cb in self.trainer.callbacks if isinstance(cb, PredictionWriter)), None)
        if writer is not None and writer.images:
            self.datamodule = PredictFolderDataModule.like(writer.images, self.datamodule)


class SaveConfigToLoggers(SaveConfigCallback):
    """Saves ``config.yaml`` in the log dir (as Lightning does) and sends the resolved config to W&B.

    The whole resolved config (trainer, callbacks, model, data) goes into the W&B run's config under
    ``config``, so a run on the W&B page says exactly how it was made. Lightning writes
    ``config.yaml`` into the *first* logger's folder, which for W&B first is the shared ``save_dir``;
    a copy also goes beside every CSV / TensorBoard log, so each run folder keeps its own.
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        # trainer.log_dir as Lightning computes it, without its broadcast (this runs on rank zero only)
        first = trainer.loggers[0] if trainer.loggers else None
        here = None
        if self.save_to_log_dir and first is not None:
            here = Path(first.log_dir if isinstance(first, (CSVLogger, TensorBoardLogger)) else first.save_dir or "").resolve()
        for logger in trainer.loggers:
            if isinstance(logger, (CSVLogger, TensorBoardLogger)) and Path(logger.log_dir).resolve() != here:
                Path(logger.log_dir).mkdir(parents=True, exist_ok=True)
                path = Path(logger.log_dir) / self.config_filename
                self.parser.save(self.config, str(path), skip_none=False, overwrite=True, multifile=self.multifile)
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in loggers:
                logger.log_hyperparams({"config": config})


def build_cli(args: list[str] | dict[str, Any] | None = None, run: bool = True) -> SmallMedCLI:
    """The CLI over ``args``: command-line words, a resolved config dict (as a config file holds it),
    or ``None`` for the process's own command line.

    Explicit ``args`` are the whole command line of this run (the study runner and the benchmarks
    call it many times in one process), so the process's own ``sys.argv`` is hidden meanwhile.
    """
    if args is None:
        return _make_cli(None, run)
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        return _make_cli(args, run)
    finally:
        sys.argv = saved


def _make_cli(args: list[str] | dict[str, Any] | None, run: bool) -> SmallMedCLI:
    return SmallMedCLI(
        SmallMedClassifier,
        SmallImageDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "smallmed"},
            },
            # Checkpoints serialised straight into their file (half the time of Lightning's own save):
            "plugins": [{"class_path": "smallmed.checkpoint_io.DirectFileCheckpointIO"}],
        },
        save_config_callback=SaveConfigToLoggers,
        save_config_kwargs={"overwrite": True},
        # A typo such as `--trainer.max_epoch` must fail, not be expanded to `--trainer.max_epochs`.
        parser_kwargs={"allow_abbrev": False},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def fit_and_test(args: list[str] | dict[str, Any] | None = None, study_cell: bool = False) -> dict[str, float]:
    """Fit, then test the best checkpoint on the full test split; return the test metrics.

    ``study_cell=True`` is the study runner's lean variant of the same run: the best weights are
    kept in memory (:class:`~smallmed.callbacks.BestWeightsInMemory`, the checkpoint callback's own
    monitor and mode) instead of written to disk and read back, the run report's pictures are not
    drawn, and Lightning's sanity validation (a val pass before training, whose results are thrown
    away) is skipped. The trained model and its test metrics are the same.
    """
    cli = build_cli(args, run=False)
    trainer = cli.trainer
    if study_cell:
        _make_lean(trainer)
    trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
    # The run report prints a short table of the test metrics; Lightning's long one is left out.
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    test_split = getattr(cli.datamodule, "splits", {}).get("test")  # absent in the launcher of ddp_spawn
    if test_split is not None:
        metrics["test/images"] = len(test_split.labels)
    if trainer.is_global_zero and "test/auroc" in metrics:
        count = f", {len(test_split.labels)} test images" if test_split is not None else ""
        which = "best (in memory) checkpoint" if study_cell else ("best checkpoint" if ckpt else "last weights")
        print(f"test ROC AUC: {metrics['test/auroc']:.4f} ({which}{count})")
    return metrics


def _make_lean(trainer) -> None:
    """Swap the checkpoint callback for in-memory best weights, drop the run report's pictures and
    the sanity validation."""
    from smallmed.callbacks import BestWeightsInMemory

    kept = []
    for callback in trainer.callbacks:
        if isinstance(callback, ModelCheckpoint):
            if callback.monitor:
                kept.append(BestWeightsInMemory(callback.monitor, callback.mode))
        elif not isinstance(callback, RunReport):
            kept.append(callback)
    trainer.callbacks = kept
    trainer.num_sanity_val_steps = 0


def main(argv: list[str] | None = None) -> None:
    """``train.py [fit|validate|test|predict] ...``; without a subcommand, fit then test."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        build_cli(argv)
    else:
        fit_and_test(argv)


if __name__ == "__main__":
    main()
