"""CPL networks (Meunier, Delattre, Araujo & Allauzen, "A Dynamical System Perspective for Lipschitz Neural
Networks", ICML 2022; code MILES-PSL/Convex-Potential-Layer).

Structure of the authors' ``ConvexPotentialLayerNetwork`` (``model.py``):
``[0,1] image -> subtract mean (std 1, L = 1) -> zero-pad channels 3 -> w -> depth x CPL conv (w channels, inner
conv_size, all at 32x32) -> 4x4 window sum / 4 -> flatten (64 w) -> depth_linear x CPL dense (inner n_features)
-> LLN`` (``--lln``; head rule "lln") or the first ``num_classes`` features (``PoolingLinear(trunc)``, the
code's default; head rule "lipschitz", ``head="trunc"``).

Every CPL layer's step is ``h = 2 / s^2`` with ``s`` a *proven* upper bound of its operator norm (not the
paper's power-iteration estimate; see :mod:`lipzoo.layers.cpl`), so the body's bound is 1 (eval mode).

Variants. ``cpl_s|m|l|xl`` follow the paper's CPL-S/M/L/XL as recalled here (conv depth / width / dense depth /
dense width: 20/45/7/2048, 30/60/10/2048, 90/60/15/4096, 120/70/15/4096) with the code's default conv inner
dimension ``conv_size=5`` (``main.py``). **UNVERIFIED**: these numbers were not checked against the paper's
tables here; a person must confirm them before any checkpoint or claimed number is attached.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ..layers.cpl import CPLConv2d, CPLLinear
from ..layers.heads import LLN
from ..layers.normalize import CIFAR10_MEAN
from ..layers.shapes import FirstChannels
from ._registry import Family, Variant, cpu_training, register_family
from .sll import ResidualNet

__all__ = ["CPLNet"]

PAPER = "Meunier, Delattre, Araujo & Allauzen, A Dynamical System Perspective for Lipschitz Neural Networks, ICML 2022"


class CPLNet(ResidualNet):
    """The CPL ``ConvexPotentialLayerNetwork``: :class:`~lipzoo.models.sll.ResidualNet` with CPL layers."""

    family = "cpl"
    cifar10_mean = CIFAR10_MEAN

    def __init__(
        self,
        width: int = 45,
        n_conv: int = 20,
        n_dense: int = 7,
        conv_inner_dim: int = 5,
        dense_inner_dim: int = 2048,
        num_classes: int = 10,
        head: str = "lln",
        input_size: int = 32,
        pool: int = 4,
        mean: tuple[float, float, float] | None = None,
        **kwargs,
    ):
        if head not in ("lln", "trunc"):
            raise ValueError(f"head must be 'lln' or 'trunc', got {head!r}")
        self.head_type = head
        super().__init__(width, n_conv, n_dense, conv_inner_dim, dense_inner_dim, num_classes, input_size, pool, mean,
                         **kwargs)

    def make_conv(self, channels: int, inner_dim: int, input_size: int) -> nn.Module:
        return CPLConv2d(channels, inner_dim, 3, input_size=input_size)

    def make_linear(self, features: int, inner_dim: int) -> nn.Module:
        return CPLLinear(features, inner_dim)

    def _make_head(self, num_classes: int) -> nn.Module:
        if self.head_type == "lln":
            return LLN(self.num_features, num_classes, bias=True, eps=1e-12)
        return FirstChannels(num_classes)


def _paper_size(size: str, width: int, n_conv: int, n_dense: int, dense_inner: int,
                paper_params: float | None = None, note: str = "") -> Variant:
    """CPL S/M/L/XL (UNVERIFIED sizes, see the module docstring): conv inner dimension 5."""
    return Variant(
        f"CPL-{size}: {n_conv} CPL convs (width {width}, inner 5), {n_dense} CPL dense layers (inner {dense_inner}), "
        "LLN head (head='trunc': first-classes output); layer counts UNVERIFIED against the paper",
        dict(width=width, n_conv=n_conv, n_dense=n_dense, conv_inner_dim=5, dense_inner_dim=dense_inner),
        doc=f"CPL-{size} (UNVERIFIED sizes): {n_conv} CPL convs (width {width}), {n_dense} CPL dense layers "
            f"({dense_inner}), LLN head.",
        paper_params=paper_params,
        paper_params_note=note or "no published parameter count was found; lipzoo reports sum(p.numel())")


# Compact CPU variant: the shape of sll_xs (same per-layer cost as SLL), <= 3M parameters.
_XS = dict(width=32, n_conv=8, n_dense=4, conv_inner_dim=32, dense_inner_dim=256)

register_family(Family(
    name="cpl", paper=PAPER, model=CPLNet, module=__name__,
    variants={
        "cpl_s": _paper_size("S", 45, 20, 7, 2048),
        "cpl_m": _paper_size("M", 60, 30, 10, 2048),
        "cpl_l": _paper_size("L", 60, 90, 15, 4096),
        "cpl_xl": _paper_size("XL", 70, 120, 15, 4096, 236.0,
                              "236M as quoted by the 1LLC paper (Table 4; secondary); lipzoo's UNVERIFIED CPL-XL "
                              "sizes count 275.7M, so at least one layer size differs from the paper's (lipzoo's "
                              "cpl_l sizes count 236.27M: the tables may be shifted by one size)"),
        "cpl_xs": Variant("compact CPL for 2-core CPU training: " + ", ".join(f"{k}={v}" for k, v in _XS.items()),
                          _XS, doc="Compact CPL for CPU training (<= 3M parameters): CPL convs at 32x32, CPL dense "
                          "layers, LLN head.", compact=True,
                          measured_training=cpu_training(209.0)),
    },
    checkpoint_formats={"cpl": "lipzoo.convert._cpl"},
    reference_converter="lipzoo.convert._cpl",
    convnet_conv=lambda c, k, n: CPLConv2d(c, c, k, input_size=n),
    bench_layers={"CPLConv2d(64, inner 64)": partial(CPLConv2d, 64, 64, 3)},
))
