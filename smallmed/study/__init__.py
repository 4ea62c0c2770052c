"""The study: learning curves over training-set size, recipe and pretraining source, with many seeds.

``python train.py study --config configs/study_breastmnist.yaml`` runs the grid

    target x source x method x N x (any further config key) x seed

where every cell is a ``train.py`` run built from configs (:mod:`smallmed.study.runs`), on this
machine or on a SLURM cluster (:mod:`smallmed.study.executors`). Sources may be made by a *source
stage*: a run on another data set whose best checkpoint is cached, then fine-tuned on the target --
targeted transfer. Results are merged by run key into ``results.csv`` (a study is resumable: finished
cells are skipped), then summarised into ``summary.csv``, ``paired.csv``, ``recommendation.txt`` and
one learning-curve plot per target.

    smallmed/study/config.py     the study YAML file
    smallmed/study/runs.py       one run as a config (shared with the benchmarks)
    smallmed/study/runner.py     the cells, their configs and result rows, source stages
    smallmed/study/executors.py  local workers, SLURM job arrays
    smallmed/study/results.py    part files and their merge
    smallmed/study/summary.py    summaries, paired differences, the recommendation
    smallmed/study/plots.py      learning curves
"""

from smallmed.study.config import SlurmSettings, SourceStage, StudyConfig, load_study_config
from smallmed.study.main import main, run_study, write_reports
from smallmed.study.runs import RunSpec, run_spec

__all__ = [
    "RunSpec",
    "SlurmSettings",
    "SourceStage",
    "StudyConfig",
    "load_study_config",
    "main",
    "run_spec",
    "run_study",
    "write_reports",
]
