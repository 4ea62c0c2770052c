"""The command line: ``python train.py --config FILE.yaml`` fits, then tests the best checkpoint.

It is Lightning's own ``LightningCLI`` (jsonargparse underneath), so every config key is also a flag,
``--help`` lists them, ``--print_config`` prints the resolved config, and multi-GPU or mixed precision
are plain Trainer options (``--trainer.devices 2 --trainer.strategy ddp --trainer.precision bf16-mixed``).
The usual subcommands (``fit``, ``validate``, ``test``, ``predict``) work as in any LightningCLI, and
``study`` runs a grid of such runs (see :mod:`smallmed.study`).
"""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from smallmed.datamodules.base import SmallImageDataModule
from smallmed.model import SmallMedClassifier

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


def build_cli(args: list[str] | None = None, run: bool = True) -> SmallMedCLI:
    """The CLI over ``args`` (``None``: the process's own command line).

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


def _make_cli(args: list[str] | None, run: bool) -> SmallMedCLI:
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
        },
        save_config_kwargs={"overwrite": True},
        # A typo such as `--trainer.max_epoch` must fail, not be expanded to `--trainer.max_epochs`.
        parser_kwargs={"allow_abbrev": False},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def fit_and_test(args: list[str] | None = None) -> dict[str, float]:
    """Fit, then test the best checkpoint on the full test split; return the test metrics."""
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = "best" if cli.trainer.checkpoint_callback and cli.trainer.checkpoint_callback.best_model_path else None
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if cli.trainer.is_global_zero and "test/auroc" in metrics:
        print(f"test ROC AUC: {metrics['test/auroc']:.4f} ({ckpt or 'last'} checkpoint, {len(cli.datamodule.splits['test'].labels)} test images)")
    return metrics


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "study":
        from smallmed.study import main as study_main

        study_main(argv[1:])
    elif argv and argv[0] in SUBCOMMANDS:
        build_cli(argv)
    else:
        fit_and_test(argv)


if __name__ == "__main__":
    main()
