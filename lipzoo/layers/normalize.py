"""Input normalisation inside the model, so that certified radii are in [0, 1] pixel space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import LipschitzModule

__all__ = ["InputNormalize", "CIFAR10_MEAN", "CIFAR100_MEAN", "CIFAR10_STD", "CIFAR100_STD", "SOC_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SLL_CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)
SOC_STD = (0.2507, 0.2507, 0.2507)


class InputNormalize(LipschitzModule):
    """``x -> (x - mean) / std`` per channel, with ``mean``/``std`` as buffers (saved in the state dict).

    Lipschitz bound: exactly ``1 / min(std)`` (a diagonal linear map plus a shift). Models that only centre
    the input use ``std = (1, 1, 1)`` and have bound 1.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected images of shape (N, {self.mean.shape[1]}, H, W) in [0, 1], got {tuple(x.shape)}"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def lipschitz_bound(self) -> float:
        return 1.0 / float(self.std.double().min())
