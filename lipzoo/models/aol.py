"""AOL networks (Prach & Lampert, "Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz Networks",
ECCV 2022, arXiv 2208.03160; code berndprach/AOL, TensorFlow).

The paper's AOL-Small / -Medium / -Large are the repo's patch-wise model (``models/patchwise.py``, selected by
``get_run_setting.py``: ``model_name="patch"``, ``size_parameter`` 16 / 32 / 48 = ``filters_after_downsize``):

``[0,1] image -> 4x4 patches concatenated along channels (3 -> 48 channels at 8x8) -> AOL 1x1 (48 -> 192) ->
MaxMin -> 12 x [AOL 3x3 (192 -> 192), MaxMin] -> AOL 1x1 (192 -> 192) -> first f channels -> flatten (64 f) ->
14 AOL dense (64 f -> 64 f) with MaxMin between them -> first num_classes entries``.

MaxMin pairs adjacent channels (the TF code reshapes the last axis into (C/2, 2)). Every part is 1-Lipschitz,
so the head rule is ``"lipschitz"``: radius ``margin / (sqrt(2) L)``. The input is only centred (std 1, L = 1),
as lipzoo does for every family without a std in its code. lipzoo's patch extraction is
``PixelUnshuffle(4)`` (channel ``c*16 + 4*dy + dx``) and flattening is NCHW: both are permutations of the TF
layouts (``(dy, dx, c)`` and NHWC), so the function class is the same and the bound is unchanged; the TF network's
weights load with ``checkpoint_format='aol-tf'`` (:mod:`lipzoo.convert._aol`), which applies the permutations.

Proven bound: the product of the AOL layers' realised-weight bounds (each 1 up to float error, see
:mod:`lipzoo.layers.aol`); MaxMin, unshuffle, truncation and flattening have bound 1.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from ..layers.activations import MaxMin
from ..layers.aol import AOLConv2d, AOLLinear
from ..layers.normalize import CIFAR10_MEAN, CIFAR100_MEAN, InputNormalize
from ..layers.shapes import FirstChannels, PixelUnshuffle
from ._base import LipschitzClassifier
from ._registry import Family, Variant, cpu_training, register_family

__all__ = ["AOLNet"]

PAPER = "Prach & Lampert, Almost-Orthogonal Layers for Efficient General-Purpose Lipschitz Networks, ECCV 2022"


class AOLNet(LipschitzClassifier):
    """The AOL paper's patch-wise network (see the module docstring); ``num_classes=100`` uses the CIFAR-100 mean."""

    family = "aol"

    def __init__(
        self,
        patch_size: int = 4,
        encoding_channels: int = 192,
        n_encoding: int = 12,
        filters_after_downsize: int = 16,
        n_dense: int = 14,
        kernel_size: int = 3,
        num_classes: int = 10,
        input_size: int = 32,
        padding_mode: str = "zeros",
        mean: tuple[float, float, float] | None = None,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for AOLNet: {sorted(kwargs)}")
        if n_dense < 1:
            raise ValueError("AOLNet needs at least one dense layer (the last one is the head)")
        if filters_after_downsize > encoding_channels or encoding_channels % 2:
            raise ValueError("AOLNet needs an even encoding_channels >= filters_after_downsize (MaxMin pairs channels)")
        side = input_size // patch_size
        self.num_classes = num_classes
        self.num_features = filters_after_downsize * side * side
        if num_classes > self.num_features:
            raise ValueError(f"num_classes={num_classes} exceeds the dense width {self.num_features}")
        mean = mean or (CIFAR100_MEAN if num_classes == 100 else CIFAR10_MEAN)
        self.normalize = InputNormalize(mean, (1.0, 1.0, 1.0))
        e = encoding_channels
        layers: list[nn.Module] = [
            PixelUnshuffle(patch_size),
            AOLConv2d(3 * patch_size ** 2, e, 1, init="orthogonal"),
            MaxMin(pairing="adjacent"),
        ]
        for _ in range(n_encoding):
            layers += [AOLConv2d(e, e, kernel_size, padding_mode=padding_mode, init="dirac"),
                       MaxMin(pairing="adjacent")]
        layers += [AOLConv2d(e, e, 1, init="dirac"), FirstChannels(filters_after_downsize), nn.Flatten()]
        for _ in range(n_dense - 1):
            layers += [AOLLinear(self.num_features, self.num_features, init="identity"), MaxMin(pairing="adjacent")]
        self.features = nn.Sequential(*layers)
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        # the last AOL dense layer (full width, identity init) followed by the first num_classes outputs
        return nn.Sequential(AOLLinear(self.num_features, self.num_features, init="identity"), FirstChannels(num_classes))


def _paper_size(size: str, name: str, f: int, paper_params: float | None = None, note: str = "") -> Variant:
    """AOL-S/M/L: the repo's ``size_parameter`` = ``filters_after_downsize`` ``f``, everything else at its defaults."""
    return Variant(
        f"AOL-{size} (the paper's patch-wise network): 4x4 patches, 12 AOL 3x3 convs (192 channels), {f} channels "
        f"kept, 13 AOL dense layers ({64 * f} units) + AOL dense head, first-classes output",
        dict(filters_after_downsize=f),
        doc=f"AOL-{name}: the paper's patch-wise network, {f} channels after downsizing ({64 * f} dense units).",
        paper_params=paper_params,
        paper_params_note=note or "the AOL paper gives widths only (Table 2), no parameter count; lipzoo reports "
                                  "sum(p.numel())")


# Compact CPU variant: the same patch-wise structure, narrower encoder and dense part (<= 3M parameters).
_XS = dict(encoding_channels=96, n_encoding=12, filters_after_downsize=8, n_dense=6)

register_family(Family(
    name="aol", paper=PAPER, model=AOLNet, module=__name__,
    variants={
        "aol_s": _paper_size("S", "Small", 16),
        "aol_m": _paper_size("M", "Medium", 32),
        "aol_l": _paper_size("L", "Large", 48, 136.0, "136M as quoted by the 1LLC paper (Table 4; secondary, the AOL paper "
                                                      "gives no count); lipzoo counts 136.19M"),
        "aol_xs": Variant("compact AOL for 2-core CPU training: the patch-wise AOL network with "
                          + ", ".join(f"{k}={v}" for k, v in _XS.items()), _XS, compact=True,
                          measured_training=cpu_training(464.7), targets={"cifar10": (0.62, 0.47)},
                          doc="Compact AOL for CPU training (<= 3M parameters): the patch-wise AOL network, narrower."),
    },
    checkpoint_formats={"aol-1llc": "lipzoo.convert._aol", "aol-tf": "lipzoo.convert._aol"},
    reference_converter="lipzoo.convert._aol",
    convnet_conv=lambda c, k, n: AOLConv2d(c, c, k),
    bench_layers={"AOLConv2d 3x3 (64 -> 64)": partial(AOLConv2d, 64, 64, 3)},
))
