"""Cayley networks (Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform", ICLR 2021;
authors' code locuslab/orthogonal-convolutions).

* ``cayley_kwlarge``: the paper's KW-Large (:mod:`lipzoo.models._kwlarge`) with Cayley convolutions
  (:class:`~lipzoo.layers.cayley.CayleyConv2d`, circular, FFT domain) and Cayley dense layers
  (:class:`~lipzoo.layers.cayley.CayleyLinear`); GroupSort; Cayley head (head rule "lipschitz"); mean-only input
  normalisation (bound 1).
* ``cayley_resnet9``: the paper's ResNet9 (authors' ``ResNet9``): Cayley convs with GroupSort, 2x2 window sums / 2
  (``AvgPool2d(2, divisor_override=2)``, 1-Lipschitz), two residual stages mixed as ``s x + (1 - s) res(x)`` with a
  trained ``s = sigmoid(a)`` (``ConvexCombo``, ``a`` initialised to 0.5), Cayley dense 2048 -> 512 and Cayley head.
* ``cayley_xs``: the compact CPU variant (the same skeleton, narrower dense part; see ``_XS``).

``lipschitz_bound()`` is proven: the product of the per-layer bounds, each the float64 spectral norm of the realised
orthogonal (per-frequency) matrices for the 32x32 input the layers were built for (1 up to float error).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import torch
from torch import nn

from ..layers.activations import MaxMin
from ..layers.base import LipschitzModule, lipschitz_bound_of
from ..layers.cayley import CayleyConv2d, CayleyLinear
from ..layers.normalize import CIFAR10_MEAN, CIFAR100_MEAN, InputNormalize
from ..layers.shapes import SumPool2d
from ._base import LipschitzClassifier
from ._registry import Family, Variant, cpu_training, register_family
from ._kwlarge import KWLargeNet

__all__ = ["CayleyKWLarge", "ConvexCombination", "CayleyResNet9"]

PAPER = "Trockman & Kolter, Orthogonalizing Convolutional Layers with the Cayley Transform, ICLR 2021"


class CayleyKWLarge(KWLargeNet):
    """KW-Large with Cayley layers (see :class:`~lipzoo.models._kwlarge.KWLargeNet` for the arguments)."""

    family = "cayley"

    def make_conv(self, c_in: int, c_out: int, kernel_size: int, stride: int, input_size: int) -> nn.Module:
        return CayleyConv2d(c_in, c_out, kernel_size, stride, input_size=input_size, **self._layer_kwargs)

    def make_linear(self, in_features: int, out_features: int) -> nn.Module:
        return CayleyLinear(in_features, out_features)


class ConvexCombination(LipschitzModule):
    """``s x + (1 - s) body(x)`` with ``s = sigmoid(alpha)`` (the authors' ``ConvexCombo``; ``alpha`` trained, init
    0.5). Bound: ``s + (1 - s) L_body`` (a convex combination of the identity and the body)."""

    def __init__(self, body: nn.Module, alpha: float = 0.5):
        super().__init__()
        self.body = body
        self.alpha = nn.Parameter(torch.tensor([float(alpha)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.alpha).to(x.dtype)
        return s * x + (1 - s) * self.body(x)

    def lipschitz_bound(self) -> float:
        s = float(torch.sigmoid(self.alpha.detach().double()))
        return s + (1 - s) * lipschitz_bound_of(self.body)


class CayleyResNet9(LipschitzClassifier):
    """The Cayley paper's ResNet9 (authors' ``models.ResNet9``) for ``input_size`` 32 (module docstring).

    ``widths``: the four conv widths (paper: 64, 128, 256, 512); ``dense``: the hidden dense width (paper: 512).
    """

    family = "cayley"

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512), dense: int = 512, num_classes: int = 10,
                 input_size: int = 32, mean: Sequence[float] | None = None, **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for CayleyResNet9: {sorted(kwargs)}")
        if input_size % 16:
            raise ValueError(f"CayleyResNet9 needs an input side divisible by 16, got {input_size}")
        w1, w2, w3, w4 = (int(w) for w in widths)
        self.num_classes, self.num_features = num_classes, int(dense)
        mean = tuple(mean) if mean is not None else (CIFAR100_MEAN if num_classes == 100 else CIFAR10_MEAN)
        self.normalize = InputNormalize(mean, (1.0, 1.0, 1.0))
        s = input_size

        def conv(c_in: int, c_out: int, side: int) -> list[nn.Module]:
            return [CayleyConv2d(c_in, c_out, 3, input_size=side), MaxMin("halves")]

        def residual(c: int, side: int) -> nn.Module:
            return ConvexCombination(nn.Sequential(*conv(c, c, side), *conv(c, c, side)))

        self.features = nn.Sequential(
            *conv(3, w1, s), *conv(w1, w2, s), SumPool2d(2),
            residual(w2, s // 2),
            *conv(w2, w3, s // 2), SumPool2d(2), *conv(w3, w4, s // 4), SumPool2d(2),
            residual(w4, s // 8),
            SumPool2d(2), nn.Flatten(), CayleyLinear(w4 * (s // 16) ** 2, self.num_features), MaxMin("halves"),
        )
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return CayleyLinear(self.num_features, num_classes)


_NO_COUNT = ("no verified published parameter count (the paper's tables were not checked); lipzoo reports "
             "sum(p.numel()), alpha scalars included")

register_family(Family(
    name="cayley", paper=PAPER, model=CayleyKWLarge, module=__name__,
    variants={
        # KW-Large, width factor w = 1 (the paper's model): convs 32/64, dense 512/512
        "cayley_kwlarge": Variant(
            "KW-Large (w=1): Cayley convs 3->32, 32->32 (stride 2), 32->64, 64->64 (stride 2), GroupSort, Cayley "
            "dense 4096->512->512, Cayley head; mean-only normalisation",
            dict(channels=(32, 64), dense=(512, 512)), paper_params=2.0,
            paper_params_note="'2M' as quoted by the 1LLC paper (Table 4; secondary, one significant figure); lipzoo "
                              "counts 2.41M, alpha scalars included",
            doc="The Cayley paper's KW-Large network (width factor 1) with Cayley convolutions and dense layers."),
        "cayley_resnet9": Variant(
            "ResNet9: Cayley convs 3->64->128, window-sum pool, convex residual (128, 2 convs), 128->256, pool, "
            "256->512, pool, convex residual (512, 2 convs), pool, Cayley dense 2048->512, Cayley head; GroupSort",
            model=CayleyResNet9, paper_params_note=_NO_COUNT,
            doc="The Cayley paper's ResNet9 with Cayley convolutions, convex-combination residuals and Cayley dense "
                "layers."),
        # Compact CPU variant: the KW-Large convolutions, dense 256/256 (the 4096 x d1 dense layer holds most
        # parameters).
        "cayley_xs": Variant(
            "compact Cayley for 2-core CPU training: the KW-Large convolutions (32, 64) with dense 4096->256->256, "
            "Cayley head", dict(channels=(32, 64), dense=(256, 256)), compact=True,
            measured_training=cpu_training(658.4), targets={"cifar10": (0.62, 0.47)},
            doc="Compact Cayley network for CPU training: KW-Large convolutions, narrower dense layers."),
    },
    checkpoint_formats={"cayley": "lipzoo.convert._cayley"},
    reference_converter="lipzoo.convert._cayley",
    recipes={  # name -> lipzoo.train.Recipe fields, the compact CPU recipe first
        # Adam 0.01 won a 3-epoch ablation against Adam 0.001 and SGD 0.05 on the validation split
        # (results/ablations_new_families.md); EMA and the validation split as in sandwich_cpu_long
        "cayley_cpu": dict(
            model="cayley_xs", epochs=60, batch_size=256, optimizer="adam", lr=0.01, schedule="triangular",
            loss="xent", augment="crop_flip", pad_mode="constant", val_split=5000, ema_decay=0.999,
            description="Cayley on a 2-core CPU: Adam(0.01), triangular, xent (offset 2.12, T 0.25), crop+flip, "
            "60 epochs, EMA 0.999 (the averaged weights are exported and certified), 5,000 training images held out",
        ),
    },
    convnet_conv=lambda c, k, n: CayleyConv2d(c, c, k, input_size=n),
    bench_layers={"CayleyConv2d 3x3 (64 -> 64)": partial(CayleyConv2d, 64, 64, 3)},
))
