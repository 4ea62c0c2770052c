"""``train.py study``: run what is missing of a study grid, then write what it says."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from smallmed.study import executors
from smallmed.study.config import StudyConfig, ensemble_name, load_study_config
from smallmed.study.plots import plot_learning_curves
from smallmed.study.results import append_row, merged_rows, read_rows, row_key, write_results
from smallmed.study.derived import auto_rows, blend_rows, earlier_derived_rows, ensemble_rows, is_auxiliary
from smallmed.study.runner import cells, member_cell_name, source_checkpoint
from smallmed.study.summary import paired_comparisons, recommend, summarize, write_csv


def run_study(config: StudyConfig) -> Path:
    """Run every cell without an ``ok`` result yet, then write the summaries, plots and recommendation."""
    os.environ.setdefault("WANDB_MODE", "offline")
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slurm = config.executor == "slurm"
    if slurm:
        executors.wait_for_earlier_jobs(out)
    done = {row_key(r) for r in merged_rows(out) if r["status"] == "ok"}
    grid = list(cells(config))
    todo = [c for c in grid if row_key(c.fields) not in done]
    print(f"[study] {len(grid) - len(todo)} runs done, {len(todo)} to run ({config.executor}), results in {out / 'results.csv'}",
          flush=True)
    sources, failed = _prepare_sources(config, out, {c.source for c in todo}, slurm)
    for cell in todo:
        if cell.source in failed:
            append_row(out / "parts" / "source-stages.csv", {**cell.fields, "status": "error", "error": failed[cell.source]})
    todo = [c for c in todo if c.source not in failed]
    if todo:
        if slurm:
            executors.run_slurm(config, todo, sources, out)
        else:
            executors.run_local(config, todo, sources, out, config.workers)
    write_results(out, merged_rows(out))
    write_reports(config, out)
    return out


def _prepare_sources(config: StudyConfig, out: Path, needed: set[str], slurm: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``pretrained`` value of every source the remaining cells need; source stages are fitted first
    (or read from their cache)."""
    sources: dict[str, Any] = dict(config.sources)
    stages = [name for name in config.source_stages if name in needed and name not in sources]
    missing = [name for name in stages if not source_checkpoint(config, name, out).is_file()]
    failed = {}
    if missing:
        failed = executors.fit_sources_slurm(config, missing, out) if slurm else executors.fit_sources_local(config, missing, out)
    for name in stages:
        if name not in failed:
            sources[name] = str(source_checkpoint(config, name, out))
    return sources, failed


def with_derived(config: StudyConfig, out: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a report covers: the runs (ensemble members inside their ensembles only) and the derived
    methods' rows (seed ensembles, blends, auto choices), which are also written to ``derived.csv`` (an
    ensemble or blend row whose runs' predictions are gone is kept from the earlier ``derived.csv``)."""
    averaged = ensemble_rows(out, rows, config.ensembles, member_cell_name)
    averaged += blend_rows(out, rows, config.blends, member_cell_name)
    bases = {**{ensemble_name(m, k): [m] for m, ks in config.ensembles.items() for k in ks}, **config.blends}
    averaged += earlier_derived_rows(read_rows(out / "derived.csv"), averaged, rows, bases)
    derived = averaged + auto_rows(rows, config.auto_choices)
    if derived:
        write_results(out, derived, name="derived.csv")
    return [r for r in rows if not is_auxiliary(r)] + derived


def write_reports(config: StudyConfig, out: Path) -> dict[str, Any]:
    """``summary.csv``, ``paired.csv``, ``recommendation.txt`` (and ``.csv``) and the learning curves; printed too."""
    rows = merged_rows(out)
    grid = {row_key(c.fields) for c in cells(config)}
    ok = {row_key(r) for r in rows if r["status"] == "ok"}
    missing = [key for key in grid if key not in ok]
    rows = [r for r in rows if row_key(r) in grid]  # results of cells the config no longer holds stay on disk, unreported
    rows = with_derived(config, out, rows)
    summary = summarize(rows)
    paired = paired_comparisons(rows, config.comparisons, [*config.methods, *config.derived_methods])
    advice = recommend(rows)
    write_csv(out / "summary.csv", summary)
    write_csv(out / "paired.csv", paired)
    write_csv(out / "recommendation.csv", advice)
    (out / "recommendation.txt").write_text("".join(a["sentence"] + "\n" for a in advice))
    plots = plot_learning_curves(summary, out) if summary else []
    errors = [r for r in rows if r["status"] != "ok"]
    print(f"[study] {len(rows) - len(errors)} runs ok, {len(errors)} failed, {len(missing)} not done; summary.csv, paired.csv, "
          f"recommendation.txt and {len(plots)} plot(s) in {out}", flush=True)
    for s in summary:
        variant = f" {s['variant']}" if s["variant"] else ""
        print(f"  {s['target']:<20} {s['source']:<10} {s['method']:<18} N={s['train_size']!s:<4}{variant} "
              f"AUC {s['auroc_mean']:.3f} [{s['auroc_low']:.3f}, {s['auroc_high']:.3f}] ({s['n_seeds']} seeds)")
    for p in paired:
        print(f"  {p['target']:<20} {p['compare']:<28} ({p['fixed']}) N={p['train_size']!s:<4} "
              f"diff {p['diff_mean']:+.3f} [{p['diff_low']:+.3f}, {p['diff_high']:+.3f}] ({p['n_pairs']} pairs)")
    if advice:
        print("[study] recommendation:")
        for a in advice:
            print(f"  {a['sentence']}")
    if missing:
        print(f"[study] {len(missing)} cell(s) have no result yet (failed, cancelled or never run): run the same command "
              "again to run only those", flush=True)
    return {"summary": summary, "paired": paired, "recommendation": advice, "plots": plots, "errors": errors,
            "missing": missing}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="train.py study", description="Run a smallmed study grid (see smallmed/study/__init__.py).")
    parser.add_argument("--config", required=True, help="study YAML file")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the summaries and plots from the results")
    args = parser.parse_args(argv)
    try:
        config = load_study_config(args.config)
        if args.report_only:
            write_reports(config, Path(config.out_dir))
        else:
            run_study(config)
    except (ValueError, FileNotFoundError, executors.ClusterUnavailableError) as err:
        print(f"train.py study: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


__all__ = ["main", "run_study", "write_reports"]
