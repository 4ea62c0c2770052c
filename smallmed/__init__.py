"""smallmed: deep learning that works on small medical image datasets (50 to 2,000 images).

Parts:
    smallmed.SmallMedClassifier   LightningModule wrapping any timm backbone
    smallmed.callbacks            GradualUnfreezing, DiscriminativeLR, HeadReparameterization
    smallmed.datamodules          NpzDataModule (MedMNIST layout) and subset sampling
"""

from pathlib import Path as _Path

from smallmed import _source_tree

_source_tree.install(__name__, _Path(__file__).resolve().parent)

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so `import smallmed.callbacks` in another project does not pull in the classifier.
    if name == "SmallMedClassifier":
        from smallmed.model import SmallMedClassifier

        return SmallMedClassifier
    raise AttributeError(f"module 'smallmed' has no attribute {name!r}")


__all__ = ["SmallMedClassifier", "__version__"]
