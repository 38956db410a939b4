"""SLL networks (Araujo et al., "A Unified Algebraic Perspective on Lipschitz Neural Networks", ICLR'23).

Structure of the authors' ``LipschitzNetwork`` (``core/models/model.py``):
``[0,1] image -> subtract mean (std 1, so L = 1) -> zero-pad channels 3 -> w -> n_conv x SLL conv (w, inner 5,
all at 32x32) -> 4x4 window sum / 4 -> flatten (64 w) -> n_dense x SLL dense (inner 2048) -> LLN``.
The certifier uses the LLN pairwise rule with the body's bound (1 up to float error).
"""
from __future__ import annotations

from functools import partial
from torch import nn

from ..layers.heads import LLN
from ..layers.normalize import CIFAR100_MEAN, SLL_CIFAR10_MEAN, InputNormalize
from ..layers.shapes import ChannelPad, SLLAvgPool
from ..layers.sll import SLLConv2d, SLLLinear
from ._base import LipschitzClassifier
from ._registry import Family, Variant, cpu_training, register_family

__all__ = ["ResidualNet", "SLLNet"]

PAPER = "Araujo et al., A Unified Algebraic Perspective on Lipschitz Neural Networks, ICLR 2023"


class ResidualNet(LipschitzClassifier):
    """The SLL / CPL network skeleton (SLL's ``LipschitzNetwork``, CPL's ``ConvexPotentialLayerNetwork``):
    ``[0,1] image -> subtract mean (std 1, L = 1) -> zero-pad channels 3 -> width -> n_conv x make_conv (all at
    input_size) -> pool x pool window sum / pool -> flatten (width * (input_size / pool)^2 features) -> n_dense x
    make_linear -> head``. Subclasses give the layers, the head and ``cifar10_mean``; ``num_classes=100`` uses the
    CIFAR-100 mean."""

    cifar10_mean: tuple[float, float, float] = SLL_CIFAR10_MEAN

    def __init__(self, width: int, n_conv: int, n_dense: int, conv_inner_dim: int, dense_inner_dim: int,
                 num_classes: int, input_size: int, pool: int, mean: tuple[float, float, float] | None, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        self.num_classes = num_classes
        self.normalize = InputNormalize(mean or (CIFAR100_MEAN if num_classes == 100 else self.cifar10_mean),
                                        (1.0, 1.0, 1.0))
        side = input_size // pool
        self.num_features = width * side * side
        layers: list[nn.Module] = [ChannelPad(width)]
        layers += [self.make_conv(width, conv_inner_dim, input_size) for _ in range(n_conv)]
        layers += [SLLAvgPool(pool), nn.Flatten()]
        layers += [self.make_linear(self.num_features, dense_inner_dim) for _ in range(n_dense)]
        self.features = nn.Sequential(*layers)
        self.head = self._make_head(num_classes)

    def make_conv(self, channels: int, inner_dim: int, input_size: int) -> nn.Module:
        raise NotImplementedError  # pragma: no cover - per family

    def make_linear(self, features: int, inner_dim: int) -> nn.Module:
        raise NotImplementedError  # pragma: no cover - per family


class SLLNet(ResidualNet):
    """The SLL ``LipschitzNetwork``: :class:`ResidualNet` with SLL layers and an LLN head."""

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
        self.q_mode = q_mode
        super().__init__(width, n_conv, n_dense, conv_inner_dim, dense_inner_dim, num_classes, input_size, pool, mean,
                         **kwargs)

    def make_conv(self, channels: int, inner_dim: int, input_size: int) -> nn.Module:
        return SLLConv2d(channels, inner_dim, 3, q_mode=self.q_mode)

    def make_linear(self, features: int, inner_dim: int) -> nn.Module:
        return SLLLinear(features, inner_dim, q_mode=self.q_mode)

    def _make_head(self, num_classes: int) -> nn.Module:
        return LLN(self.num_features, num_classes, bias=True, eps=1e-12)


def _paper_size(size: str, width: int, n_conv: int, n_dense: int, millions: float) -> Variant:
    """SLL S/M/L/XL: conv inner dimension 5, dense inner dimension 2048."""
    return Variant(
        f"SLL {size}: {n_conv} conv (width {width}, inner 5), {n_dense} dense (inner 2048), LLN head",
        dict(width=width, n_conv=n_conv, n_dense=n_dense, conv_inner_dim=5, dense_inner_dim=2048),
        doc=f"SLL {size}: {n_conv} SLL convs (width {width}, inner 5), {n_dense} SLL dense layers (inner 2048), LLN head.",
        paper_params=millions, paper_params_note="LBDN Table 2 / 1LLC Table 4 (CIFAR-10 count)")


# Compact CPU variant: same structure; wider conv inner dimension and a narrower dense part (<= 3M params).
_XS = dict(width=32, n_conv=8, n_dense=4, conv_inner_dim=32, dense_inner_dim=256)

# measured_training: scripts/bench.py models, results/bench_models.json (270.6 images/s)
register_family(Family(
    name="sll", paper=PAPER, model=SLLNet, module=__name__,
    variants={
        "sll_s": _paper_size("S", 45, 20, 7, 41),
        "sll_m": _paper_size("M", 60, 30, 10, 78),
        "sll_l": _paper_size("L", 90, 50, 10, 118),
        "sll_xl": _paper_size("XL", 120, 70, 15, 236),
        "sll_xs": Variant(
            "compact SLL for 2-core CPU training: " + ", ".join(f"{k}={v}" for k, v in _XS.items()), _XS,
            doc="Compact SLL for CPU training (<= 3M parameters): SLL convs at 32x32, SLL dense layers, LLN head.",
            compact=True, measured_training=cpu_training(270.6), targets={"cifar10": (0.65, 0.50)}),
    },
    checkpoint_formats={"sll": "lipzoo.convert._sll", "sll-legacy": "lipzoo.convert._sll"},
    reference_converter="lipzoo.convert._sll",
    recipes={  # name -> lipzoo.train.Recipe fields, the compact CPU recipe first
        "sll_cpu": dict(
            model="sll_xs", epochs=50, batch_size=256, optimizer="adam", lr=0.01, betas=(0.5, 0.9),
            schedule="triangular", loss="xent", augment="crop_flip", pad_mode="reflect",
            # half the LBDN offset and temperature: with L = 1, offset 2.12 asks for a logit margin ~10x what 36/255
            # needs (sqrt(2) * 0.14); halving both doubles the logit scale for the same offset in the loss
            offset=1.0607, temperature=0.125,
            description="SLL recipe shortened for a 2-core CPU: Adam(0.01, (0.5, 0.9)), triangular, xent (offset "
            "1.06, T 0.125), crop+flip",
        ),
        "sll_paper": dict(
            model="sll_s", epochs=1000, batch_size=256, optimizer="adam", lr=0.01, betas=(0.5, 0.9),
            weight_decay=0.0, schedule="triangular", loss="xent", augment="crop_flip_jitter", pad_mode="reflect",
            description="SLL repo defaults: Adam(0.01, betas (0.5, 0.9)), triangular schedule [0,.4,.8,1]N -> "
            "[0,lr,lr/20,0], xent (offset 2.12, T 0.25), crop(reflect)+flip+colour jitter, 1000 epochs; global "
            "batch 64 per GPU x 4 GPUs = 256",
        ),
    },
    convnet_conv=lambda c, k, n: SLLConv2d(c, c, k),
    bench_layers={"SLLConv2d(64, inner 64)": partial(SLLConv2d, 64, 64),
                  "SLLConv2d(64, inner 5)": partial(SLLConv2d, 64, 5)},
))
