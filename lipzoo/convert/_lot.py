"""AI-secure/Layerwise-Orthogonal-Training (LOT repo) modules and checkpoints -> lipzoo.

Authors' classes: ``LOT`` (``lot_ortho_conv.py``; an ``nn.Conv2d`` with ``weight``/``bias``), ``LipConvNet`` and
``LipResNet`` (``lip_convnets.py``, with ``conv_name='lot'``). Key map (after stripping ``module.``):

* ``layer{i}.{j}.conv.*`` -> ``features.{i-1}.{j}.conv.*`` and ``layer{i}.{j}.activation.*`` -> ``...act.*``
  (LipConvNet);
* ``layer{i}.block.*`` / ``in_block.*`` -> ``features.{i-1}.blocks.0.*``, ``hidden_block.{j}.*`` ->
  ``blocks.{j+1}.*``, ``out_block.*`` -> ``blocks.{last}.*``, ``res_lamda_logit`` -> ``mix_logit`` (LipResNet);
* ``last_layer.*`` -> ``head.*`` (LOT 1x1 head or LLN ``NormalizedLinear``).

The repos normalise images in the data pipeline, so :func:`from_reference` returns whole networks with an
identity normaliser (mean 0, std 1): the module computes exactly the authors' function of the *normalised*
input. Checkpoints loaded with :func:`convert_state_dict` keep the model's own in-model normalisation
(the LOT repo's CIFAR mean and std 0.2507 for CIFAR-10 and CIFAR-100 alike).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..layers.lot import LOTConv2d
from ..layers.normalize import InputNormalize
from ..models.lot import LOTLipConvNet

__all__ = ["from_reference", "convert_state_dict"]

_NET_CLASSES = {"LipConvNet": False, "LipResNet": True}  # class -> residual


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def _block_suffix(rest: str) -> str:
    # the repos' LipBlock has .conv and .activation; lipzoo's LOTBlock has .conv and .act
    return re.sub(r"^activation\.", "act.", rest)


def _map_key(key: str, model: LOTLipConvNet) -> str:
    if key.startswith("last_layer."):
        return "head." + key[len("last_layer."):]
    m = re.match(r"^layer(\d+)\.(.*)$", key)
    if m is None:
        raise KeyError(f"unexpected key {key!r} in a LOT-repo state dict")
    stage, rest = int(m.group(1)) - 1, m.group(2)
    prefix = f"features.{stage}."
    if not model.residual:
        m = re.match(r"^(\d+)\.(.*)$", rest)
        if m is None:
            raise KeyError(f"unexpected key {key!r} for a LipConvNet (is this a --residual LipResNet checkpoint?)")
        return f"{prefix}{m.group(1)}.{_block_suffix(m.group(2))}"
    if rest == "res_lamda_logit":
        return prefix + "mix_logit"
    last = len(model.features[stage].blocks) - 1
    for name, index in (("block.", 0), ("in_block.", 0), ("out_block.", last)):
        if rest.startswith(name):
            return f"{prefix}blocks.{index}.{_block_suffix(rest[len(name):])}"
    m = re.match(r"^hidden_block\.(\d+)\.(.*)$", rest)
    if m is None:
        raise KeyError(f"unexpected key {key!r} for a LipResNet")
    return f"{prefix}blocks.{int(m.group(1)) + 1}.{_block_suffix(m.group(2))}"


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A LOT-repo state dict (``checkpoint_format='lot'``) -> ``model``'s keys (a :class:`LOTLipConvNet`).

    ``model.residual`` selects the LipResNet key layout. Buffers the authors' checkpoints do not have
    (the in-model normaliser) are taken from ``model`` itself.
    """
    if fmt != "lot":
        raise ValueError(f"the LOT converter handles checkpoint_format 'lot', not {fmt!r}")
    if not isinstance(model, LOTLipConvNet):
        raise TypeError(f"checkpoint_format 'lot' loads into a LOTLipConvNet, got {type(model).__name__}")
    out = {_map_key(k, model): v for k, v in _strip_module(state).items()}
    for k, v in model.state_dict().items():
        if k.startswith("normalize.") and k not in out:
            out[k] = v
    return out


def _target_dtype(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> torch.dtype:
    name = spec.get("dtype")
    if name is not None:
        return getattr(torch, name)
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    return floats[0] if floats else torch.get_default_dtype()


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """lipzoo equivalent of the LOT repo's ``spec['class']`` built with ``spec['constructor']``, with the
    authors' ``state`` loaded (float32-stored states are cast to the spec's dtype first)."""
    cls = spec["class"]
    args = list(spec.get("constructor", {}).get("args", []))
    kwargs = dict(spec.get("constructor", {}).get("kwargs", {}))
    dtype = _target_dtype(spec, state)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _strip_module(state).items()}

    if cls == "LOT":
        in_ch, out_ch = args[:2]
        kwargs.pop("padding", None)  # the authors' LOT ignores it (pad k//2, circular, crop)
        module = LOTConv2d(
            in_ch, out_ch, kernel_size=kwargs.pop("kernel_size", 3), stride=kwargs.pop("stride", 1),
            bias=kwargs.pop("bias", True),
        )
        if kwargs:
            raise ValueError(f"unsupported LOT constructor arguments {sorted(kwargs)}")
        module = module.to(dtype)
        module.load_state_dict(state)
        return module

    if cls in _NET_CLASSES:
        names = ("conv_name", "activation", "init_channels", "block_size", "num_classes", "input_side", "lln")
        params = dict(zip(names, args))
        params.update(kwargs)
        if params.get("conv_name", "lot").lower() != "lot":
            raise ValueError(f"the LOT converter builds LOT networks, got conv_name={params['conv_name']!r}")
        model = LOTLipConvNet(
            block_size=params.get("block_size", 1), init_channels=params.get("init_channels", 32),
            num_classes=params.get("num_classes", 10), activation=params.get("activation", "maxmin"),
            lln=params.get("lln", False), residual=_NET_CLASSES[cls], input_size=params.get("input_side", 32),
        )
        # the authors' networks take normalised images: identity normaliser here
        model.normalize = InputNormalize((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        model = model.to(dtype)
        model.load_state_dict(convert_state_dict(state, "lot", model))
        return model

    raise ValueError(f"no lipzoo equivalent of the LOT repo's class {cls!r}")
