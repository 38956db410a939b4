"""Gradient-norm-preserving activations (1-Lipschitz in l2).

Channel pairing matters for reproducing checkpoints: ``pairing="halves"`` pairs channel i with i + C/2
(SOC, LOT, improved-techniques repos); ``pairing="adjacent"`` pairs 2i with 2i + 1 (1LipschitzLayersCompared).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .base import LipschitzModule

__all__ = ["MaxMin"]

Pairing = Literal["halves", "adjacent"]


def split_pairs(x: torch.Tensor, pairing: Pairing) -> tuple[torch.Tensor, torch.Tensor]:
    """The two members (a, b) of each channel pair, each of shape (N, C/2, ...)."""
    c = x.shape[1]
    if c % 2:
        raise ValueError(f"pairwise activations need an even number of channels, got {c}")
    if pairing == "halves":
        return x[:, : c // 2], x[:, c // 2:]
    if pairing == "adjacent":
        return x[:, 0::2], x[:, 1::2]
    raise ValueError(f"pairing must be 'halves' or 'adjacent', got {pairing!r}")


def merge_pairs(a: torch.Tensor, b: torch.Tensor, pairing: Pairing) -> torch.Tensor:
    """Inverse of :func:`split_pairs`."""
    if pairing == "halves":
        return torch.cat([a, b], dim=1)
    return torch.stack([a, b], dim=2).flatten(1, 2)


class MaxMin(LipschitzModule):
    """``(a, b) -> (max(a, b), min(a, b))`` per channel pair: a permutation of each pair, so GNP (bound 1).

    Output layout follows the pairing: ``cat(max, min)`` for halves, interleaved for adjacent.
    """

    def __init__(self, pairing: Pairing = "halves"):
        super().__init__()
        self.pairing = pairing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = split_pairs(x, self.pairing)
        return merge_pairs(torch.maximum(a, b), torch.minimum(a, b), self.pairing)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"pairing={self.pairing!r}"


# --- Householder activations and pairwise 1-Lipschitz pooling (SOC / improved-techniques repos) --------------
# Conventions of the authors' code (singlasahil14/SOC, singlasahil14/improved_l2_robustness), pairing 'halves':
# x = first half, y = second half of the channels.

__all__ += ["HouseHolder", "HouseHolder2", "LipPool", "PairMaxPool"]


def _per_pair(theta: torch.Tensor, ndim: int) -> torch.Tensor:
    """A per-pair parameter broadcast against (N, C/2, ...) tensors of ``ndim`` dimensions."""
    return theta.reshape(1, -1, *([1] * (ndim - 2)))


def _reflect(x: torch.Tensor, y: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflection across the line at angle ``angle / 2``: ``(x cos a + y sin a, x sin a - y cos a)``."""
    c, s = torch.cos(angle), torch.sin(angle)
    return x * c + y * s, x * s - y * c


class HouseHolder(LipschitzModule):
    """Householder activation of order 1 (HH1; Singla, Singla & Feizi, ICLR'22, Sec. 4).

    Per pair ``(x, y)`` with angle ``theta``: the reflection across the line at angle ``theta / 2``, applied where
    ``x sin(theta/2) - y cos(theta/2) > 0`` (strict), the identity elsewhere. The two pieces agree on that line, so
    the map is continuous and piecewise orthogonal: 1-Lipschitz and gradient-norm preserving (a.e.).
    ``theta`` has shape (1, C/2, 1, 1) (the authors' state dict) and is initialised to pi/2.
    """

    def __init__(self, channels: int, pairing: Pairing = "halves", init: float = 0.5 * math.pi):
        super().__init__()
        if channels % 2:
            raise ValueError(f"HouseHolder needs an even number of channels, got {channels}")
        self.channels, self.pairing = channels, pairing
        self.theta = nn.Parameter(torch.full((1, channels // 2, 1, 1), float(init)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, y = split_pairs(z, self.pairing)
        theta = _per_pair(self.theta, z.dim())
        on = (x * torch.sin(0.5 * theta) - y * torch.cos(0.5 * theta)) > 0
        a, b = _reflect(x, y, theta)
        return merge_pairs(torch.where(on, a, x), torch.where(on, b, y), self.pairing)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"channels={self.channels}, pairing={self.pairing!r}"


class HouseHolder2(LipschitzModule):
    """Householder activation of order 2 (HH2; the authors' ``HouseHolder_Order_2``).

    Per pair, with ``t_i = clamp(theta_i, 0, 2 pi)`` and the angle ``phi = (atan2(y, x) - t0/2) mod 2 pi``, four
    cones: ``[0, t1/2)`` identity; ``[t1/2, (t1+t2)/2)`` reflection with angle ``t0 + t1``;
    ``[(t1+t2)/2, pi + t2/2)`` rotation by ``-t2``; ``[pi + t2/2, 2 pi)`` reflection with angle ``t0``. Adjacent
    pieces agree on their common ray, so the map is continuous and piecewise orthogonal (1-Lipschitz, GNP a.e.).
    The last cone is taken as ``phi >= pi + t2/2`` (improved repo); the SOC repo also requires ``phi < 2 pi``,
    which only differs where ``phi`` rounds to exactly 2 pi. ``theta0..2`` have shape (C/2,), init pi U(0, 1).
    """

    def __init__(self, channels: int, pairing: Pairing = "halves"):
        super().__init__()
        if channels % 2:
            raise ValueError(f"HouseHolder2 needs an even number of channels, got {channels}")
        self.channels, self.pairing = channels, pairing
        for name in ("theta0", "theta1", "theta2"):
            setattr(self, name, nn.Parameter(math.pi * torch.rand(channels // 2)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, y = split_pairs(z, self.pairing)
        t0, t1, t2 = (_per_pair(t, z.dim()).clamp(0.0, 2 * math.pi) for t in (self.theta0, self.theta1, self.theta2))
        phi = (torch.atan2(y, x) - 0.5 * t0) % (2 * math.pi)
        ang1, ang2 = 0.5 * t1, 0.5 * (t1 + t2)
        ang3 = 0.5 * (t1 + t2 + (2 * math.pi - t1))
        a2, b2 = _reflect(x, y, t0 + t1)
        c2, s2 = torch.cos(t2), torch.sin(t2)
        a3, b3 = x * c2 + y * s2, -x * s2 + y * c2
        a4, b4 = _reflect(x, y, t0)
        s1, s2_, s3 = phi < ang1, phi < ang2, phi < ang3
        a = torch.where(s1, x, torch.where(s2_, a2, torch.where(s3, a3, a4)))
        b = torch.where(s1, y, torch.where(s2_, b2, torch.where(s3, b3, b4)))
        return merge_pairs(a, b, self.pairing)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"channels={self.channels}, pairing={self.pairing!r}"


class LipPool(LipschitzModule):
    """'lip1' pooling (improved repo): one output per pair, ``C -> C/2`` channels.

    With ``t = clamp(theta, 0, pi)``, ``n1 = (-sin(t/2), cos(t/2))``, ``n3 = (-sin(t/2), -cos(t/2))`` and
    ``a = atan2(y, x) mod 2 pi``: ``<n1, (x, y)>`` for ``a < (t + pi)/2``; ``sqrt(x^2 + y^2)`` for
    ``a < (3 pi - t)/2``; ``<n3, (x, y)>`` otherwise. ``n1``/``n3`` point along the two boundary rays, so the
    pieces agree there (and at a = 0): a continuous, piecewise 1-Lipschitz function of each pair, hence
    1-Lipschitz (the "l2 distance to a manifold" pooling). ``theta`` has shape (C/2,), init pi U(0, 1).
    """

    def __init__(self, channels: int, pairing: Pairing = "halves"):
        super().__init__()
        if channels % 2:
            raise ValueError(f"LipPool needs an even number of channels, got {channels}")
        self.channels, self.pairing = channels, pairing
        self.theta = nn.Parameter(math.pi * torch.rand(channels // 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, y = split_pairs(z, self.pairing)
        t = _per_pair(self.theta, z.dim()).clamp(0.0, math.pi)
        a = torch.atan2(y, x) % (2 * math.pi)
        xs, yc = x * torch.sin(0.5 * t), y * torch.cos(0.5 * t)
        r2 = x * x + y * y
        on = r2 > 0
        radius = torch.sqrt(torch.where(on, r2, torch.ones_like(r2))) * on  # sqrt(r2), zero gradient at the origin
        return torch.where(a < 0.5 * (t + math.pi), yc - xs, torch.where(a < 0.5 * (3 * math.pi - t), radius, -xs - yc))

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"channels={self.channels}, pairing={self.pairing!r}"


class PairMaxPool(LipschitzModule):
    """'max' pooling (improved repo's ``MaxPool``): ``max(a, b)`` per channel pair, ``C -> C/2`` (bound 1)."""

    def __init__(self, pairing: Pairing = "halves"):
        super().__init__()
        self.pairing = pairing

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        a, b = split_pairs(z, self.pairing)
        return torch.maximum(a, b)

    def lipschitz_bound(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"pairing={self.pairing!r}"


ACTIVATIONS = ("maxmin", "hh1", "hh2")
__all__ += ["ACTIVATIONS", "create_activation"]


def create_activation(name: str, channels: int, pairing: Pairing = "halves") -> LipschitzModule:
    """The pairwise activation ``name`` for ``channels`` channels: ``'maxmin'`` (:class:`MaxMin`), ``'hh1'``
    (:class:`HouseHolder`, order 1) or ``'hh2'`` (:class:`HouseHolder2`), pairing channels as ``pairing`` says.
    Each is 1-Lipschitz (gradient-norm preserving)."""
    if name == "maxmin":
        return MaxMin(pairing)
    if name == "hh1":
        return HouseHolder(channels, pairing)
    if name == "hh2":
        return HouseHolder2(channels, pairing)
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")
