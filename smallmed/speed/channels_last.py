"""Channels-last (NHWC) memory order, where it pays.

On the CPU oneDNN's convolutions, depthwise ones above all, run fastest on NHWC tensors (a
tf_efficientnet_lite0 step at 64 px took 0.80 of the NCHW time on 2 cores); on a GPU cuDNN's
tensor-core kernels want NHWC for 16-bit precision, while fp32 runs stay NCHW. With the weights in
NHWC, the first convolution turns the NCHW input into NHWC and every later layer keeps it.
"""

from __future__ import annotations

import torch
from torch import nn


def prefers_channels_last(device_type: str, precision: str) -> bool:
    """NHWC on the CPU and for 16-bit GPU runs, NCHW otherwise."""
    return device_type == "cpu" or (device_type == "cuda" and precision.startswith(("16", "bf16")))


def to_channels_last(module: nn.Module) -> None:
    """Put every 4-D weight and buffer of ``module`` in NHWC order, in place (parameters keep their identity)."""
    module.to(memory_format=torch.channels_last)
