"""Cayley (locuslab/orthogonal-convolutions) modules and checkpoints -> lipzoo.

Authors' conventions (``layers.py``, ``models.py``). ``CayleyConv(cin, cout, k[, stride=2])`` is an ``nn.Conv2d``
with ``weight`` (cout, cin', k', k') (``cin' = 4 cin``, ``k' = max(1, k // 2)`` for stride 2), ``bias`` and a 0-dim
``alpha`` that its first forward creates; lipzoo's :class:`~lipzoo.layers.cayley.CayleyConv2d` has the same
parameters and math. ``CayleyLinear(fin, fout)``: ``weight``, ``bias``, 0-dim ``alpha``. Their training script
builds ``nn.Sequential(Normalize(mu, std or 1.0), KWLarge(...))``: keys ``1.model.{i}.*`` (``module.`` under
DataParallel) where ``model`` is the KWLarge layer list; indices ``0..12`` are lipzoo's ``features`` and ``13`` its
``head`` (the same order: conv, GroupSort, conv s2, GroupSort, conv, GroupSort, conv s2, GroupSort, Flatten, linear,
GroupSort, linear, GroupSort, linear).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..layers.cayley import CayleyConv2d, CayleyLinear
from . import ConversionError
from ._common import load_exact, spec_parts

__all__ = ["from_reference", "convert_state_dict", "kwlarge_keys"]


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    cls, args, kwargs, dtype = spec_parts(spec, state)
    c = spec.get("constructor", {})
    if cls == "CayleyConv":
        cin, cout, k = args[:3]
        layer = CayleyConv2d(cin, cout, k, kwargs.get("stride", 1), bias=kwargs.get("bias", True),
                             input_size=c.get("input_size"))
        return load_exact(layer, state, dtype)
    if cls == "CayleyLinear":
        return load_exact(CayleyLinear(args[0], args[1], bias=kwargs.get("bias", True)), state, dtype)
    if cls == "Sequential(Normalize, KWLarge)":
        from ..models.cayley import CayleyKWLarge

        model = CayleyKWLarge(channels=c["channels"], dense=c["dense"], num_classes=c["num_classes"],
                              input_size=c["input_size"], mean=tuple(c["mean"])).to(dtype)
        if c.get("std", 1.0) != 1.0:
            raise ConversionError("only the certified runs' Normalize(mu, 1.0) is supported")
        with torch.no_grad():  # the authors subtract the mean in the input's dtype
            model.normalize.mean.copy_(torch.tensor(c["mean"], dtype=dtype).view(1, -1, 1, 1))
        model.load_state_dict(convert_state_dict({k: v.to(dtype) for k, v in state.items()}, "cayley", model))
        return model
    raise ConversionError(f"no lipzoo equivalent for Cayley class {cls!r}")


_KEY = re.compile(r"^(?:module\.)?1\.model\.(\d+)\.(.+)$")
_HEAD_INDEX = 13  # KWLarge's last linear layer


def kwlarge_keys(state: dict[str, torch.Tensor], model: nn.Module, family: str) -> dict[str, torch.Tensor]:
    """``nn.Sequential(Normalize, KWLarge)`` keys ``[module.]1.model.{i}.<name>`` -> lipzoo ``KWLargeNet`` keys
    (``features.{i}`` for ``i < 13``, ``head`` for 13); the model's normalisation buffers are kept."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if not m:
            raise ConversionError(f"unexpected key {key!r} in a {family} KWLarge checkpoint "
                                  "(expected [module.]1.model.<i>.*, the authors' Sequential(Normalize, KWLarge))")
        i, name = int(m.group(1)), m.group(2)
        out[f"head.{name}" if i == _HEAD_INDEX else f"features.{i}.{name}"] = value
    for key, value in model.state_dict().items():
        if key.startswith("normalize."):
            out[key] = value.clone()
    return out


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Authors' ``Sequential(Normalize, KWLarge(CayleyConv, CayleyLinear))`` state -> lipzoo ``CayleyKWLarge``."""
    if fmt != "cayley":
        raise ConversionError(f"_cayley cannot convert format {fmt!r}")
    return kwlarge_keys(state, model, "Cayley")
