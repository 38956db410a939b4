"""CPL networks (Meunier, Delattre, Araujo & Allauzen, "A Dynamical System Perspective for Lipschitz Neural
Networks", ICML 2022; code MILES-PSL/Convex-Potential-Layer).

Structure of the authors' ``ConvexPotentialLayerNetwork`` (``model.py``):
``[0,1] image -> subtract mean (std 1, L = 1) -> zero-pad channels 3 -> w -> depth x CPL conv (w channels, inner
conv_size, all at 32x32) -> 4x4 window sum / 4 -> flatten (64 w) -> depth_linear x CPL dense (inner n_features)
-> LLN`` (``--lln``; head rule "lln") or the first ``num_classes`` features (``PoolingLinear(trunc)``, the
code's default; head rule "lipschitz", ``head="trunc"``).

Every CPL layer's step is ``h = 2 / s^2`` with ``s`` a *proven* upper bound of its operator norm (not the
paper's power-iteration estimate; see :mod:`lipzoo.layers.cpl`), so the body's bound is 1 (eval mode).

Variants. What the authors' code fixes (MILES-PSL/Convex-Potential-Layer, commit c6dc197, 2022-08-04): the
structure above; ``--conv-size`` is the CPL conv kernel's output channels, i.e. the conv inner dimension
(``conv_inner_dim``, default 5 in ``main.py``); ``--n-features`` is the CPL dense layers' inner dimension
(``dense_inner_dim``); the dense layers act on the 64 w pooled features. ``main.py``'s only size is its default
(``--depth 20 --depth-linear 7 --num-channels 30 --n-features 2048 --conv-size 5``); the repository (an empty README,
no scripts) names no CPL-S/M/L/XL configuration. For the same arguments lipzoo's count equals the authors' trainable
tensors; the authors' ``model.parameters()`` also holds each layer's power-iteration vector (``nn.Parameter`` with
``requires_grad=False``: 1024 w per conv at 32x32, 64 w per dense layer) and one unused scalar ``alpha`` per dense
layer, which lipzoo's CPL layers do not have (they run no power iteration).

``cpl_s|m|l|xl`` use the paper's CPL-S/M/L/XL sizes as recalled here (conv depth / width / dense depth / dense
inner: 20/45/7/2048, 30/60/10/2048, 90/60/15/4096, 120/70/15/4096) with conv inner 5. **UNVERIFIED**: neither the
authors' code nor a readable copy of the paper's Table 1 confirms these depths and widths; a person must check them
before any checkpoint or claimed number is attached. The dense layers hold over 99% of the parameters (about
n_dense x 64 w x dense_inner), so the 236M quoted for CPL-XL (1LLC Table 4) means n_dense x w x dense_inner of about
3.69M: lipzoo's cpl_l (15 x 60 x 4096, 236.27M) or an SLL-XL-shaped dense part (15 x 120 x 2048), not lipzoo's
cpl_xl (15 x 70 x 4096, 275.74M). 236M is also the count lipzoo records for SLL-XL (:mod:`lipzoo.models.sll`), so
the quote may not be an independent count of CPL-XL.
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
    """CPL S/M/L/XL: conv inner dimension 5 (the authors' ``main.py`` default); depths and widths UNVERIFIED (see
    the module docstring)."""
    return Variant(
        f"CPL-{size}: {n_conv} CPL convs (width {width}, inner 5), {n_dense} CPL dense layers (inner {dense_inner}), "
        "LLN head (head='trunc': first-classes output); depths and widths UNVERIFIED (the authors' code names no "
        "sizes; the paper's table was not read)",
        dict(width=width, n_conv=n_conv, n_dense=n_dense, conv_inner_dim=5, dense_inner_dim=dense_inner),
        doc=f"CPL-{size} (UNVERIFIED depths and widths): {n_conv} CPL convs (width {width}, inner 5), {n_dense} CPL "
            f"dense layers ({dense_inner}), LLN head.",
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
                              "236M as quoted by the 1LLC paper (Table 4; secondary; also the count recorded for "
                              "SLL-XL); lipzoo's UNVERIFIED CPL-XL sizes count 275.7M: the dense part (about "
                              "n_dense x 64 w x inner) fits 236M with width 60 (lipzoo's cpl_l, 236.27M) or "
                              "15 x 120 x 2048, not width 70; the authors' code names no CPL-XL size"),
        "cpl_xs": Variant("compact CPL for 2-core CPU training: " + ", ".join(f"{k}={v}" for k, v in _XS.items()),
                          _XS, doc="Compact CPL for CPU training (<= 3M parameters): CPL convs at 32x32, CPL dense "
                          "layers, LLN head.", compact=True,
                          measured_training=cpu_training(209.0), targets={"cifar10": (0.62, 0.47)}),
    },
    checkpoint_formats={"cpl": "lipzoo.convert._cpl"},
    reference_converter="lipzoo.convert._cpl",
    convnet_conv=lambda c, k, n: CPLConv2d(c, c, k, input_size=n),
    bench_layers={"CPLConv2d(64, inner 64)": partial(CPLConv2d, 64, 64, 3)},
))
