"""The 1LLC benchmark ConvNet (Prach et al., "1-Lipschitz Layers Compared: Memory, Speed, and Certifiable
Robustness", CVPR 2024, arXiv 2311.16833; code berndprach/1LipschitzLayersCompared, ``models/simplified_conv_net.py``)
at its four sizes, taking the convolution of any lipzoo family.

Structure (paper Tables 5-7), for width ``w`` (XS 16, S 32, M 64, L 128) and 32x32 inputs:

``[0,1] image -> subtract the mean (std 1, L = 1) -> zero-pad channels 3 -> w -> conv 1x1 (w -> w) -> MaxMin ->
5 x DownsizeBlock -> conv 1x1 (32w -> 32w) -> first num_classes channels``, where a DownsizeBlock at width ``t`` is
``5 x [conv (t -> t, k) + MaxMin] -> first t/2 channels -> PixelUnshuffle(2)`` (``t -> 2t``, side halves); ``k = 3``
except in the last block (``k = 1``, on a 2x2 map). After five blocks the map is ``32w x 1 x 1``, so the paper's
``AdaptiveMaxPool2d(1)`` is the identity and is left out. MaxMin pairs adjacent channels, as 1LLC does.

The convolution is the family's square "same" convolution (``Family.convnet_conv``): SOC, LOT, Sandwich, Cayley,
BCOP, AOL, and the residual layers of SLL and CPL (inner width = channels, as 1LLC's Remark 1). 1LLC's head is the
family's 1x1 convolution, or a dense layer for Cayley/BCOP/Sandwich; lipzoo uses the family's 1x1 convolution for
every family (on a 1x1 map both are a matrix of the same class).

Proven bound: the product of the convolutions' proven bounds (every other part is 1-Lipschitz), so the head rule is
``"lipschitz"``: radius ``margin / (sqrt(2) L)``. Paper parameter counts (Table 8, standard convolution): 1.57M /
6.28M / 25.12M / 100.46M; families whose kernel is parametrised differently (BCOP, SLL, CPL, Sandwich ...) have
other counts, which ``model_info`` reports as counted.
"""
from __future__ import annotations

from torch import nn

from ..layers.activations import MaxMin
from ..layers.normalize import CIFAR10_MEAN, CIFAR100_MEAN, InputNormalize
from ..layers.shapes import ChannelPad, FirstChannels, PixelUnshuffle
from ._base import LipschitzClassifier
from ._registry import FAMILIES, Family, Variant, cpu_training, register_family

__all__ = ["ConvNet", "WIDTHS"]

PAPER = "Prach, Brau, Buttazzo & Lampert, 1-Lipschitz Layers Compared: Memory, Speed, and Certifiable Robustness, CVPR 2024"

WIDTHS = {"xs": 16, "s": 32, "m": 64, "l": 128}
PAPER_PARAMS = {"xs": 1.57, "s": 6.28, "m": 25.12, "l": 100.46}


def convnet_families() -> list[str]:
    """The families whose convolution the ConvNet takes (those declaring ``convnet_conv``)."""
    return sorted(name for name, f in FAMILIES.items() if f.convnet_conv is not None)


class ConvNet(LipschitzClassifier):
    """The 1LLC ConvNet with the convolution of family ``conv``; see the module docstring.

    Args:
        conv: a family name (``'aol'``, ``'cpl'``, ``'soc'`` ...; see :func:`convnet_families`).
        width: ``w`` (16 / 32 / 64 / 128 for XS / S / M / L).
        kernel_size: kernel of the first four blocks (the last uses 1x1).
        blocks / convs_per_block: 5 and 5 in the paper (``input_size`` must equal ``2 ** blocks``).
        mean: input mean (default: CIFAR-10's, CIFAR-100's for ``num_classes=100``); std is 1.
    """

    family = "convnet"

    def __init__(self, conv: str = "aol", width: int = 16, kernel_size: int = 3, blocks: int = 5,
                 convs_per_block: int = 5, num_classes: int = 10, input_size: int = 32,
                 mean: tuple[float, float, float] | None = None, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for ConvNet: {sorted(kwargs)}")
        if conv not in convnet_families():
            raise ValueError(f"conv must be one of {convnet_families()}, got {conv!r}")
        if input_size != 2 ** blocks or width % 2 or width < 4:
            raise ValueError(f"need input_size == 2 ** blocks and an even width >= 4, got {input_size}, {blocks}, {width}")
        self.conv, self.width, self.num_classes = conv, width, num_classes
        self._make_conv = FAMILIES[conv].convnet_conv
        self.normalize = InputNormalize(mean or (CIFAR100_MEAN if num_classes == 100 else CIFAR10_MEAN), (1.0, 1.0, 1.0))
        layers: list[nn.Module] = [ChannelPad(width), self._make_conv(width, 1, input_size), MaxMin("adjacent")]
        channels, side = width, input_size
        for block in range(blocks):
            k = 1 if block == blocks - 1 else kernel_size
            for _ in range(convs_per_block):
                layers += [self._make_conv(channels, k, side), MaxMin("adjacent")]
            layers += [FirstChannels(channels // 2), PixelUnshuffle(2)]
            channels, side = 2 * channels, side // 2
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        if num_classes > channels:
            raise ValueError(f"num_classes={num_classes} exceeds the {channels} output channels of width {width}")
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        return nn.Sequential(self._make_conv(self.num_features, 1, 1), FirstChannels(num_classes), nn.Flatten())


def _variant(size: str) -> Variant:
    w = WIDTHS[size]
    return Variant(
        f"1LLC ConvNet-{size.upper()} (width {w}): 5 downsizing blocks of 5 convs + MaxMin; conv=<family> picks the "
        "convolution (default AOL)",
        dict(width=w),
        doc=f"1LLC ConvNet-{size.upper()} (width {w}) with any family's convolution: create_model('convnet_{size}', conv='cpl').",
        paper_params=PAPER_PARAMS[size],
        paper_params_note="1LLC Table 8, standard 3x3 convolution (AOL/Cayley/SOC/LOT kernels count the same; "
                          "other parametrisations differ)",
        compact=size == "xs", measured_training=cpu_training(423.6) if size == "xs" else None)


register_family(Family(
    name="convnet", paper=PAPER, model=ConvNet, module=__name__,
    variants={f"convnet_{size}": _variant(size) for size in WIDTHS},
))
