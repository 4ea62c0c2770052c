"""Speed, kept apart from the science: one callback, one switch, public torch and Lightning APIs only.

:class:`SpeedUps` (``--speed.mode auto|off`` on ``train.py``; any Lightning project can add it) changes
how a run computes, never what it computes, up to float rounding:

- **channels-last memory order** (:mod:`~smallmed.speed.channels_last`): the module's weights in
  NHWC order, where oneDNN's and cuDNN's fast convolution kernels want them;
- **torch's fused Adam / AdamW kernel on the CPU** (:mod:`~smallmed.speed.fused_optimizer`): one
  kernel for the whole update instead of a Python loop over the tensors;
- **BatchNorm folded into the convolutions for evaluation** (:mod:`~smallmed.speed.batchnorm_folding`):
  each validation and test epoch runs through a folded copy of the backbone, refreshed from the live
  weights at the epoch's start; the live module, its checkpoints and its optimizer never see it.

``auto`` applies each where it measured faster (``docs/speed.md``); ``off`` leaves the run as the
model and Trainer make it. Data-side speed (device-resident batches) is the data module's
``device_resident`` setting.
"""

from smallmed.speed.callback import SpeedUps

__all__ = ["SpeedUps"]
