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
to Lightning's writer) into the run folder (:mod:`smallmed.run_folder`), ``last.ckpt`` after every
epoch; :class:`~smallmed.callbacks.RandomStates` and :class:`~smallmed.preemption.SlurmRequeue`
make a resumed or requeued run continue exactly.
"""

from __future__ import annotations

import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_warn

from smallmed.callbacks.random_states import RandomStates
from smallmed.cli_errors import explain, given_value
from smallmed.datamodules.base import SmallImageDataModule
from smallmed.datamodules.predict import PredictFolderDataModule
from smallmed.model import SmallMedClassifier
from smallmed.preemption import Requeued, SlurmRequeue, is_requeued_attempt, slurm_job_id
from smallmed.prediction import PredictionWriter
from smallmed.report import RunReport
from smallmed.run_folder import (
    RunFolderCheckpoint,
    SaveConfigToRunFolder,
    last_checkpoint,
    newest_last_checkpoint,
    remove_if_unused,
    run_dir,
)
from smallmed.selection import MonitorHistory, late_mean, selection_monitor, selection_score
from smallmed.speed import SpeedUps

SUBCOMMANDS = ("fit", "validate", "test", "predict")
LINKED = ("num_classes", "task", "class_names")  # the data module owns them; the model reads them
FEW_TEST_IMAGES = 10  # fewer images of a class in the test split and the AUC says little

# Third-party notices a user cannot act on: a pytree deprecation inside Lightning on every run, and,
# when testing or predicting with another run's checkpoint, that its checkpoint folder is not reused.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"The dirpath has changed from .* won't be reloaded")


class SmallMedCLI(LightningCLI):
    """LightningCLI with smallmed's links: the data module owns the classes, the model reads them."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in LINKED:
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_lightning_class_args(RunFolderCheckpoint, "checkpoint")
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, remembering the values the user gave for the keys the data module fills in (a link
        overwrites them silently otherwise), and handing the parser to the error message on failure."""
        self._given_links = linked_values_given(args)
        try:
            super().parse_arguments(parser, args)
        except Exception as err:
            err.smallmed_options = [s for action in parser._actions for s in action.option_strings]  # for "did you mean"
            raise

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        self._check_links()

    def _check_links(self) -> None:
        """A user's ``model.init_args.num_classes`` (task, class_names) that disagrees with the data is an
        error naming both, not a value the data module's silently replaces."""
        for key, (given, where) in self._given_links.items():
            owned = getattr(self.datamodule, key, None)
            same = list(given) == list(owned) if isinstance(given, list) and owned is not None else given == owned
            if given is None or owned is None or same:
                continue
            raise ValueError(
                f"model.init_args.{key}={given!r} ({where}) disagrees with the data: {type(self.datamodule).__name__} "
                f"gives {key}={owned!r}, and the data module owns it (the model reads it from there). HINT: remove "
                f"model.init_args.{key}, or set data.init_args.{key}"
            )

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
        # Every random stream in the checkpoints (exact resume), and SLURM's time-limit signal taken at an epoch boundary.
        callbacks += [cb() for cb in (RandomStates, SlurmRequeue) if not any(isinstance(c, cb) for c in callbacks)]
        trainer = self._instantiate_trainer(config, callbacks)
        if not trainer.loggers:
            trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, LearningRateMonitor)]
        return trainer

    def before_predict(self) -> None:
        """Predict on ``--predictions.images``, sized like the configured data module (never loaded)."""
        writer = next((cb for cb in self.trainer.callbacks if isinstance(cb, PredictionWriter)), None)
        if writer is None or not writer.images:
            raise ValueError(
                "predict needs the images to predict: --predictions.images DIR (a folder, searched recursively, or one "
                "file); it writes one CSV row per image. HINT: to score the test split, whose labels are known, use "
                "`train.py test` with the same --config and --ckpt_path"
            )
        self.datamodule = PredictFolderDataModule.like(writer.images, self.datamodule)


def linked_values_given(args: list[str] | dict[str, Any] | None) -> dict[str, tuple[Any, str]]:
    """``{key: (value, where)}`` for the link targets ``model.init_args.<key>`` given in ``args`` or its config files."""
    words = list(sys.argv[1:]) if args is None else args
    given = {key: given_value(words, "model", key) for key in LINKED}
    return {key: found for key, found in given.items() if found is not None}


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
        save_config_callback=SaveConfigToRunFolder,
        save_config_kwargs={"overwrite": True, "save_to_log_dir": False},
        # A typo such as `--trainer.max_epoch` must fail, not be expanded to `--trainer.max_epochs`; parse
        # errors are raised, so that main() can say them in one line instead of argparse's usage screen.
        parser_kwargs={"allow_abbrev": False, "exit_on_error": False},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


def fit_and_test(
    args: list[str] | dict[str, Any] | None = None, study_cell: bool = False, resume: str | None = None
) -> dict[str, float]:
    """Fit, then test the best checkpoint on the full test split; return the test metrics.

    ``study_cell=True`` is the study runner's lean variant of the same run: the best weights are
    kept in memory (:class:`~smallmed.callbacks.BestWeightsInMemory`, the checkpoint callback's own
    monitor and mode) instead of written to disk and read back, the run report's pictures are not
    drawn, and Lightning's sanity validation (a val pass before training, whose results are thrown
    away) is skipped. The trained model and its test metrics are the same.

    ``resume``: a checkpoint file, a run folder (its ``checkpoints/last.ckpt``) or ``last`` (the newest
    run folder's); the run goes on in the folder the checkpoint belongs to. In a SLURM job the run
    folder is ``slurm-<job id>``, and a requeued job resumes from it by itself.
    """
    cli = build_cli(args, run=False)
    trainer = cli.trainer
    if study_cell:
        _make_lean(trainer)
    else:
        if slurm_job_id() is not None:
            _log_into(trainer, f"slurm-{slurm_job_id()}")
            if resume is None and is_requeued_attempt():
                resume = "last"
        resume = _resolve_resume(trainer, resume)
    monitor = selection_monitor(trainer)
    history = MonitorHistory(monitor) if monitor else None
    if history is not None:
        trainer.callbacks.append(history)
    try:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=resume)
    except Requeued:  # SlurmRequeue has said where the requeued job resumes from
        raise
    except (KeyboardInterrupt, SystemExit):
        last = last_checkpoint(run_dir(trainer)) if trainer.loggers and not study_cell else None
        if last is not None and trainer.is_global_zero:
            words = [a for a in (args if isinstance(args, list) else sys.argv[1:]) if a != "--traceback"]
            print(f"\ninterrupted; to resume from {last}:\n  python train.py {shlex.join(words)} --ckpt_path {run_dir(trainer)}",
                  file=sys.stderr)
        raise
    trained = trainer.global_step > 0
    if not trained:
        rank_zero_warn(
            f"nothing was trained (trainer.max_epochs={trainer.max_epochs}, max_steps={trainer.max_steps}): the test "
            "scores the initial weights. HINT: give trainer.max_epochs > 0"
        )
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    ckpt = "best" if best else None
    # The run report prints a short table of the test metrics; Lightning's long one is left out.
    results = trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    selected = selection_score(trainer)
    if selected is not None:
        metrics["val/best"] = selected
    late = late_mean(history.values) if history is not None else None
    if late is not None:
        metrics["val/late_mean"] = late
    counts = test_class_counts(cli.datamodule)  # absent in the launcher of ddp_spawn
    if counts:
        metrics["test/images"] = len(cli.datamodule.splits["test"].labels)
    if trainer.is_global_zero and "test/auroc" in metrics:
        which = "untrained weights" if not trained else (
            "best (in memory) checkpoint" if study_cell else ("best checkpoint" if ckpt else "last weights"))
        shown = ", ".join(f"{name}: {n}" for name, n in counts.items())
        print(f"test ROC AUC: {metrics['test/auroc']:.4f} ({which}, {metrics.get('test/images', 0):.0f} test images"
              f"{': ' + shown if shown else ''})")
        few = {name: n for name, n in counts.items() if n < FEW_TEST_IMAGES}
        if few:
            rank_zero_warn(
                f"the test AUC rests on {shown} image(s): with fewer than {FEW_TEST_IMAGES} of a class ({few}) it says "
                "little about new images. HINT: a larger test split (test_fraction), or report the study's seeds"
            )
        if not study_cell and trainer.loggers:
            print(f"run folder: {run_dir(trainer)}" + (f" (best checkpoint: {best})" if best else ""))
    return metrics


def _log_into(trainer: Trainer, version: str) -> None:
    """Make the CSV logger write into ``<save_dir>/<name>/<version>`` (a folder to resume in), unless
    the config fixed its version. ``trainer.loggers`` is public; CSVLogger keeps the version it was given."""
    from lightning.pytorch.loggers import CSVLogger

    loggers = list(trainer.loggers)
    for i, logger in enumerate(loggers):
        if type(logger) is CSVLogger and getattr(logger, "_version", None) is None:
            loggers[i] = CSVLogger(save_dir=logger.save_dir, name=logger.name, version=version)
    trainer.loggers = loggers


def _resolve_resume(trainer: Trainer, resume: str | None) -> str | None:
    """The checkpoint file a resume starts from; the CSV logger is pointed at its run folder."""
    if resume is None:
        return None
    target = Path(resume)
    if resume == "last":
        here = last_checkpoint(run_dir(trainer)) if trainer.loggers else None
        logger = next((l for l in trainer.loggers if hasattr(l, "root_dir")), None)
        found = here or (newest_last_checkpoint(Path(logger.root_dir)) if logger is not None else None)
        if found is None:
            print("--ckpt_path last: no checkpoints/last.ckpt to resume from yet; starting afresh")
            return None
        target = found
    elif target.is_dir():
        found = last_checkpoint(target)
        if found is None:
            raise FileNotFoundError(f"--ckpt_path {resume}: the run folder holds no checkpoints/last.ckpt to resume from")
        target = found
    elif not target.is_file():
        raise FileNotFoundError(f"--ckpt_path {resume}: no such checkpoint file or run folder")
    folder = target.parent.parent if target.parent.name == "checkpoints" else None
    if folder is not None and any(Path(getattr(l, "root_dir", "")) == folder.parent for l in trainer.loggers):
        _log_into(trainer, folder.name)
    print(f"resuming from {target}")
    return str(target)


def test_class_counts(datamodule: Any) -> dict[str, int]:
    """``{class name: images}`` of the data module's test split (empty when it has none in memory)."""
    summary = getattr(datamodule, "summary", None)
    splits = getattr(datamodule, "splits", None)
    if not callable(summary) or not splits or "test" not in splits:
        return {}
    return dict(zip(datamodule.class_names, summary()["test"]))


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
    """``train.py [fit|validate|test|predict] ...``; without a subcommand, fit then test.

    A run that cannot start or fails says why in one line (``--traceback`` shows the whole trace).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    full_trace = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    runs_before = _run_folders()
    try:
        if argv and argv[0] in SUBCOMMANDS:
            build_cli(argv)
        else:
            argv, resume = _take_option(argv, "--ckpt_path")
            fit_and_test(argv, resume=resume)
    except Requeued:
        raise SystemExit(0) from None
    except Exception as err:
        for folder in _run_folders() - runs_before:
            remove_if_unused(folder)
        if full_trace:
            raise
        print(f"train.py: error: {explain(err, argv)}\n(add --traceback to see where it failed)", file=sys.stderr)
        raise SystemExit(2 if err.__class__.__name__ == "ArgumentError" else 1) from None


def _take_option(argv: list[str], flag: str) -> tuple[list[str], str | None]:
    """``argv`` without ``flag VALUE`` / ``flag=VALUE``, and the value (the default command's ``--ckpt_path``)."""
    out, value, skip = [], None, False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word == flag and i + 1 < len(argv):
            value, skip = argv[i + 1], True
        elif word.startswith(flag + "="):
            value = word.split("=", 1)[1]
        else:
            out.append(word)
    return out, value


def _run_folders(root: str = "runs") -> set[Path]:
    """The ``version_N`` folders under ``root`` (the default CSV log), to remove those a failed run left empty."""
    return set(Path(root).glob("*/version_*"))


if __name__ == "__main__":
    main()
