"""Sandwich / LBDN (``acfr/LBDN``) modules and checkpoints -> lipzoo.

Authors' classes and their lipzoo counterparts (same math, same parameter names):

* ``SandwichFc``, ``SandwichLin``, ``SandwichConv`` -> :mod:`lipzoo.layers.sandwich` (``weight``, ``bias``, ``psi``,
  0-dim ``alpha``); ``SandwichConv1``/``SandwichConv1Lin`` call their weight ``kernel``.
* ``LinearNormalized`` -> :class:`~lipzoo.layers.heads.LLN` (``eps=1e-12``).
* ``KWL`` / ``DNN`` -> :class:`~lipzoo.models.sandwich.SandwichNet`; the authors' ``model.<i>`` becomes
  ``features.<i>`` and the last layer ``head``. Their checkpoints (``torch.save(model.state_dict())`` in
  ``train.py``) hold no normalisation (it is a dataset transform there): the lipzoo model keeps its own.
* ``Toy`` -> :func:`~lipzoo.models.sandwich.sandwich_mlp` (``model.<i>`` -> ``<i>``).

The authors create the conv ``alpha`` on the first forward (as ``||W_hat||_F`` on that input's grid). A
checkpoint saved before any forward lacks it; :func:`convert_state_dict` then fills in that same value for the
model's input size.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from . import ConversionError
from ..layers.heads import LLN
from ..layers.sandwich import SandwichConv, SandwichConv1, SandwichConv1Lin, SandwichFc, SandwichLin
from ..models.sandwich import SandwichNet, dnn_config, kwl_config, sandwich_mlp

__all__ = ["from_reference", "convert_state_dict"]

_LAYER_ARGS = {  # authors' positional argument names, in order
    "SandwichFc": ("in_features", "out_features", "bias", "scale"),
    "SandwichLin": ("in_features", "out_features", "bias", "scale", "AB"),
    "SandwichConv1": ("cin", "cout", "scale"),
    "SandwichConv1Lin": ("cin", "cout", "scale"),
    "LinearNormalized": ("in_features", "out_features", "bias", "scale"),
    "SandwichConv": ("in_channels", "out_channels", "kernel_size"),
}


def _arguments(cls: str, ctor: dict[str, Any]) -> dict[str, Any]:
    args, kwargs = list(ctor.get("args", [])), dict(ctor.get("kwargs", {}))
    names = _LAYER_ARGS[cls]
    if len(args) > len(names):
        raise ConversionError(f"{cls}: unsupported positional arguments {args[len(names):]} (only {names})")
    out = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in out:
            raise ConversionError(f"{cls}: argument {k!r} given twice")
        out[k] = v
    return out


def _build_layer(cls: str, ctor: dict[str, Any]) -> nn.Module:
    a = _arguments(cls, ctor)
    try:
        if cls == "SandwichFc":
            return SandwichFc(a["in_features"], a["out_features"], bias=a.get("bias", True), scale=a.get("scale", 1.0))
        if cls == "SandwichLin":
            return SandwichLin(a["in_features"], a["out_features"], bias=a.get("bias", True),
                               scale=a.get("scale", 1.0), AB=a.get("AB", False))
        if cls in ("SandwichConv1", "SandwichConv1Lin"):
            layer = SandwichConv1 if cls == "SandwichConv1" else SandwichConv1Lin
            return layer(a["cin"], a["cout"], scale=a.get("scale", 1.0))
        if cls == "LinearNormalized":
            if float(a.get("scale", 1.0)) != 1.0:
                raise ConversionError("LinearNormalized with an input scale != 1 has no lipzoo counterpart")
            return LLN(a["in_features"], a["out_features"], bias=a.get("bias", True), eps=1e-12)
        # SandwichConv: an nn.Conv2d subclass; stride 2 is only recognised as a keyword (authors' code)
        unknown = set(a) - {"in_channels", "out_channels", "kernel_size", "stride", "padding", "bias", "scale"}
        if unknown:
            raise ConversionError(f"SandwichConv: unsupported arguments {sorted(unknown)}")
        if a.get("stride", 1) not in (1, 2):
            raise ConversionError(f"SandwichConv: stride {a['stride']} is not supported (1 or 2)")
        # `padding` is ignored by the authors' forward (circular convolution on the input grid)
        return SandwichConv(a["in_channels"], a["out_channels"], a["kernel_size"], stride=a.get("stride", 1),
                            bias=a.get("bias", True), scale=a.get("scale", 1.0))
    except KeyError as e:
        raise ConversionError(f"{cls}: missing constructor argument {e}") from None


def _build_model(cls: str, config: dict[str, Any]) -> nn.Module:
    layer = config.get("layer", "Sandwich")
    if layer != "Sandwich" and cls != "DNN":
        raise ConversionError(f"{cls} with layer={layer!r}: only the Sandwich layers are converted")
    if config.get("gamma") is None:
        raise ConversionError(f"{cls}: the Sandwich networks need gamma (the network's Lipschitz bound)")
    gamma = float(config["gamma"])
    in_ch, ncls = int(config.get("in_channels", 3)), int(config["num_classes"])
    if cls == "Toy":
        return sandwich_mlp(in_ch, ncls, width=86, depth=9, gamma=gamma)
    if cls == "KWL":
        args = kwl_config(int(config.get("width", 1)), gamma=gamma)
        args["input_size"] = int(config["img_size"])
    else:  # DNN: `--model DNN` forces layer Sandwich and LLN in the authors' main.py
        args = dnn_config(int(config["img_size"]), lln=bool(config.get("LLN", True)), gamma=gamma)
    # reference modules take inputs that are already normalised (a dataset transform in the authors' code)
    args.update(normalized=False, mean=(0.0,) * in_ch, std=(1.0,) * in_ch)
    return SandwichNet(num_classes=ncls, in_chans=in_ch, **args)


def _target_dtype(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.dtype:
    if spec.get("dtype"):
        dtype = getattr(torch, str(spec["dtype"]), None)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ConversionError(f"unknown dtype {spec['dtype']!r}")
        return dtype
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    return floats[0] if floats else torch.get_default_dtype()


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The lipzoo module equivalent to the authors' ``spec['class']`` (constructor in ``spec['constructor']``)
    with ``state`` (authors' keys) loaded, in ``spec['dtype']`` (else the state's dtype), in eval mode.

    Whole-model fixtures store float32 values for a float64 run: the state is cast to the target dtype first.
    """
    cls, ctor = spec.get("class"), spec.get("constructor", {})
    if cls in _LAYER_ARGS:
        module = _build_layer(cls, ctor)
    elif cls in ("KWL", "DNN", "Toy"):
        module = _build_model(cls, dict(ctor.get("config", {})))
    else:
        raise ConversionError(f"no lipzoo counterpart for the LBDN class {cls!r}")
    module = module.to(_target_dtype(spec, state))
    module.load_state_dict(convert_state_dict(state, "lbdn", module), strict=True)
    return module.eval()


_INDEXED = re.compile(r"^model\.(\d+)\.(.+)$")


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Map an LBDN state dict (``fmt='lbdn'``; optional ``module.`` prefix) onto ``model``'s keys and dtype.

    ``model`` is a :class:`SandwichNet` (``model.<i>`` -> ``features.<i>``, the last index -> ``head``; the
    normalisation buffers are kept from ``model``), an ``nn.Sequential`` (``model.<i>`` -> ``<i>``), or a
    single layer (keys unchanged). ``kernel`` -> ``weight`` for the 1x1 forms; ``alpha`` becomes 0-dim.
    """
    if fmt != "lbdn":
        raise ConversionError(f"the Sandwich converter reads checkpoint_format 'lbdn', not {fmt!r}")
    target = model.state_dict()
    modules = dict(model.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        m = _INDEXED.match(key)
        if isinstance(model, SandwichNet):
            if not m:
                raise ConversionError(f"unexpected LBDN key {key!r} for a SandwichNet (expected 'model.<i>.*')")
            i, rest = int(m.group(1)), m.group(2)
            n = len(model.features)
            if i > n:
                raise ConversionError(f"LBDN key {key!r}: the model has only {n + 1} layers")
            prefix = "head" if i == n else f"features.{i}"
        elif isinstance(model, nn.Sequential):
            if not m:
                raise ConversionError(f"unexpected LBDN key {key!r} for a Sequential (expected 'model.<i>.*')")
            prefix, rest = m.group(1), m.group(2)
        else:
            prefix, rest = "", key
        owner = modules.get(prefix)
        if rest == "kernel" and isinstance(owner, SandwichConv1Lin):
            rest = "weight"
        new = f"{prefix}.{rest}" if prefix else rest
        if new not in target:
            raise ConversionError(f"LBDN key {key!r} -> {new!r} has no place in {type(model).__name__}")
        if rest == "alpha" and value.numel() == 1:
            value = value.reshape(())
        if value.shape != target[new].shape:
            raise ConversionError(f"{key!r}: shape {tuple(value.shape)} != lipzoo {new!r} {tuple(target[new].shape)}")
        out[new] = value.to(target[new].dtype) if value.is_floating_point() else value
    for name, mod in modules.items():
        prefix = f"{name}." if name else ""
        if isinstance(mod, SandwichConv) and f"{prefix}alpha" not in out and f"{prefix}weight" in out:
            out[f"{prefix}alpha"] = _lazy_alpha(mod, out[f"{prefix}weight"])
    if isinstance(model, SandwichNet):
        for key in ("normalize.mean", "normalize.std"):
            out.setdefault(key, target[key])
    return out


def _lazy_alpha(layer: SandwichConv, weight: torch.Tensor) -> torch.Tensor:
    """The authors' lazily created conv alpha: ``||W_hat||_F`` on the grid of the layer's input size."""
    if layer.input_size is None:
        raise ConversionError("the checkpoint lacks a SandwichConv alpha and the layer has no input_size to "
                              "recreate it (the authors create it on the first forward)")
    return layer.fft_weight_norm(layer.input_size, weight=weight).to(weight.dtype)
