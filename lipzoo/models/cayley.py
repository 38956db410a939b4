"""Cayley networks (Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform", ICLR 2021;
authors' code locuslab/orthogonal-convolutions).

* ``cayley_kwlarge``: the paper's KW-Large (:mod:`lipzoo.models._kwlarge`) with Cayley convolutions
  (:class:`~lipzoo.layers.cayley.CayleyConv2d`, circular, FFT domain) and Cayley dense layers
  (:class:`~lipzoo.layers.cayley.CayleyLinear`); GroupSort; Cayley head (head rule "lipschitz"); mean-only input
  normalisation (bound 1).
* ``cayley_xs``: the compact CPU variant (the same skeleton, narrower dense part; see ``_XS``).

``lipschitz_bound()`` is proven: the product of the per-layer bounds, each the float64 spectral norm of the realised
orthogonal (per-frequency) matrices for the 32x32 input the layers were built for (1 up to float error).
"""
from __future__ import annotations

from torch import nn

from ..layers.cayley import CayleyConv2d, CayleyLinear
from ..layers.normalize import CIFAR10_MEAN
from ._builder import ArchInfo, build, default_cfgs_for, register
from ._kwlarge import KWLargeNet

__all__ = ["CayleyKWLarge"]

PAPER = "Trockman & Kolter, Orthogonalizing Convolutional Layers with the Cayley Transform, ICLR 2021"


class CayleyKWLarge(KWLargeNet):
    """KW-Large with Cayley layers (see :class:`~lipzoo.models._kwlarge.KWLargeNet` for the arguments)."""

    family = "cayley"

    def make_conv(self, c_in: int, c_out: int, kernel_size: int, stride: int, input_size: int) -> nn.Module:
        return CayleyConv2d(c_in, c_out, kernel_size, stride, input_size=input_size, **self._layer_kwargs)

    def make_linear(self, in_features: int, out_features: int) -> nn.Module:
        return CayleyLinear(in_features, out_features)


# KW-Large, width factor w = 1 (the paper's model): convs 32/64, dense 512/512
_KWLARGE = dict(channels=(32, 64), dense=(512, 512))
# Compact CPU variant: the KW-Large convolutions, dense 256/256 (the 4096 x d1 dense layer holds most parameters).
_XS = dict(channels=(32, 64), dense=(256, 256))

default_cfgs = default_cfgs_for(["cayley_kwlarge", "cayley_xs"], mean=CIFAR10_MEAN, std=(1.0, 1.0, 1.0))


def _cayley(variant: str, pretrained: bool, **kwargs) -> CayleyKWLarge:
    args = dict(_XS if variant == "cayley_xs" else _KWLARGE)
    args.update(kwargs)
    return build(CayleyKWLarge, variant, pretrained, **args)


@register(ArchInfo(
    "cayley_kwlarge", "cayley", PAPER,
    "KW-Large (w=1): Cayley convs 3->32, 32->32 (stride 2), 32->64, 64->64 (stride 2), GroupSort, Cayley dense "
    "4096->512->512, Cayley head; mean-only normalisation",
    paper_params_note="no verified published parameter count (the paper's tables were not checked); lipzoo reports "
                      "sum(p.numel()), alpha scalars included"))
def cayley_kwlarge(pretrained: bool = False, **kwargs) -> CayleyKWLarge:
    """The Cayley paper's KW-Large network (width factor 1) with Cayley convolutions and dense layers."""
    return _cayley("cayley_kwlarge", pretrained, **kwargs)


@register(ArchInfo(
    "cayley_xs", "cayley", PAPER,
    "compact Cayley for 2-core CPU training: the KW-Large convolutions (32, 64) with dense 4096->256->256, "
    "Cayley head", compact=True))
def cayley_xs(pretrained: bool = False, **kwargs) -> CayleyKWLarge:
    """Compact Cayley network for CPU training: KW-Large convolutions, narrower dense layers."""
    return _cayley("cayley_xs", pretrained, **kwargs)
