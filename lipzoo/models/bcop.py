"""BCOP networks (Li et al., "Preventing Gradient Attenuation in Lipschitz Constrained Convolutional Networks",
NeurIPS 2019; authors' code ColinQiyangLi/LConvNet).

* ``bcop_kwlarge``: KW-Large (:mod:`lipzoo.models._kwlarge`) with BCOP convolutions
  (:class:`~lipzoo.layers.bcop.BCOPConv2d`, circular) and Bjorck dense layers (:class:`~lipzoo.layers.bcop.BjorckLinear`),
  as Trockman & Kolter (ICLR 2021) train BCOP (their ``--conv BCOP --linear BjorckLinear``, the LConvNet layers behind
  their ``StridedConv``); GroupSort; Bjorck head (head rule "lipschitz"); mean-only normalisation (bound 1).
* ``bcop_xs``: the compact CPU variant (same skeleton, narrower dense part, fewer Bjorck iterations in training).

``lipschitz_bound()`` is proven and never assumes orthogonality: Bjorck stops after finitely many iterations, so every
layer's bound is the exact float64 norm of its realised operator (circular convolutions: max over the frequencies of
the input grid of the per-frequency spectral norm; dense layers: the spectral norm), plus float64 rounding slack.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ..layers.bcop import BCOPConv2d, BjorckLinear
from ._registry import Family, Variant, cpu_training, register_family
from ._kwlarge import KWLargeNet

__all__ = ["BCOPKWLarge"]

PAPER = ("Li, Haque, Anil, Lucas, Grosse & Jacobsen, Preventing Gradient Attenuation in Lipschitz Constrained "
         "Convolutional Networks, NeurIPS 2019")


class BCOPKWLarge(KWLargeNet):
    """KW-Large with BCOP convolutions and Bjorck dense layers (arguments: :class:`~lipzoo.models._kwlarge.KWLargeNet`;
    ``layer_kwargs`` such as ``bjorck_iters`` / ``eval_bjorck_iters`` go to every layer)."""

    family = "bcop"

    def make_conv(self, c_in: int, c_out: int, kernel_size: int, stride: int, input_size: int) -> nn.Module:
        return BCOPConv2d(c_in, c_out, kernel_size, stride, input_size=input_size, **self._layer_kwargs)

    def make_linear(self, in_features: int, out_features: int) -> nn.Module:
        return BjorckLinear(in_features, out_features, **self._layer_kwargs)


register_family(Family(
    name="bcop", paper=PAPER, model=BCOPKWLarge, module=__name__,
    variants={
        # KW-Large, width factor 1; Bjorck: 20 iterations in training and eval (LConvNet's default)
        "bcop_kwlarge": Variant(
            "KW-Large (w=1) with BCOP convs 3->32, 32->32 (stride 2), 32->64, 64->64 (stride 2), GroupSort, Bjorck "
            "dense 4096->512->512, Bjorck head (as trained with BCOP by Trockman & Kolter, ICLR 2021); 20 Bjorck "
            "iterations",
            dict(channels=(32, 64), dense=(512, 512), layer_kwargs=dict(bjorck_iters=20, eval_bjorck_iters=20)),
            paper_params=2.0,
            paper_params_note="'2M' as quoted by the 1LLC paper (Table 4, 'BCOP Large'; secondary, one significant "
                              "figure); lipzoo counts 2.47M",
            doc="KW-Large (width factor 1) with BCOP convolutions and Bjorck dense layers."),
        # Compact CPU variant: KW-Large convolutions, dense 256/256, fewer Bjorck iterations in training (the bound
        # is measured on the realised operators, so this trades speed for orthogonality, never soundness)
        "bcop_xs": Variant(
            "compact BCOP for 2-core CPU training: the KW-Large BCOP convolutions (32, 64) with Bjorck dense "
            "4096->256->256, Bjorck head; 8 Bjorck iterations in training, 20 in eval",
            dict(channels=(32, 64), dense=(256, 256), layer_kwargs=dict(bjorck_iters=8, eval_bjorck_iters=20)),
            compact=True, measured_training=cpu_training(533.9), targets={"cifar10": (0.62, 0.47)},
            doc="Compact BCOP network for CPU training: KW-Large convolutions, narrower dense layers."),
    },
    checkpoint_formats={"bcop": "lipzoo.convert._bcop"},
    reference_converter="lipzoo.convert._bcop",
    convnet_conv=lambda c, k, n: BCOPConv2d(c, c, k, input_size=n),
    bench_layers={"BCOPConv2d 3x3 (64 -> 64)": partial(BCOPConv2d, 64, 64, 3)},
))
