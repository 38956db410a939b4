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

from torch import nn

from ..layers.cpl import CPLConv2d, CPLLinear
from ..layers.heads import LLN
from ..layers.normalize import CIFAR10_MEAN, CIFAR100_MEAN, InputNormalize
from ..layers.shapes import ChannelPad, FirstChannels, SLLAvgPool
from ._base import LipschitzClassifier
from ._builder import ArchInfo, build, default_cfgs_for, register

__all__ = ["CPLNet"]

PAPER = "Meunier, Delattre, Araujo & Allauzen, A Dynamical System Perspective for Lipschitz Neural Networks, ICML 2022"


class CPLNet(LipschitzClassifier):
    """The CPL ``ConvexPotentialLayerNetwork``; ``num_classes=100`` uses the CIFAR-100 mean."""

    family = "cpl"

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
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for CPLNet: {sorted(kwargs)}")
        if head not in ("lln", "trunc"):
            raise ValueError(f"head must be 'lln' or 'trunc', got {head!r}")
        self.head_type = head
        self.num_classes = num_classes
        mean = mean or (CIFAR100_MEAN if num_classes == 100 else CIFAR10_MEAN)
        self.normalize = InputNormalize(mean, (1.0, 1.0, 1.0))
        side = input_size // pool
        self.num_features = width * side * side
        layers: list[nn.Module] = [ChannelPad(width)]
        layers += [CPLConv2d(width, conv_inner_dim, 3, input_size=input_size) for _ in range(n_conv)]
        layers += [SLLAvgPool(pool), nn.Flatten()]
        layers += [CPLLinear(self.num_features, dense_inner_dim) for _ in range(n_dense)]
        self.features = nn.Sequential(*layers)
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if self.head_type == "lln":
            return LLN(self.num_features, num_classes, bias=True, eps=1e-12)
        return FirstChannels(num_classes)


_SIZES = {
    # name: (width, n_conv, n_dense, conv_inner, dense_inner) -- UNVERIFIED, see the module docstring
    "cpl_s": (45, 20, 7, 5, 2048),
    "cpl_m": (60, 30, 10, 5, 2048),
    "cpl_l": (60, 90, 15, 5, 4096),
    "cpl_xl": (70, 120, 15, 5, 4096),
}
# Compact CPU variant: the shape of sll_xs (same per-layer cost as SLL), <= 3M parameters.
_XS = dict(width=32, n_conv=8, n_dense=4, conv_inner_dim=32, dense_inner_dim=256)

default_cfgs = default_cfgs_for(list(_SIZES) + ["cpl_xs"], mean=CIFAR10_MEAN, std=(1.0, 1.0, 1.0))


def _cpl(variant: str, pretrained: bool, **kwargs) -> CPLNet:
    if variant == "cpl_xs":
        args = dict(_XS)
    else:
        w, nc, nd, ci, di = _SIZES[variant]
        args = dict(width=w, n_conv=nc, n_dense=nd, conv_inner_dim=ci, dense_inner_dim=di)
    args.update(kwargs)
    return build(CPLNet, variant, pretrained, **args)


def _info(name: str) -> ArchInfo:
    if name == "cpl_xs":
        return ArchInfo(name, "cpl", PAPER, "compact CPL for 2-core CPU training: "
                        + ", ".join(f"{k}={v}" for k, v in _XS.items()), compact=True)
    w, nc, nd, ci, di = _SIZES[name]
    desc = (f"CPL-{name[4:].upper()}: {nc} CPL convs (width {w}, inner {ci}), {nd} CPL dense layers (inner {di}), "
            "LLN head (head='trunc': first-classes output); layer counts UNVERIFIED against the paper")
    return ArchInfo(name, "cpl", PAPER, desc,
                    paper_params_note="no published parameter count was verified; lipzoo reports sum(p.numel())")


@register(_info("cpl_s"))
def cpl_s(pretrained: bool = False, **kwargs) -> CPLNet:
    """CPL-S (UNVERIFIED sizes): 20 CPL convs (width 45), 7 CPL dense layers (2048), LLN head."""
    return _cpl("cpl_s", pretrained, **kwargs)


@register(_info("cpl_m"))
def cpl_m(pretrained: bool = False, **kwargs) -> CPLNet:
    """CPL-M (UNVERIFIED sizes): 30 CPL convs (width 60), 10 CPL dense layers (2048), LLN head."""
    return _cpl("cpl_m", pretrained, **kwargs)


@register(_info("cpl_l"))
def cpl_l(pretrained: bool = False, **kwargs) -> CPLNet:
    """CPL-L (UNVERIFIED sizes): 90 CPL convs (width 60), 15 CPL dense layers (4096), LLN head."""
    return _cpl("cpl_l", pretrained, **kwargs)


@register(_info("cpl_xl"))
def cpl_xl(pretrained: bool = False, **kwargs) -> CPLNet:
    """CPL-XL (UNVERIFIED sizes): 120 CPL convs (width 70), 15 CPL dense layers (4096), LLN head."""
    return _cpl("cpl_xl", pretrained, **kwargs)


@register(_info("cpl_xs"))
def cpl_xs(pretrained: bool = False, **kwargs) -> CPLNet:
    """Compact CPL for CPU training (<= 3M parameters): CPL convs at 32x32, CPL dense layers, LLN head."""
    return _cpl("cpl_xs", pretrained, **kwargs)
