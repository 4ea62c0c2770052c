"""The study config: targets and sources as data sections, methods as recipe configs, any key as a grid axis.

A study YAML file reads like this (every section but ``targets`` and ``methods`` is optional)::

    out_dir: runs/study/my_scans
    targets:                      # name -> a data section, or a bare npz file / CSV manifest / folder
      scans:
        class_path: smallmed.datamodules.ManifestDataModule
        init_args: {path: export/labels.csv, patient_column: patient_id}
    methods: {paper: configs/paper_recipe.yaml, feature_extractor: configs/feature_extractor.yaml}
    sizes: [50, 100, 200]         # the N axis: data.init_args.train_size
    seeds: 20                     # 0..19, or a list; the subset seed and the training seed
    sources: {imagenet: weights/tf_efficientnet_lite0.safetensors}   # name -> model.init_args.pretrained
    source_stages: {chest: {config: configs/paper_recipe.yaml, data: chest.npz, overrides: {trainer.max_epochs: 30}}}
    grid: {model.init_args.backbone: [tf_efficientnet_lite0, resnet18]}   # more axes: any config key
    overrides: {trainer.max_epochs: 20}                                   # every run
    comparisons: [[paper, feature_extractor]]
    ensembles: {paper: [3, 5]}    # derived methods paper_x3, paper_x5: K runs' test probabilities averaged
    blends: {fe_paper: [feature_extractor, paper]}   # the methods' own runs' test probabilities averaged
    auto: {auto: [feature_extractor, paper]}   # per seed, the candidate of best val AUC; or chosen on
                                  # the training subset only: {candidates: [...], inner_val: 0.3}, or by
                                  # the second half's mean val AUC: {candidates: [...], by: late_mean};
                                  # inner_folds: 3 validates on 3 folds of the training subset instead
    executor: local               # or slurm (see `slurm:`)
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from smallmed.study.runs import data_section, flags_to_overrides, read_mapping

Executor = Literal["local", "slurm"]


@dataclass
class SourceStage:
    """Pretrain on a source data set; its best checkpoint (by source val AUC) becomes a source.

    Attributes:
        config: recipe config file(s) of the source run.
        data: the source's data section, or a bare npz file / CSV manifest / folder.
        overrides: ``{dotted key: value}`` for the source run (``args``: the older flag-list form).
    """

    config: str | list[str]
    data: str | dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    @property
    def configs(self) -> list[str]:
        return [self.config] if isinstance(self.config, str) else list(self.config)

    @property
    def all_overrides(self) -> dict[str, Any]:
        return {**flags_to_overrides(self.args), **self.overrides}


@dataclass
class SlurmSettings:
    """How the ``slurm`` executor asks for resources (submitit's ``slurm_*`` parameters).

    Attributes:
        partition: the partition (``None``: the cluster's default).
        time_min: time limit of one array task, in minutes.
        cpus_per_task, gpus_per_task, mem_gb: resources of one array task.
        tasks: array tasks to deal the cells to (``None``: one per cell, at most 1000).
        array_parallelism: array tasks running at once.
        workers_per_task: cells one array task runs at once (several small runs keep one GPU busy).
        cell_devices: above 1, each array task runs one cell over this many devices, with Lightning's
            own SLURM handling (one process per device); at 1, every cell is an independent
            single-process trainer (Lightning's ``LightningEnvironment``).
        setup: shell lines run before each task (``module load ...``, ``source venv/bin/activate``).
        additional: further sbatch parameters, e.g. ``{account: my_lab, qos: short}``.
    """

    partition: str | None = None
    time_min: int = 60
    cpus_per_task: int = 2
    gpus_per_task: int = 0
    mem_gb: float | None = None
    tasks: int | None = None
    array_parallelism: int = 32
    workers_per_task: int = 1
    cell_devices: int = 1
    setup: list[str] = field(default_factory=list)
    additional: dict[str, Any] = field(default_factory=dict)


INNER_VAL_KEY = "data.init_args.inner_val"
INNER_FOLDS_KEY = "data.init_args.inner_folds"
INNER_FOLD_KEY = "data.init_args.inner_fold"
AUTO_KEYS = ("candidates", "inner_val", "inner_folds", "with_val_split", "by")
AUTO_CRITERIA = {"best": "val_auroc", "late_mean": "val_auroc_late"}  # what an auto choice compares -> its column


@dataclass(frozen=True)
class AutoChoice:
    """An ``auto`` method: its candidates, where it validates them (``inner_val``: a held-out fraction of
    the training subset; ``inner_folds``: k folds of it, the score averaged over the folds; neither: the
    data's val split; ``with_val_split``: the inner score and the val split's, averaged with equal
    weight, as two independent estimates of one quantity), and what it compares: ``best`` (the
    selected checkpoint's val AUC) or ``late_mean`` (the mean val AUC over the second half of training,
    which the max-over-epochs selection has not inflated; :mod:`smallmed.selection`)."""

    candidates: tuple[str, ...]
    inner_val: float | None = None
    inner_folds: int | None = None
    by: str = "best"
    with_val_split: bool = False

    @classmethod
    def of(cls, spec: list[str] | dict[str, Any]) -> AutoChoice:
        if isinstance(spec, dict):
            unknown = set(spec) - set(AUTO_KEYS)
            if unknown:
                raise ValueError(f"unknown key(s) {sorted(unknown)}; an auto choice takes {', '.join(AUTO_KEYS)}")
            inner, by = spec.get("inner_val"), spec.get("by", "best")
            if by not in AUTO_CRITERIA:
                raise ValueError(f"by: {by!r} is not a criterion; choose one of {sorted(AUTO_CRITERIA)}")
            folds = spec.get("inner_folds")
            if folds is not None and (not isinstance(folds, int) or folds < 2):
                raise ValueError(f"inner_folds is a number of folds, 2 or more; got {folds!r}")
            if folds is not None and inner is not None:
                raise ValueError("give inner_val (one held-out fraction) or inner_folds (k folds), not both")
            with_val = spec.get("with_val_split", False)
            if not isinstance(with_val, bool):
                raise ValueError(f"with_val_split is true or false; got {with_val!r}")
            if with_val and inner is None and folds is None:
                raise ValueError("with_val_split adds the val split to an inner validation; give inner_val or inner_folds too")
            return cls(tuple(spec.get("candidates") or ()), None if inner is None else float(inner), folds, by, with_val)
        return cls(tuple(spec or ()))

    @property
    def inner_variants(self) -> list[tuple[tuple[str, Any], ...]]:
        """The grid values of the extra runs each candidate needs per cell (none for the val split)."""
        if self.inner_val is not None:
            return [((INNER_VAL_KEY, self.inner_val),)]
        if self.inner_folds is not None:
            return [((INNER_FOLDS_KEY, self.inner_folds), (INNER_FOLD_KEY, f)) for f in range(self.inner_folds)]
        return []

    @property
    def column(self) -> str:
        """The results.csv column the choice compares."""
        return AUTO_CRITERIA[self.by]

    @property
    def judged_by(self) -> str:
        """What the choice compared, in words (the derived row's note)."""
        words = {"best": "val AUC", "late_mean": "late-mean val AUC"}[self.by]
        if self.inner_val is not None:
            words = f"{words} on {self.inner_val:g} of the training subset"
        elif self.inner_folds is not None:
            words = f"{words} over {self.inner_folds} folds of the training subset"
        return f"{words} and on the val split, equally weighted" if self.with_val_split else words


@dataclass
class StudyConfig:
    """A study grid: target x source x method x N x grid axes x seed. Paths are relative to the working
    directory, as in ``train.py`` configs. See the module docstring for the file format.

    Attributes:
        targets: ``name -> data section`` (or a bare location) of each target data set.
        methods: ``name -> recipe config file`` (or a list of files, merged in order).
        sizes: training-set sizes N (balanced subsets, nested for one seed); ``None``: each recipe's own.
        seeds: a count (seeds 0..n-1), an explicit list, or ``{N: count or list}`` per size.
        sources: ``name -> model.init_args.pretrained`` value; none given: each recipe's own weights.
        source_stages: ``name -> SourceStage``; each becomes a source named ``name``.
        grid: further axes, ``{dotted config key: [values]}``.
        overrides: ``{dotted key: value}`` for every target run (or the older list of flags).
        comparisons: pairs ``[a, b]`` of method or source names to compare, paired by seed.
        ensembles: ``method -> [K, ...]``: derived methods ``<method>_x<K>``, the mean test probabilities of
            K runs on each subset (:mod:`smallmed.study.derived`); runs K-1 extra members per cell.
        blends: ``name -> [method, ...]``: a derived method, the mean test probabilities of those
            methods' own runs on each subset (no extra runs).
        auto: ``name -> [candidate methods]``: a derived method that takes, per subset seed, the
            candidate whose selected checkpoint had the best validation AUC (no extra runs); or
            ``name -> {candidates: [...], inner_val: 0.3, by: late_mean}``: with ``inner_val`` the choice
            is made on extra runs that hold out that fraction of the N training images as their val
            split, so it sees the training subset only (``inner_folds: k`` instead: k runs per
            candidate, each holding out one of k folds, their scores averaged); ``with_val_split: true``
            averages that inner score with the candidate's own run's on the val split; ``by: late_mean``
            compares the mean val AUC of the second half of training instead of the best epoch's.
            The chosen candidate's own run is what is tested.
        out_dir: where results, logs and cached source checkpoints go.
        wandb_project: when set, every run also logs to W&B, grouped by cell.
        keep_checkpoints: keep each run's checkpoints and report pictures (about 40 MB a run); off, a
            cell keeps its best weights in memory, with the same selection and test metrics.
        workers: cells run at once on this machine, each worker a process of its own (``local``).
        executor: ``local`` (this machine) or ``slurm`` (a job array through submitit).
        slurm: the ``slurm`` executor's resources.
    """

    targets: dict[str, Any]
    methods: dict[str, str | list[str]]
    sizes: list[int] | None = None
    seeds: int | list[int] | dict[int, int | list[int]] = 5
    sources: dict[str, Any] = field(default_factory=dict)
    source_stages: dict[str, SourceStage] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    overrides: dict[str, Any] | list[str] = field(default_factory=dict)
    comparisons: list[list[str]] = field(default_factory=list)
    ensembles: dict[str, list[int]] = field(default_factory=dict)
    blends: dict[str, list[str]] = field(default_factory=dict)
    auto: dict[str, list[str] | dict[str, Any]] = field(default_factory=dict)
    out_dir: str = "runs/study"
    wandb_project: str | None = None
    keep_checkpoints: bool = False
    workers: int = 1
    executor: Executor = "local"
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    @property
    def seed_list(self) -> list[int]:
        """Every seed of the study (of any N)."""
        return sorted({s for n in (self.sizes or [None]) for s in self.seeds_for(n)})

    def seeds_for(self, size: int | None) -> list[int]:
        """The seeds run at training-set size ``size``: ``seeds`` may map N to a count or list (large N
        costs more per run and varies less between subsets)."""
        seeds = self.seeds
        if isinstance(seeds, dict):
            if size not in seeds and str(size) not in seeds:
                raise ValueError(f"seeds gives no count for N={size}: {seeds}")
            seeds = seeds[size] if size in seeds else seeds[str(size)]
        return list(range(seeds)) if isinstance(seeds, int) else list(seeds)

    @property
    def source_names(self) -> list[str]:
        names = list(self.sources) + [s for s in self.source_stages if s not in self.sources]
        return names or [RECIPE_SOURCE]

    @property
    def target_data(self) -> dict[str, dict[str, Any]]:
        return {name: data_section(data) for name, data in self.targets.items()}

    @property
    def run_overrides(self) -> dict[str, Any]:
        return flags_to_overrides(self.overrides) if isinstance(self.overrides, list) else dict(self.overrides)

    @property
    def derived_methods(self) -> list[str]:
        """Methods made from other runs' results: ensembles, blends, then auto choices."""
        return [ensemble_name(m, k) for m, ks in self.ensembles.items() for k in ks] + list(self.blends) + list(self.auto)

    @property
    def auto_choices(self) -> dict[str, AutoChoice]:
        return {name: AutoChoice.of(spec) for name, spec in self.auto.items()}

    def method_configs(self, method: str) -> list[str]:
        files = self.methods[method]
        return [files] if isinstance(files, str) else list(files)


def ensemble_name(method: str, k: int) -> str:
    """The derived method of ``method``'s K-run seed ensembles."""
    return f"{method}_x{k}"


RECIPE_SOURCE = "recipe"
"""The source name of cells that keep the recipe's own ``pretrained`` (a study without sources)."""


def _check_keys(where: str, raw: dict[str, Any], cls: type) -> None:
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown key {key!r}.{hint} Known keys: {', '.join(sorted(known))}")


def load_study_config(path: str | Path) -> StudyConfig:
    """Read and check a study YAML file; unknown keys and names fail with the closest valid key."""
    path = Path(path)
    raw = read_mapping(path, "study config")
    _check_keys(f"{path}: study", raw, StudyConfig)
    missing = [k for k in ("targets", "methods") if k not in raw]
    if missing:
        raise ValueError(f"{path}: missing required key(s) {missing}")
    stages = {}
    for name, stage in (raw.get("source_stages") or {}).items():
        _check_keys(f"{path}: source_stages.{name}", stage, SourceStage)
        stages[name] = SourceStage(**stage)
    slurm = raw.get("slurm") or {}
    _check_keys(f"{path}: slurm", slurm, SlurmSettings)
    config = StudyConfig(**{**raw, "source_stages": stages, "slurm": SlurmSettings(**slurm)})
    check_study_config(config, str(path))
    return config


def check_study_config(config: StudyConfig, where: str = "study") -> None:
    """Names, files and values that can be checked before anything runs."""
    if config.executor not in ("local", "slurm"):
        raise ValueError(f"{where}: executor must be 'local' or 'slurm', got {config.executor!r}")
    if not config.targets or not config.methods:
        raise ValueError(f"{where}: give at least one target and one method")
    for name, data in config.targets.items():
        try:
            data_section(data)
        except ValueError as err:
            raise ValueError(f"{where}: target {name!r}: {err}") from err
    for method, sizes in config.ensembles.items():
        if method not in config.methods:
            raise ValueError(f"{where}: ensembles: {method!r} is not a method of the study ({sorted(config.methods)})")
        if not isinstance(sizes, list) or not sizes or any(not isinstance(k, int) or k < 2 for k in sizes):
            raise ValueError(f"{where}: ensembles.{method} needs a list of ensemble sizes K >= 2, got {sizes!r}")
    for name, members in config.blends.items():
        if name in config.methods:
            raise ValueError(f"{where}: blends: {name!r} is already a method; give the blend another name")
        unknown = [m for m in members if m not in config.methods] if isinstance(members, list) else []
        if not isinstance(members, list) or len(set(members)) < 2 or len(set(members)) != len(members) or unknown:
            raise ValueError(f"{where}: blends.{name} needs a list of at least two different methods of the study, got "
                             f"{members!r}" + (f" ({unknown} unknown; methods: {sorted(config.methods)})" if unknown else ""))
    for name, spec in config.auto.items():
        if name in config.methods or name in config.blends:
            raise ValueError(f"{where}: auto: {name!r} is already a method or blend; give the auto choice another name")
        try:
            choice = AutoChoice.of(spec)
        except ValueError as err:
            raise ValueError(f"{where}: auto.{name}: {err}") from err
        unknown = [c for c in choice.candidates if c not in config.methods]
        if len(choice.candidates) < 2 or unknown:
            raise ValueError(f"{where}: auto.{name} needs a list of at least two methods of the study, got {spec!r}"
                             + (f" ({unknown} unknown; methods: {sorted(config.methods)})" if unknown else ""))
        if choice.inner_val is not None and not 0 < choice.inner_val < 1:
            raise ValueError(f"{where}: auto.{name}.inner_val is a fraction in (0, 1), got {choice.inner_val}")
    names = set(config.methods) | set(config.source_names) | set(config.derived_methods)
    for pair in config.comparisons:
        if len(pair) != 2 or any(p not in names for p in pair):
            raise ValueError(f"{where}: comparison {pair} must name two methods or two sources of {sorted(names)}")
    for name in config.methods:
        for file in config.method_configs(name):
            if not Path(file).is_file():
                raise FileNotFoundError(f"{where}: method {name!r}: recipe config not found: {file}")
    for key, values in config.grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: grid axis {key!r} needs a list of values, got {values!r}")
    if config.sizes is not None and any(int(n) < 1 for n in config.sizes):
        raise ValueError(f"{where}: sizes must be positive, got {config.sizes}")
    if isinstance(config.seeds, dict):
        for size in config.sizes or [None]:
            try:
                config.seeds_for(size)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from err
    if config.workers < 1:
        raise ValueError(f"{where}: workers must be at least 1, got {config.workers}")
