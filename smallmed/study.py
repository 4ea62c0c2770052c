"""The study: learning curves over training-set size, recipe and pretraining source, with many seeds.

``python train.py study --config configs/study_breastmnist.yaml`` runs the grid

    target x N x method x source x seed

where every cell is a normal ``train.py`` run (a method is a recipe config file, a source is the
weights the target run starts from), in this one process. Sources may be made by a *source stage*:
a run on another data set (same body part, another body part) whose best checkpoint is cached and
then fine-tuned on the target -- targeted transfer.

Results go to ``<out_dir>/results.csv`` (one row per run, appended as it finishes, so a study is
resumable: finished cells are skipped, a crash in one cell is recorded and the rest go on), then
``summary.csv`` (mean and 95% interval per cell), ``paired.csv`` (paired differences over the same
subset seeds) and one learning-curve plot per target.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import difflib
import io
import itertools
import json
import math
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from smallmed.stats import mean_ci, paired_difference

RESULT_FIELDS = [
    "target", "source", "method", "train_size", "seed", "status",
    "test_auroc", "test_acc", "test_f1", "wall_s", "error",
]


@dataclass
class SourceStage:
    """Pretrain on a source data set; its best checkpoint (by source val AUC) becomes a source."""

    config: str
    data: str
    args: list[str] = field(default_factory=list)


@dataclass
class StudyConfig:
    """A study grid. Paths are relative to the working directory, as in ``train.py`` configs.

    Attributes:
        targets: ``name -> .npz file`` of each target data set.
        sizes: training-set sizes N (balanced subsets, nested for one seed).
        seeds: a count (seeds 0..n-1) or an explicit list; the subset seed and the training seed.
        methods: ``name -> recipe config file``.
        sources: ``name -> pretrained`` value for target cells (a weights file, ``false``, ``true``).
        source_stages: ``name -> SourceStage``; each becomes a source named ``name``.
        overrides: flags added to every target run (e.g. ``["--trainer.max_epochs", "20"]``).
        comparisons: pairs ``[a, b]`` of method or source names to compare, paired by seed.
        out_dir: where results, logs and cached source checkpoints go.
        wandb_project: when set, every run also logs to W&B, grouped by cell.
        keep_checkpoints: write and keep each target run's checkpoints and report pictures (they add
            up: about 40 MB a run). Off, a cell keeps its best weights in memory and draws no pictures,
            with the same selection and the same test metrics (``fit_and_test(study_cell=True)``).
        workers: cells run at once, each worker a process of its own that runs many cells in turn
            (start-up and warm-up paid once per worker). Several workers keep one GPU busy when one
            small run alone is bound by kernel launches; on the CPU they share its cores.
    """

    targets: dict[str, str]
    sizes: list[int]
    methods: dict[str, str]
    sources: dict[str, Any] = field(default_factory=dict)
    source_stages: dict[str, SourceStage] = field(default_factory=dict)
    seeds: int | list[int] = 5
    overrides: list[str] = field(default_factory=list)
    comparisons: list[list[str]] = field(default_factory=list)
    out_dir: str = "runs/study"
    wandb_project: str | None = None
    keep_checkpoints: bool = False
    workers: int = 1

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    @property
    def source_names(self) -> list[str]:
        return list(self.sources) + [s for s in self.source_stages if s not in self.sources]


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and check a study YAML file; unknown keys and names fail with the closest valid key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study config not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a study config is a mapping of keys, got {type(raw).__name__}")
    known = {f.name for f in fields(StudyConfig)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{path}: unknown study key {key!r}.{hint} Known keys: {', '.join(sorted(known))}")
    missing = [k for k in ("targets", "sizes", "methods") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    stages = {}
    for name, stage in (raw.get("source_stages") or {}).items():
        stage_known = {f.name for f in fields(SourceStage)}
        bad = [k for k in stage if k not in stage_known]
        if bad:
            raise ValueError(f"{path}: source_stages.{name} has unknown key(s) {bad}; known: {sorted(stage_known)}")
        stages[name] = SourceStage(**stage)
    config = StudyConfig(**{**raw, "source_stages": stages})
    if not config.sources and not config.source_stages:
        raise ValueError(f"{path}: give at least one source (sources or source_stages)")
    names = set(config.methods) | set(config.source_names)
    for pair in config.comparisons:
        if len(pair) != 2 or any(p not in names for p in pair):
            raise ValueError(f"{path}: comparison {pair} must name two methods or two sources of {sorted(names)}")
    for name, method in config.methods.items():
        if not Path(method).is_file():
            raise FileNotFoundError(f"{path}: method {name!r}: recipe config not found: {method}")
    return config


# ------------------------------------------------------------------------------------------------ runs
def _cell_key(row: dict[str, Any]) -> tuple:
    return (row["target"], row["source"], row["method"], int(row["train_size"]), int(row["seed"]))


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _append(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in RESULT_FIELDS})


def _logger_flag(save_dir: Path, wandb_project: str | None, group: str, name: str) -> list[str]:
    loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(save_dir), "name": ""}}]
    if wandb_project:
        loggers.insert(0, {
            "class_path": "lightning.pytorch.loggers.WandbLogger",
            "init_args": {"project": wandb_project, "group": group, "name": name, "save_dir": str(save_dir)},
        })
    return ["--trainer.logger", json.dumps(loggers)]


def run_source_stage(config: StudyConfig, name: str, out: Path) -> Path:
    """Fit a source stage once and cache its best checkpoint; later studies reuse the cache."""
    from smallmed.cli import build_cli

    stage = config.source_stages[name]
    cached = out / "sources" / f"{name}.ckpt"
    if cached.is_file():
        return cached
    log_dir = out / "logs" / "sources" / name
    args = ["--config", stage.config, "--data.init_args.path", stage.data, *stage.args,
            *_logger_flag(log_dir, config.wandb_project, f"source/{name}", name)]
    print(f"[study] source stage {name!r}: fitting {stage.config} on {stage.data}", flush=True)
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)  # never tested here: a source's test split may hold target images
    best = cli.trainer.checkpoint_callback.best_model_path if cli.trainer.checkpoint_callback else ""
    if not best:
        raise RuntimeError(f"source stage {name!r} produced no checkpoint")
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, cached)
    return cached


def run_cell(config: StudyConfig, out: Path, target: str, source: str, pretrained: Any, method: str, size: int, seed: int) -> dict[str, Any]:
    """One target run; returns its result row (status ``ok`` or ``error``)."""
    from smallmed.cli import fit_and_test

    cell = f"{target}/{source}/{method}/N{size}"
    log_dir = out / "logs" / target / source / method / f"N{size}" / f"seed{seed}"
    args = ["--config", config.methods[method], "--data.init_args.path", config.targets[target],
            "--data.init_args.train_size", str(size), "--data.init_args.seed", str(seed),
            "--seed_everything", str(seed), "--model.init_args.pretrained", _flag_value(pretrained),
            *_logger_flag(log_dir, config.wandb_project, cell, f"seed{seed}"), *config.overrides]
    row: dict[str, Any] = {"target": target, "source": source, "method": method, "train_size": size, "seed": seed}
    start = time.perf_counter()
    stderr = _Tee(sys.stderr)
    try:
        with contextlib.redirect_stderr(stderr):
            metrics = fit_and_test(args, study_cell=not config.keep_checkpoints)
        row.update(status="ok", test_auroc=metrics.get("test/auroc"), test_acc=metrics.get("test/acc"),
                   test_f1=metrics.get("test/f1"))
    except SystemExit as exit_:
        # The config parser exits with 2 after printing why; Lightning turns SIGTERM (SIGTERMException)
        # and Ctrl-C (exit 1) into SystemExit too, and those stop the study, not just this cell.
        if isinstance(exit_, SIGTERMException) or exit_.code != 2:
            raise
        row.update(status="error", error=("invalid run config: " + stderr.tail(400)).replace("\n", " "))
    except Exception as err:  # a crash in one cell is recorded; the study goes on
        row.update(status="error", error=f"{type(err).__name__}: {err}"[:500])
        traceback.print_exc()
    finally:
        _finish_wandb()
    row["wall_s"] = round(time.perf_counter() - start, 2)
    if not config.keep_checkpoints:
        for ckpt_dir in log_dir.rglob("checkpoints"):
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    return row


class _Tee(io.TextIOBase):
    """Writes through to a stream and keeps the tail, to put a parser's error message in results.csv."""

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


def _flag_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:  # pragma: no cover - wandb is a dependency
        pass


def cells(config: StudyConfig) -> Iterable[tuple[str, str, str, int, int]]:
    """Cells in the order they run: seeds innermost, so early results already cover every cell."""
    return itertools.product(config.targets, config.source_names, config.methods, config.sizes, config.seed_list)


def run_study(config: StudyConfig) -> Path:
    """Run every cell not yet in ``results.csv``, then write the summaries and plots."""
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.csv"
    done = {_cell_key(r) for r in read_results(results_path) if r["status"] == "ok"}
    todo = [c for c in cells(config) if c not in done]
    print(f"[study] {len(done)} runs done, {len(todo)} to run, results in {results_path}", flush=True)
    sources, failed = _prepare_sources(config, out, {c[1] for c in todo})
    for cell in todo:
        if cell[1] in failed:
            _append(results_path, {**_cell_fields(cell), "status": "error", "error": failed[cell[1]]})
    todo = [c for c in todo if c[1] not in failed]
    workers = max(1, min(config.workers, len(todo)))
    if workers == 1:
        _run_cells(config, out, sources, todo)
    else:
        _run_in_workers(config, out, sources, todo, workers)
    write_reports(config, out)
    return out


def _cell_fields(cell: tuple) -> dict[str, Any]:
    return dict(zip(("target", "source", "method", "train_size", "seed"), cell))


def _prepare_sources(config: StudyConfig, out: Path, needed: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Weights of every source the remaining cells need; source stages are fitted (or read from cache) first."""
    sources, failed = dict(config.sources), {}
    for name in config.source_names:
        if name in sources or name not in needed:
            continue
        try:
            sources[name] = str(run_source_stage(config, name, out))
        except Exception as err:
            traceback.print_exc()
            failed[name] = f"source stage failed: {type(err).__name__}: {err}"[:500]
    return sources, failed


def _run_cells(config: StudyConfig, out: Path, sources: dict[str, Any], todo: list[tuple], lock=None) -> None:
    results_path = out / "results.csv"
    for target, source, method, size, seed in todo:
        row = run_cell(config, out, target, source, sources[source], method, size, seed)
        with lock if lock is not None else contextlib.nullcontext():
            _append(results_path, row)
        auc = row.get("test_auroc")
        shown = f"{float(auc):.4f}" if row["status"] == "ok" else row["error"]
        print(f"[study] {target}/{source}/{method}/N{size}/seed{seed}: {shown} ({row['wall_s']} s)", flush=True)


def _worker(config: StudyConfig, out: Path, sources: dict[str, Any], todo: list[tuple], lock, threads: int) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    _run_cells(config, out, sources, todo, lock)


def _run_in_workers(config: StudyConfig, out: Path, sources: dict[str, Any], todo: list[tuple], workers: int) -> None:
    """Deal the cells round-robin to ``workers`` fresh processes (spawned: safe with CUDA) and wait for them."""
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn")
    lock = context.Lock()
    # On the CPU the workers share its cores; on a GPU the host side of each needs only one or two.
    threads = max(1, (os.cpu_count() or 1) // workers) if not torch.cuda.is_available() else 2
    shards = [todo[i::workers] for i in range(workers)]
    processes = [context.Process(target=_worker, args=(config, out, sources, shard, lock, threads)) for shard in shards]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    crashed = [p.exitcode for p in processes if p.exitcode]
    if crashed:
        print(f"[study] {len(crashed)} worker(s) exited with codes {crashed}; their unfinished cells are not in results.csv "
              "and run again next time", flush=True)


# --------------------------------------------------------------------------------------------- reports
def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean test AUC and its 95% interval per (target, source, method, N)."""
    groups: dict[tuple, list[float]] = {}
    walls: dict[tuple, list[float]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        key = (r["target"], r["source"], r["method"], int(r["train_size"]))
        groups.setdefault(key, []).append(float(r["test_auroc"]))
        walls.setdefault(key, []).append(float(r["wall_s"]))
    out = []
    for key in sorted(groups):
        mean, low, high = mean_ci(groups[key])
        out.append({"target": key[0], "source": key[1], "method": key[2], "train_size": key[3], "n_seeds": len(groups[key]),
                    "auroc_mean": mean, "auroc_low": low, "auroc_high": high, "wall_s_mean": sum(walls[key]) / len(walls[key])})
    return out


def paired_comparisons(rows: list[dict[str, Any]], pairs: list[list[str]], methods: Iterable[str]) -> list[dict[str, Any]]:
    """For each pair ``[a, b]`` (two methods, or two sources): mean of ``a - b`` over the same seeds, per cell."""
    methods = set(methods)
    by_cell: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["status"] == "ok":
            key = (r["target"], r["source"], r["method"], int(r["train_size"]))
            by_cell.setdefault(key, {})[int(r["seed"])] = float(r["test_auroc"])
    out = []
    for a, b in pairs:
        axis = "method" if a in methods else "source"
        for key, a_vals in sorted(by_cell.items()):
            target, source, method, size = key
            if (method if axis == "method" else source) != a:
                continue
            other = (target, source, b, size) if axis == "method" else (target, b, method, size)
            if other not in by_cell:
                continue
            mean, low, high, n = paired_difference(a_vals, by_cell[other])
            fixed = source if axis == "method" else method
            out.append({"target": target, "compare": f"{a} - {b}", "axis": axis, "fixed": fixed, "train_size": size,
                        "n_pairs": n, "diff_mean": mean, "diff_low": low, "diff_high": high})
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        path.write_text("")
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_learning_curves(summary: list[dict[str, Any]], out: Path) -> list[Path]:
    """AUC against N per target, one line per source x method, 95% intervals shaded (as the paper's figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for target in sorted({s["target"] for s in summary}):
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        rows = [s for s in summary if s["target"] == target]
        lines = sorted({(s["source"], s["method"]) for s in rows})
        for i, (source, method) in enumerate(lines):
            line = sorted((s for s in rows if s["source"] == source and s["method"] == method), key=lambda s: s["train_size"])
            dodge = 1 + 0.04 * (i - (len(lines) - 1) / 2)  # side by side on the log axis, so bars do not hide each other
            xs = [s["train_size"] * dodge for s in line]
            ys = [s["auroc_mean"] for s in line]
            lows = [s["auroc_low"] for s in line]
            highs = [s["auroc_high"] for s in line]
            if any(math.isnan(v) for v in lows):
                ax.plot(xs, ys, marker="o", label=f"{method} ({source})")
                continue
            # Bars show each interval even where a curve has a single N; the band joins them.
            yerr = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
            bars = ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, label=f"{method} ({source})")
            ax.fill_between(xs, lows, highs, alpha=0.15, color=bars[0].get_color())
        ax.set_xscale("log")
        ax.set_xticks(sorted({s["train_size"] for s in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
        sizes = [s["train_size"] for s in rows]
        ax.set_xlim(min(sizes) * 0.75, max(sizes) * 1.33)
        ax.set_xlabel("training images N (balanced)")
        ax.set_ylabel("test ROC AUC (mean, 95% interval)")
        ax.set_title(target)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"learning_curve_{target}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def write_reports(config: StudyConfig, out: Path) -> dict[str, Any]:
    rows = read_results(out / "results.csv")
    summary = summarize(rows)
    paired = paired_comparisons(rows, config.comparisons, config.methods)
    _write_csv(out / "summary.csv", summary)
    _write_csv(out / "paired.csv", paired)
    plots = plot_learning_curves(summary, out) if summary else []
    errors = [r for r in rows if r["status"] != "ok"]
    print(f"[study] {len(rows) - len(errors)} runs ok, {len(errors)} failed; summary.csv, paired.csv and "
          f"{len(plots)} plot(s) in {out}", flush=True)
    for s in summary:
        print(f"  {s['target']:<28} {s['source']:<10} {s['method']:<18} N={s['train_size']:<4} "
              f"AUC {s['auroc_mean']:.3f} [{s['auroc_low']:.3f}, {s['auroc_high']:.3f}] ({s['n_seeds']} seeds)")
    for p in paired:
        print(f"  {p['target']:<28} {p['compare']:<28} ({p['fixed']}) N={p['train_size']:<4} "
              f"diff {p['diff_mean']:+.3f} [{p['diff_low']:+.3f}, {p['diff_high']:+.3f}] ({p['n_pairs']} pairs)")
    return {"summary": summary, "paired": paired, "plots": plots, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="train.py study", description="Run a smallmed study grid (see smallmed/study.py).")
    parser.add_argument("--config", required=True, help="study YAML file")
    parser.add_argument("--report-only", action="store_true", help="only rewrite summaries and plots from results.csv")
    args = parser.parse_args(argv)
    config = load_study_config(args.config)
    if args.report_only:
        write_reports(config, Path(config.out_dir))
    else:
        run_study(config)
