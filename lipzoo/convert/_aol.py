"""AOL (berndprach/1LipschitzLayersCompared, ``lipnn``: the PyTorch port of berndprach/AOL) modules and
checkpoints -> lipzoo.

Authors' conventions. ``AOLConv2d(cin, cout, k)`` / ``AOLConv2dOrth`` is an ``nn.Conv2d`` with ``padding='same'``,
``padding_mode='circular'`` and a torch parametrization of ``weight``: the state holds the unconstrained kernel as
``parametrizations.weight.original`` and ``bias``; the realised kernel is ``P / sqrt(v + 1e-6)`` over input
channels, exactly lipzoo's :class:`~lipzoo.layers.aol.AOLConv2d` with ``padding_mode='circular'``. PyTorch refuses
``padding='same'`` with a stride, so the port has no strided AOL layer.

The AOL paper's TensorFlow layers (berndprach/AOL ``AOLConv2D(filters, kernel_size, padding)``, ``AOLDense(units)``)
hold ``kernel_parameters`` ([kh, kw, in, out] / [in, out]) and ``bias_parameters`` and work on NHWC tensors:
:func:`tf_layer_state` transposes them to lipzoo's layout and :class:`ChannelsLast` applies the lipzoo layer to NHWC
inputs, so a recorded TF case is reproduced as a function of the authors' own layout. They have no strides either.

The 1LLC ConvNet (``lipnn.lip_conv_net.LipConvNet``; ConvNetXS..L in the paper) is rebuilt here from lipzoo layers
with the authors' module names, so its keys map one to one: ``ZeroConcatenation`` (zero channel pad), ``FirstConv``
(1x1), ``FirstActivation`` (MaxMin on adjacent channel pairs), ``Block{i}`` = [conv k x k, MaxMin] x length,
``FirstChannels(c/2)``, ``PixelUnshuffle(2)`` (last block k = 1), ``AdaptiveMaxPool`` (global max), ``ClassificationHead``
(1x1 conv, Flatten), ``FirstChannels(classes)``.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..layers.activations import MaxMin
from ..layers.aol import AOLConv2d, AOLLinear
from ..layers.shapes import ChannelPad, FirstChannels, PixelUnshuffle
from . import ConversionError
from ._common import load_exact, spec_parts

__all__ = ["from_reference", "convert_state_dict", "lipconvnet_1llc", "tf_layer_state", "ChannelsLast"]

_CONV_CLASSES = ("AOLConv2d", "AOLConv2dOrth", "AOLConv2dDirac")


def _conv(cin: int, cout: int, k: int) -> AOLConv2d:
    return AOLConv2d(cin, cout, k, padding_mode="circular")


def lipconvnet_1llc(base_width: int = 16, nrof_blocks: int = 5, nrof_layers_per_block: int = 3,
                    kernel_size: int = 3, nrof_classes: int = 10) -> nn.Sequential:
    """The 1LLC ``LipConvNet`` with AOL convolutions and MaxMin, from lipzoo layers, under the authors' names."""
    blocks = []
    for i in range(nrof_blocks):
        c, k = base_width * 2 ** i, kernel_size if i < nrof_blocks - 1 else 1
        layers: list[nn.Module] = []
        for _ in range(nrof_layers_per_block):
            layers += [_conv(c, c, k), MaxMin("adjacent")]
        layers += [FirstChannels(c // 2), PixelUnshuffle(2)]
        blocks.append((f"Block{i + 1}", nn.Sequential(*layers)))
    feats = base_width * 2 ** nrof_blocks
    return nn.Sequential(OrderedDict([
        ("ZeroConcatenation", ChannelPad(base_width)),
        ("FirstConv", _conv(base_width, base_width, 1)),
        ("FirstActivation", MaxMin("adjacent")),
        *blocks,
        ("AdaptiveMaxPool", nn.AdaptiveMaxPool2d(1)),
        ("ClassificationHead", nn.Sequential(_conv(feats, feats, 1), nn.Flatten())),
        ("FirstChannels", FirstChannels(nrof_classes)),
    ]))


_PARAM = re.compile(r"^(?:module\.)?(.*?)parametrizations\.weight\.original$")


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str = "aol-1llc", model: nn.Module | None = None
                       ) -> dict[str, torch.Tensor]:
    """``<prefix>parametrizations.weight.original`` -> ``<prefix>weight`` (the unconstrained kernel; lipzoo rescales
    it in the forward), other keys unchanged (a DataParallel ``module.`` prefix is removed)."""
    if fmt != "aol-1llc":
        raise ConversionError(f"_aol cannot convert format {fmt!r}")
    out = {}
    for key, value in state.items():
        m = _PARAM.match(key)
        out[f"{m.group(1)}weight" if m else key.removeprefix("module.")] = value
    return out


class ChannelsLast(nn.Module):
    """``layer`` applied to an NHWC tensor (NHWC in, NHWC out); a permutation on each side, so the bound is the
    layer's."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def lipschitz_bound(self) -> float:
        return self.layer.lipschitz_bound()


def tf_layer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TF ``kernel_parameters`` [kh, kw, in, out] or [in, out] and ``bias_parameters`` -> lipzoo ``weight``
    (out, in, kh, kw) or (out, in) and ``bias``."""
    k = state["kernel_parameters"]
    weight = k.permute(3, 2, 0, 1) if k.dim() == 4 else k.T
    return {"weight": weight.contiguous(), "bias": state["bias_parameters"]}


def _tf_layer(cls: str, args: list, kwargs: dict, c: dict[str, Any]) -> nn.Module:
    if cls == "AOLDense":
        return AOLLinear(c["input_channels"], args[0])
    k = args[1][0] if isinstance(args[1], (list, tuple)) else args[1]
    if kwargs.get("padding", "valid").lower() != "same" or kwargs.get("strides", (1, 1)) not in ((1, 1), [1, 1]):
        raise ConversionError("only AOLConv2D(padding='same') with stride 1 has a lipzoo equivalent")
    return AOLConv2d(c["input_channels"], args[0], k, padding_mode="zeros")


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    cls, args, kwargs, dtype = spec_parts(spec, state)
    if cls in ("AOLConv2D", "AOLDense"):  # the AOL paper's TensorFlow layers (NHWC)
        layer = load_exact(_tf_layer(cls, args, kwargs, spec["constructor"]), tf_layer_state(state), dtype)
        return ChannelsLast(layer) if cls == "AOLConv2D" else layer
    if cls in _CONV_CLASSES:
        if kwargs.get("padding", "same") != "same" or kwargs.get("padding_mode", "circular") != "circular":
            raise ConversionError("only the 1LLC default padding='same', padding_mode='circular' is supported")
        module = _conv(args[0], args[1], args[2])
    elif cls == "LipConvNet":
        if kwargs.get("conv") not in _CONV_CLASSES or kwargs.get("activation") != "MaxMin" or kwargs.get("linear"):
            raise ConversionError("only LipConvNet(conv=AOLConv2d, activation=MaxMin, linear=None) is supported")
        module = lipconvnet_1llc(**{k: kwargs[k] for k in ("base_width", "nrof_blocks", "nrof_layers_per_block",
                                                           "kernel_size", "nrof_classes") if k in kwargs})
    else:
        raise ConversionError(f"no lipzoo equivalent for AOL class {cls!r}")
    module = module.to(dtype)
    module.load_state_dict({k: v.to(dtype) for k, v in convert_state_dict(state).items()}, strict=True)
    return module
