"""SLL networks (Araujo et al., "A Unified Algebraic Perspective on Lipschitz Neural Networks", ICLR'23).

Structure of the authors' ``LipschitzNetwork`` (``core/models/model.py``):
``[0,1] image -> subtract mean (std 1, so L = 1) -> zero-pad channels 3 -> w -> n_conv x SLL conv (w, inner 5,
all at 32x32) -> 4x4 window sum / 4 -> flatten (64 w) -> n_dense x SLL dense (inner 2048) -> LLN``.
The certifier uses the LLN pairwise rule with the body's bound (1 up to float error).
"""
from __future__ import annotations

from torch import nn

from ..layers.heads import LLN
from ..layers.normalize import CIFAR100_MEAN, SLL_CIFAR10_MEAN, InputNormalize
from ..layers.shapes import ChannelPad, SLLAvgPool
from ..layers.sll import SLLConv2d, SLLLinear
from ._base import LipschitzClassifier
from ._builder import ArchInfo, build, default_cfgs_for, register

__all__ = ["SLLNet"]

PAPER = "Araujo et al., A Unified Algebraic Perspective on Lipschitz Neural Networks, ICLR 2023"


class SLLNet(LipschitzClassifier):
    """The SLL ``LipschitzNetwork``; ``num_classes=100`` uses the CIFAR-100 mean."""

    family = "sll"

    def __init__(
        self,
        width: int = 45,
        n_conv: int = 20,
        n_dense: int = 7,
        conv_inner_dim: int = 5,
        dense_inner_dim: int = 2048,
        num_classes: int = 10,
        q_mode: str = "exp",
        input_size: int = 32,
        pool: int = 4,
        mean: tuple[float, float, float] | None = None,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for SLLNet: {sorted(kwargs)}")
        self.num_classes = num_classes
        mean = mean or (CIFAR100_MEAN if num_classes == 100 else SLL_CIFAR10_MEAN)
        self.normalize = InputNormalize(mean, (1.0, 1.0, 1.0))
        side = input_size // pool
        self.num_features = width * side * side
        layers: list[nn.Module] = [ChannelPad(width)]
        layers += [SLLConv2d(width, conv_inner_dim, 3, q_mode=q_mode) for _ in range(n_conv)]
        layers += [SLLAvgPool(pool), nn.Flatten()]
        layers += [SLLLinear(self.num_features, dense_inner_dim, q_mode=q_mode) for _ in range(n_dense)]
        self.features = nn.Sequential(*layers)
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return LLN(self.num_features, num_classes, bias=True, eps=1e-12)


_SIZES = {
    # name: (width, n_conv, n_dense, conv_inner, dense_inner, paper params in M)
    "sll_s": (45, 20, 7, 5, 2048, 41),
    "sll_m": (60, 30, 10, 5, 2048, 78),
    "sll_l": (90, 50, 10, 5, 2048, 118),
    "sll_xl": (120, 70, 15, 5, 2048, 236),
}
# Compact CPU variant: same structure; wider conv inner dimension and a narrower dense part (<= 3M params).
_XS = dict(width=32, n_conv=8, n_dense=4, conv_inner_dim=32, dense_inner_dim=256)

default_cfgs = default_cfgs_for(list(_SIZES) + ["sll_xs"], mean=SLL_CIFAR10_MEAN, std=(1.0, 1.0, 1.0))


def _sll(variant: str, pretrained: bool, **kwargs) -> SLLNet:
    if variant == "sll_xs":
        args = dict(_XS)
    else:
        w, nc, nd, ci, di, _ = _SIZES[variant]
        args = dict(width=w, n_conv=nc, n_dense=nd, conv_inner_dim=ci, dense_inner_dim=di)
    args.update(kwargs)
    return build(SLLNet, variant, pretrained, **args)


def _info(name: str, **kw) -> ArchInfo:
    if name in _SIZES:
        w, nc, nd, ci, di, pp = _SIZES[name]
        desc = f"SLL {name[4:].upper()}: {nc} conv (width {w}, inner {ci}), {nd} dense (inner {di}), LLN head"
        return ArchInfo(name, "sll", PAPER, desc, paper_params=pp,
                        paper_params_note="LBDN Table 2 / 1LLC Table 4 (CIFAR-10 count)", **kw)
    return ArchInfo(name, "sll", PAPER, "compact SLL for 2-core CPU training: "
                    + ", ".join(f"{k}={v}" for k, v in _XS.items()), compact=True, **kw)


@register(_info("sll_s"))
def sll_s(pretrained: bool = False, **kwargs) -> SLLNet:
    """SLL Small: 20 SLL convs (width 45, inner 5), 7 SLL dense layers (inner 2048), LLN head."""
    return _sll("sll_s", pretrained, **kwargs)


@register(_info("sll_m"))
def sll_m(pretrained: bool = False, **kwargs) -> SLLNet:
    """SLL Medium: 30 SLL convs (width 60, inner 5), 10 SLL dense layers (inner 2048), LLN head."""
    return _sll("sll_m", pretrained, **kwargs)


@register(_info("sll_l"))
def sll_l(pretrained: bool = False, **kwargs) -> SLLNet:
    """SLL Large: 50 SLL convs (width 90, inner 5), 10 SLL dense layers (inner 2048), LLN head."""
    return _sll("sll_l", pretrained, **kwargs)


@register(_info("sll_xl"))
def sll_xl(pretrained: bool = False, **kwargs) -> SLLNet:
    """SLL X-Large: 70 SLL convs (width 120, inner 5), 15 SLL dense layers (inner 2048), LLN head."""
    return _sll("sll_xl", pretrained, **kwargs)


@register(_info("sll_xs"))
def sll_xs(pretrained: bool = False, **kwargs) -> SLLNet:
    """Compact SLL for CPU training (<= 3M parameters): SLL convs at 32x32, SLL dense layers, LLN head."""
    return _sll("sll_xs", pretrained, **kwargs)
