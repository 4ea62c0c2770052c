"""Train a smallmed model: ``python train.py --config configs/paper_recipe.yaml``.

Fits, then tests the best checkpoint. ``python train.py --help`` lists every option; subcommands
``fit``, ``validate``, ``test`` and ``predict`` work as in any LightningCLI, and ``study`` runs a grid
of runs (``python train.py study --config configs/study_breastmnist.yaml``), ``blend`` averages the
prediction CSVs of several runs (``python train.py blend --out blend.csv a.csv b.csv``).
"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["study"]:
        from smallmed.study import main

        main(sys.argv[2:])
    elif sys.argv[1:2] == ["blend"]:
        from smallmed.blend import main

        main(sys.argv[2:])
    else:
        from smallmed.cli import main

        main()
