"""Train a smallmed model: ``python train.py --config configs/paper_recipe.yaml``.

Fits, then tests the best checkpoint. ``python train.py --help`` lists every option; subcommands
``fit``, ``validate``, ``test`` and ``predict`` work as in any LightningCLI.
"""

from smallmed.cli import main

if __name__ == "__main__":
    main()
