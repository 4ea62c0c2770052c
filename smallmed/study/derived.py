"""Methods a study derives from the runs it already has: seed ensembles, blends and the ``auto`` choice.

**Seed ensembles** (``ensembles: {paper: [3, 5]}``): the test probabilities of K runs of a method on
the same training subset, averaged. Member 0 is the method's own cell; member k > 0 is a run with the
training seed ``seed + 1000 k`` (other head initialisation, batch order and augmentation draws) and the
same subset. Every cell saves its test probabilities, so K=3 and K=5 share their first three members.

**Blends** (``blends: {fe_paper: [feature_extractor, paper]}``): the test probabilities of different
methods' own runs on the same subset, averaged with equal weight: an ensemble of unlike models that
costs no run beyond its members, which ``auto`` runs anyway. Where one member wins at small N and the
other at larger N, the blend need not pick: nothing is chosen, so nothing can be chosen wrongly.

**auto** (``auto: {auto: [feature_extractor, paper]}``): per subset seed, the candidate whose selected
checkpoint scored the best *validation* AUC, tested as it is. The validation split is the one every
recipe's checkpoint selection already uses; the test split is never looked at for the choice. With
``{candidates: [...], inner_val: 0.3}`` the choice is made on extra runs of each candidate that hold
out 30% of the N training images as their val split (``data.init_args.inner_val``), so it sees the
training subset only, as a user with N labelled images and nothing else would; with ``inner_folds: k``
on k runs per candidate, each holding out one of k stratified folds of the subset, their scores
averaged, so every one of the N images validates once; ``with_val_split: true`` averages that inner
score with the candidate's own run's score on the val split, weighting the two equally (the folds
see every training image, the val split images no candidate trained on). ``by: late_mean``
compares each candidate's mean val AUC over the second half of its training instead of its best
epoch's, which the max over noisy epochs inflates more for a fine-tune than for a frozen body
(:mod:`smallmed.selection`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from smallmed import tasks
from smallmed.study.config import INNER_FOLD_KEY, INNER_FOLDS_KEY, INNER_VAL_KEY, AutoChoice, ensemble_name
from smallmed.study.predictions import predictions_path
from smallmed.study.results import row_key

MEMBER_KEY = "member"
INNER_KEYS = (INNER_VAL_KEY, INNER_FOLDS_KEY, INNER_FOLD_KEY)
MEMBER_SEED_STRIDE = 1000


def member_seed(seed: int, member: int) -> int:
    return seed + MEMBER_SEED_STRIDE * member


def is_member(row: dict[str, Any]) -> bool:
    """A member run k > 0 of an ensemble (reported inside its ensembles, not as a method of its own)."""
    return any(k == MEMBER_KEY for k, _ in variant_parts(row))


def is_auxiliary(row: dict[str, Any]) -> bool:
    """A run made only for a derived method: an ensemble member, or an auto choice's inner-validation run."""
    return any(k == MEMBER_KEY or k in INNER_KEYS for k, _ in variant_parts(row))


def headline_auroc(task: str, probs: torch.Tensor, targets: torch.Tensor) -> float:
    """The test AUC as the model reports it (:func:`smallmed.tasks.split_aurocs`)."""
    collection = tasks.metrics(task, 2 if task == "binary" else probs.shape[1], "")
    collection.update(probs, targets.long())
    return float(tasks.split_aurocs(collection.compute())[0])


def ensemble_rows(out: Path, rows: Iterable[dict[str, Any]], ensembles: dict[str, list[int]],
                  cell_name: Any) -> list[dict[str, Any]]:
    """A row per (ensemble, K, subset seed) whose K members all have saved predictions."""
    rows = [r for r in rows if r["status"] == "ok"]
    walls = {(r["target"], r["source"], r["method"], str(r["train_size"]), r.get("variant") or "", str(r["seed"])):
             float(r.get("wall_s") or 0) for r in rows}
    derived = []
    for row in rows:
        method = row["method"]
        if method not in ensembles or is_member(row):
            continue
        seed = int(row["seed"])
        members = [predictions_path(out, cell_name(row, 0), seed)]
        members += [predictions_path(out, cell_name(row, k), seed) for k in range(1, max(ensembles[method]))]
        for k in sorted(ensembles[method]):
            if not all(p.is_file() for p in members[:k]):
                continue
            auc = averaged_auroc(members[:k])
            wall = sum(walls.get((row["target"], row["source"], method, str(row["train_size"]),
                                  variant_text(member_variant(row, m)), str(seed)), 0.0)
                       for m in range(k))
            derived.append({**{f: row[f] for f in ("target", "source", "train_size", "variant", "seed")},
                            "method": ensemble_name(method, k), "status": "ok", "test_auroc": auc,
                            "test_images": row.get("test_images", ""), "wall_s": round(wall, 2),
                            "note": f"mean of {k} runs' test probabilities"})
    return derived


def averaged_auroc(paths: list[Path]) -> float:
    """The headline test AUC of the mean of several runs' saved test probabilities; the runs must have
    tested the same images in the same order (one subset's test split), else the mean means nothing."""
    saved = [torch.load(p, weights_only=True) for p in paths]
    for path, other in zip(paths[1:], saved[1:]):
        if other["task"] != saved[0]["task"] or not torch.equal(other["targets"], saved[0]["targets"]):
            raise ValueError(f"{path} holds the predictions of another test split than {paths[0]} "
                             "(other labels or task): they cannot be averaged")
    probs = torch.stack([s["probs"] for s in saved]).mean(0)
    return headline_auroc(saved[0]["task"], probs, saved[0]["targets"])


def blend_rows(out: Path, rows: Iterable[dict[str, Any]], blends: dict[str, list[str]], cell_name: Any) -> list[dict[str, Any]]:
    """A row per (blend, subset) whose members' own runs all have saved predictions: their test
    probabilities averaged with equal weight; its cost is the members' runs together."""
    runs: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok" and not is_auxiliary(r):
            key = tuple(str(r[f]) for f in ("target", "source", "train_size", "variant", "seed"))
            runs.setdefault(key, {})[r["method"]] = r
    derived = []
    for name, members in blends.items():
        for methods in runs.values():
            if not all(m in methods for m in members):
                continue
            paths = [predictions_path(out, cell_name(methods[m], 0), int(methods[m]["seed"])) for m in members]
            if not all(p.is_file() for p in paths):
                continue
            first = methods[members[0]]
            derived.append({**{f: first[f] for f in ("target", "source", "train_size", "variant", "seed")},
                            "method": name, "status": "ok", "test_auroc": averaged_auroc(paths),
                            "test_images": first.get("test_images", ""),
                            "wall_s": round(sum(float(methods[m].get("wall_s") or 0) for m in members), 2),
                            "note": f"mean of the test probabilities of {', '.join(members)}"})
    return derived


def earlier_derived_rows(earlier: Iterable[dict[str, Any]], computed: Iterable[dict[str, Any]],
                         rows: Iterable[dict[str, Any]], bases: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The prediction-averaging rows (ensembles, blends) of an earlier ``derived.csv`` that ``computed``
    lacks because their runs' predictions are no longer on disk (a study grown from its committed CSVs,
    whose runs folder is gone), for the subsets where every method in ``bases[derived method]`` still
    has its own cell among ``rows``: kept as they were, so that more seeds add to the derived methods'
    pairs instead of replacing them."""
    done = {row_key(r) for r in computed}
    cells = {row_key(r) for r in rows if r["status"] == "ok" and not is_member(r)}
    return [r for r in earlier
            if r["method"] in bases and r["status"] == "ok" and row_key(r) not in done
            and all(row_key({**r, "method": m}) in cells for m in bases[r["method"]])]


def auto_rows(rows: Iterable[dict[str, Any]], auto: dict[str, AutoChoice]) -> list[dict[str, Any]]:
    """A row per (auto method, subset seed) with every candidate done: the candidate of best score (its
    own run's, or the mean over its inner-validation runs), tested as its own run was."""
    runs: dict[tuple, dict[str, dict[str, Any]]] = {}
    inner: dict[tuple, dict[tuple[str, str], dict[str, Any]]] = {}
    for r in rows:
        if r["status"] != "ok" or is_member(r):
            continue
        parts = variant_parts(r)
        held = [kv for kv in parts if kv[0] in INNER_KEYS]
        key = (r["target"], r["source"], str(r["train_size"]), variant_text(kv for kv in parts if kv[0] not in INNER_KEYS),
               str(r["seed"]))
        if held:
            inner.setdefault(key, {})[(r["method"], variant_text(held))] = r
        else:
            runs.setdefault(key, {})[r["method"]] = r
    derived = []
    for name, choice in auto.items():
        variants = [variant_text(v) for v in choice.inner_variants]
        for key, methods in runs.items():
            if not all(c in methods for c in choice.candidates):
                continue
            # each candidate's estimates, each a list of runs: its inner runs (none: its own run), and
            # with_val_split its own run too
            judged = {}
            for c in choice.candidates:
                inner_runs = [inner.get(key, {}).get((c, v)) for v in variants]
                judged[c] = [inner_runs, [methods[c]]] if inner_runs and choice.with_val_split else [inner_runs or [methods[c]]]
            if any(r is None for estimates in judged.values() for found in estimates for r in found):
                continue
            scores = {c: _score(judged[c], choice.column) for c in choice.candidates}
            if any(v is None for v in scores.values()):
                continue
            chosen = max(choice.candidates, key=lambda c: scores[c])  # ties: the first listed
            picked = methods[chosen]
            derived.append({**{f: picked[f] for f in ("target", "source", "train_size", "variant", "seed")},
                            "method": name, "status": "ok", "test_auroc": picked["test_auroc"],
                            "test_acc": picked.get("test_acc", ""), "test_f1": picked.get("test_f1", ""),
                            "test_images": picked.get("test_images", ""), "val_auroc": _score(judged[chosen], "val_auroc"),
                            "val_auroc_late": _score(judged[chosen], "val_auroc_late"),
                            "note": f"chose {chosen} by {choice.judged_by}"})
    return derived


def _score(estimates: list[list[dict[str, Any]]], column: str) -> float | None:
    """An auto candidate's score: the mean over its estimates (the inner runs, the val split's run) of
    each estimate's mean over its runs; ``None`` if a run lacks the column."""
    means = [_mean_of(rows, column) for rows in estimates]
    return None if any(m is None for m in means) else sum(means) / len(means)


def _mean_of(rows: list[dict[str, Any]], column: str) -> float | None:
    """The mean of a column over runs (one run, or an auto choice's inner folds); ``None`` if any lacks it."""
    values = [r.get(column) for r in rows]
    if any(v in ("", None) for v in values):
        return None
    return sum(float(v) for v in values) / len(values)


def variant_text(parts: Iterable[tuple[str, Any]]) -> str:
    """A cell's variant as results.csv holds it (``key=value;key=value``); ``variant_parts`` reads it back."""
    return ";".join(f"{k}={v}" for k, v in parts)


def variant_parts(row: dict[str, Any]) -> list[tuple[str, str]]:
    """The (key, value) pairs of a row's variant text (:func:`variant_text` writes it)."""
    return [tuple(part.split("=", 1)) for part in str(row.get("variant") or "").split(";") if "=" in part]


def member_variant(row: dict[str, Any], member: int) -> list[tuple[str, str]]:
    """The variant of ensemble member ``member`` of the cell ``row`` belongs to (0: the cell itself)."""
    return [kv for kv in variant_parts(row) if kv[0] != MEMBER_KEY] + ([(MEMBER_KEY, str(member))] if member else [])
