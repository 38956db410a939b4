"""Shape-changing 1-Lipschitz maps: channel padding / truncation, invertible downsampling, 1-Lip pooling."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import LipschitzModule

__all__ = ["ChannelPad", "FirstChannels", "PixelUnshuffle", "SumPool2d", "SLLAvgPool", "CloneChannels"]


class ChannelPad(LipschitzModule):
    """Append zero channels at the end: ``(N, C, H, W) -> (N, C_out, H, W)``. An isometry (bound 1)."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c > self.out_channels:
            raise ValueError(f"ChannelPad: input has {c} channels > out_channels={self.out_channels}")
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - c)) if x.dim() == 4 else F.pad(x, (0, self.out_channels - c))

    def lipschitz_bound(self) -> float:
        return 1.0


class CloneChannels(LipschitzModule):
    """SLL ``PaddingChannels(mode='clone')``: tile the input k = out//in times along channels, divide by sqrt(k).

    An isometry onto its image (bound 1); channels beyond k*in are zero.
    """

    def __init__(self, out_channels: int, in_channels: int = 3):
        super().__init__()
        self.out_channels, self.in_channels = out_channels, in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.out_channels // self.in_channels
        y = x.repeat(1, k, 1, 1) / math.sqrt(k)
        return F.pad(y, (0, 0, 0, 0, 0, self.out_channels - y.shape[1]))

    def lipschitz_bound(self) -> float:
        return 1.0


class FirstChannels(LipschitzModule):
    """Keep the first ``n`` channels (an orthogonal projection, bound 1)."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.n]

    def lipschitz_bound(self) -> float:
        return 1.0


class PixelUnshuffle(LipschitzModule):
    """Space-to-depth, identical to ``nn.PixelUnshuffle`` (channel ``c*r*r + r*dy + dx``); a permutation (bound 1)."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.factor)

    def lipschitz_bound(self) -> float:
        return 1.0


class SumPool2d(LipschitzModule):
    """1-Lipschitz average pooling over non-overlapping k x k windows: window sum / k (= mean * k).

    For non-overlapping windows, ||sum_w x|| <= sqrt(k^2) ||x_w||, so sum / k is exactly 1-Lipschitz.
    """

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.avg_pool2d(x, k, stride=k, divisor_override=k)

    def lipschitz_bound(self) -> float:
        return 1.0


class SLLAvgPool(SumPool2d):
    """SLL's ``AvgPool2d(4, divisor_override=4)``: the 4 x 4 window sum / 4 (bound 1)."""

    def __init__(self, kernel_size: int = 4):
        super().__init__(kernel_size)
