"""The study's cells and how one runs: the grid, each cell's config, its result row, source stages."""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import sys
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities.exceptions import SIGTERMException

from smallmed.study.config import RECIPE_SOURCE, StudyConfig
from smallmed.study.derived import MEMBER_KEY, member_seed, member_variant, variant_text
from smallmed.study.predictions import predictions_path
from smallmed.study.results import append_row
from smallmed.study.runs import RunSpec, config_digest, csv_logger, run_spec

# The study runs its cells as trainers of their own, never under `srun` (SLURM cells get Lightning's
# LightningEnvironment, or `srun` itself for multi-device cells): on a SLURM login node Lightning would
# otherwise advise, for every cell, to prepend `srun`. Set here, where every study process imports it.
warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used")

CHECKPOINT_IO = {"class_path": "smallmed.checkpoint_io.DirectFileCheckpointIO"}
SINGLE_PROCESS = {"class_path": "lightning.fabric.plugins.environments.LightningEnvironment"}


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    target: str
    source: str
    method: str
    train_size: int | None
    variant: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def variant_text(self) -> str:
        return variant_text(self.variant)

    @property
    def fields(self) -> dict[str, Any]:
        return {"target": self.target, "source": self.source, "method": self.method,
                "train_size": "" if self.train_size is None else self.train_size, "variant": self.variant_text, "seed": self.seed}

    @property
    def name(self) -> str:
        size = f"N{self.train_size}" if self.train_size is not None else "N-recipe"
        variant = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.variant]
        return "/".join([self.target, self.source, self.method, size, *variant])


def cells(config: StudyConfig) -> Iterator[Cell]:
    """Every cell, seeds innermost, so early results already cover every configuration; then the runs
    derived methods need: the extra members of seed ensembles (``member=k`` in the variant) and the
    auto choices' inner-validation runs (``data.init_args.inner_val=f``, or ``inner_folds=k;inner_fold=i``)."""
    axes = list(config.grid.items())
    variants = [tuple(zip([k for k, _ in axes], values)) for values in itertools.product(*[v for _, v in axes])]
    sizes = config.sizes if config.sizes is not None else [None]
    grid = [(target, source, method, size, variant, seed)
            for target, source, method, size, variant in itertools.product(config.targets, config.source_names, config.methods,
                                                                           sizes, variants)
            for seed in config.seeds_for(size)]
    for target, source, method, size, variant, seed in grid:
        yield Cell(target, source, method, None if size is None else int(size), variant, seed)
    for member in range(1, max((max(ks) for ks in config.ensembles.values()), default=1)):
        for target, source, method, size, variant, seed in grid:
            if member < max(config.ensembles.get(method, [0])):
                yield Cell(target, source, method, None if size is None else int(size), (*variant, (MEMBER_KEY, member)), seed)
    inner = sorted({(c, v) for choice in config.auto_choices.values() for c in choice.candidates for v in choice.inner_variants})
    for target, source, method, size, variant, seed in grid:
        for held in [v for c, v in inner if c == method]:
            yield Cell(target, source, method, None if size is None else int(size), (*variant, *held), seed)


def member_cell_name(row: dict[str, Any], member: int) -> str:
    """The name of member ``member`` of the cell a result row belongs to (0: the cell itself)."""
    variant = tuple(member_variant(row, member))
    size = int(row["train_size"]) if str(row["train_size"]).strip() else None
    return Cell(row["target"], row["source"], row["method"], size, variant, int(row["seed"])).name


def _loggers(save_dir: Path, wandb_project: str | None, group: str, name: str) -> list[dict[str, Any]]:
    loggers = [csv_logger(save_dir)]
    if wandb_project:
        loggers.insert(0, {"class_path": "lightning.pytorch.loggers.WandbLogger",
                           "init_args": {"project": wandb_project, "group": group, "name": name, "save_dir": str(save_dir)}})
    return loggers


def cell_spec(config: StudyConfig, cell: Cell, sources: dict[str, Any], out: Path, single_process: bool = False) -> RunSpec:
    """The cell's run: its method's configs on its target, with its N, seed, source and grid values.

    ``single_process``: the run is an independent single-process trainer even inside a SLURM
    allocation (Lightning would otherwise take the allocation's tasks as its own processes).
    """
    overrides = dict(config.run_overrides)
    if cell.train_size is not None:
        overrides["data.init_args.train_size"] = cell.train_size
    overrides["data.init_args.seed"] = cell.seed
    overrides["seed_everything"] = cell.seed
    if cell.source != RECIPE_SOURCE:
        overrides["model.init_args.pretrained"] = sources[cell.source]
    variant = dict(cell.variant)
    member = variant.pop(MEMBER_KEY, 0)
    overrides.update(variant)
    if member:  # an ensemble member: the same subset, another training seed
        overrides["seed_everything"] = member_seed(cell.seed, int(member))
    overrides["trainer.callbacks+"] = [{"class_path": "smallmed.study.predictions.SaveTestProbabilities",
                                        "init_args": {"path": str(predictions_path(out, cell.name, cell.seed))}}]
    overrides["trainer.logger"] = _loggers(out / "logs" / cell.name / f"seed{cell.seed}", config.wandb_project, cell.name,
                                           f"seed{cell.seed}")
    if single_process:
        overrides["trainer.plugins"] = [CHECKPOINT_IO, SINGLE_PROCESS]
    elif config.executor == "slurm" and config.slurm.cell_devices > 1:  # one run over the task's devices, ranks from SLURM
        overrides["trainer.devices"] = config.slurm.cell_devices
    return RunSpec(config.method_configs(cell.method), config.target_data[cell.target], overrides)


def run_cell(config: StudyConfig, cell: Cell, sources: dict[str, Any], out: Path, single_process: bool = False) -> dict[str, Any]:
    """One target run; its result row (status ``ok`` or ``error``). A crash is recorded, not raised;
    SIGTERM and Ctrl-C stop the study."""
    row: dict[str, Any] = dict(cell.fields)
    stderr = _Tee(sys.stderr)
    wall = 0.0
    try:
        spec = cell_spec(config, cell, sources, out, single_process)
        with contextlib.redirect_stderr(stderr):
            metrics = run_spec(spec, lean=not config.keep_checkpoints)
        wall = metrics["wall_s"]
        row.update(status="ok", test_auroc=metrics.get("test/auroc"), test_acc=metrics.get("test/acc"),
                   test_f1=metrics.get("test/f1"), test_images=metrics.get("test/images"), val_auroc=metrics.get("val/best"),
                   val_auroc_late=metrics.get("val/late_mean"))
    except SystemExit as exit_:
        # The config parser exits with 2 after printing why; Lightning turns SIGTERM (SIGTERMException)
        # and Ctrl-C (exit 1) into SystemExit too, and those stop the study, not just this cell.
        if isinstance(exit_, SIGTERMException) or exit_.code != 2:
            raise
        row.update(status="error", error=("invalid run config: " + stderr.tail(400)).replace("\n", " "))
    except Exception as err:  # a crash in one cell is recorded; the study goes on
        row.update(status="error", error=f"{type(err).__name__}: {err}"[:500].replace("\n", " "))
        traceback.print_exc()
    finally:
        _finish_wandb()
    row["wall_s"] = round(wall, 2)
    if not config.keep_checkpoints:
        for ckpt_dir in (out / "logs" / cell.name / f"seed{cell.seed}").rglob("checkpoints"):
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    return row


def run_cells(config: StudyConfig, todo: list[Cell], sources: dict[str, Any], out: Path, part: Path,
              single_process: bool = False) -> None:
    """Run cells one after another, each row appended to ``part`` as soon as the cell ends."""
    for cell in todo:
        row = run_cell(config, cell, sources, out, single_process)
        if os.environ.get("SLURM_PROCID", "0") == "0":  # a multi-device cell: its rank 0 writes the row
            append_row(part, row)
        shown = f"{float(row['test_auroc']):.4f}" if row["status"] == "ok" else row["error"]
        print(f"[study] {cell.name}/seed{cell.seed}: {shown} ({row['wall_s']} s)", flush=True)


class _Tee(io.TextIOBase):
    """Writes through to a stream and keeps the tail, to put a parser's error message in the results."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.kept = ""

    def write(self, text: str) -> int:
        self.kept = (self.kept + text)[-4000:]
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def tail(self, n: int) -> str:
        return self.kept.strip()[-n:]


def _finish_wandb() -> None:
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# --------------------------------------------------------------------------------------- source stages
def source_stage_config(config: StudyConfig, name: str, out: Path) -> dict[str, Any]:
    """The resolved config of source stage ``name`` (its cache key is a hash of this, logger aside)."""
    stage = config.source_stages[name]
    overrides = {**stage.all_overrides,
                 "trainer.logger": _loggers(out / "logs" / "sources" / name, config.wandb_project, f"source/{name}", name)}
    return RunSpec(stage.configs, stage.data, overrides).config()


def source_checkpoint(config: StudyConfig, name: str, out: Path) -> Path:
    """Where source stage ``name``'s best checkpoint is cached: keyed by its settings, so a stage with
    other settings (epochs, recipe, data) is fitted anew rather than read from a stale file."""
    return out / "sources" / f"{name}-{config_digest(source_stage_config(config, name, out))}.ckpt"


def fit_source_stage(config: StudyConfig, name: str, out: Path, single_process: bool = False) -> Path:
    """Fit a source stage once and cache its best checkpoint (never tested: a source's test split may
    hold target images, as Kermany A's holds Kermany B's)."""
    from smallmed.cli import build_cli

    cached = source_checkpoint(config, name, out)
    if cached.is_file():
        return cached
    stage_config = source_stage_config(config, name, out)
    if single_process:
        stage_config.setdefault("trainer", {})["plugins"] = [CHECKPOINT_IO, SINGLE_PROCESS]
    print(f"[study] source stage {name!r}: fitting {config.source_stages[name].configs} on {config.source_stages[name].data}",
          flush=True)
    cli = build_cli(stage_config, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    if not best:
        raise RuntimeError(f"source stage {name!r} produced no checkpoint")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    shutil.copyfile(best, tmp)
    os.replace(tmp, cached)
    return cached
