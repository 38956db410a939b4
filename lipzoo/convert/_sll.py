"""SLL (araujoalexandre/Lipschitz-SLL-Networks) modules and checkpoints -> lipzoo.

Authors' key conventions: conv layers ``kernel`` (inner, C, k, k), ``bias`` (1, inner, 1, 1), ``q``; dense layers
``weight`` (inner, C), ``bias`` (1, inner), ``q``; ``LinearNormalized`` ``weight``/``bias``. Whole networks are
``NormalizedModel(LipschitzNetwork)`` with keys ``model.model.{i}.*`` (``module.`` added by DataParallel);
layer ``i`` indexes ``nn.Sequential([PaddingChannels, convs..., AvgPool, Flatten, denses..., LinearNormalized])``,
which is exactly lipzoo's ``features`` followed by ``head``. Legacy checkpoints (before Oct 2023) use ``weights``
for the dense/conv weight and the ``|q|`` semantics (``checkpoint_format='sll-legacy'``, ``q_mode='abs'``).
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..layers.heads import LLN
from ..layers.normalize import InputNormalize
from ..layers.shapes import ChannelPad, CloneChannels, SLLAvgPool
from ..layers.sll import SLLConv2d, SLLLinear
from . import ConversionError

__all__ = ["from_reference", "convert_state_dict", "PoolingLinear"]


class PoolingLinear(nn.Module):
    """The SLL repo's legacy CIFAR-10 head ``PoolingLinear(ncin, ncout, agg)`` (no parameters).

    ``trunc``: first ``ncout`` features (bound 1); ``max``: max over consecutive groups of ``int(k)`` features
    (bound 1); ``mean``: mean of each group times ``sqrt(k)`` with the *float* ``k = ncin / ncout`` — Lipschitz
    bound ``sqrt(k / int(k))``, which exceeds 1 when ``ncin / ncout`` is not an integer (an authors' quirk).
    """

    def __init__(self, ncin: int, ncout: int, agg: str = "mean"):
        super().__init__()
        if agg not in ("trunc", "mean", "max"):
            raise ValueError(f"agg must be trunc, mean or max, got {agg!r}")
        self.ncin, self.ncout, self.agg = ncin, ncout, agg
        self.k = ncin / ncout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.agg == "trunc":
            return x[:, : self.ncout]
        g = int(self.k)
        groups = x[:, : self.ncout * g].reshape(x.shape[0], self.ncout, g)
        if self.agg == "max":
            return groups.max(dim=2).values
        return groups.mean(dim=2) * self.k ** 0.5

    def lipschitz_bound(self) -> float:
        if self.agg == "mean":
            return (self.k / int(self.k)) ** 0.5
        return 1.0


def _ctor(spec: dict[str, Any]) -> tuple[list, dict]:
    c = spec.get("constructor", {})
    return list(c.get("args", [])), dict(c.get("kwargs", {}))


def _load(module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    module = module.to(dtype)
    if state:
        module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return module


def _dtype(state: dict[str, torch.Tensor], spec: dict[str, Any]) -> torch.dtype:
    # whole-model fixtures store float32 values that are exact in float32; the run was float64
    return torch.float64 if spec.get("dtype") == "float64" else next(iter(state.values())).dtype if state else torch.float32


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    cls = spec["class"]
    args, kwargs = _ctor(spec)
    dtype = _dtype(state, spec)
    if cls == "SDPBasedLipschitzConvLayer":
        cin, inner = args[0], args[1]
        return _load(SLLConv2d(cin, inner, kwargs.get("kernel_size", 3), q_mode="exp"), state, dtype)
    if cls == "SDPBasedLipschitzLinearLayer":
        return _load(SLLLinear(args[0], args[1], q_mode="exp"), state, dtype)
    if cls == "LinearNormalized":
        return _load(LLN(args[0], args[1], bias=kwargs.get("bias", True), eps=1e-12), state, dtype)
    if cls == "PaddingChannels":
        ncout, ncin, mode = (args + [3, "zero"])[:3]
        return (ChannelPad(ncout) if mode == "zero" else CloneChannels(ncout, ncin)).to(dtype)
    if cls == "AvgPool2d":
        if kwargs.get("divisor_override") not in (None, args[0]):
            raise ConversionError("only AvgPool2d(k, divisor_override=k) is 1-Lipschitz and supported")
        return SLLAvgPool(args[0]).to(dtype)
    if cls == "PoolingLinear":
        return PoolingLinear(args[0], args[1], kwargs.get("agg", "mean")).to(dtype)
    if cls.startswith("NormalizedModel"):
        return _network_from_reference(spec, state, dtype)
    raise ConversionError(f"no lipzoo equivalent for SLL class {cls!r}")


def _network_from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    from ..models.sll import SLLNet

    cfg = spec["constructor"]["config"]
    model = SLLNet(width=cfg["w"], n_conv=cfg["n_conv"], n_dense=cfg["n_dense"], conv_inner_dim=cfg["conv_inner_dim"],
                   dense_inner_dim=cfg["dense_inner_dim"], num_classes=spec["constructor"]["n_classes"],
                   mean=tuple(spec["constructor"]["mean"]))
    if tuple(spec["constructor"].get("std", (1, 1, 1))) != (1.0, 1.0, 1.0):
        model.normalize = InputNormalize(tuple(spec["constructor"]["mean"]), tuple(spec["constructor"]["std"]))
    model = model.to(dtype)
    with torch.no_grad():  # the authors' Normalize casts the Python-float mean to the input dtype
        model.normalize.mean.copy_(torch.tensor(spec["constructor"]["mean"], dtype=dtype).view(1, -1, 1, 1))
    model.load_state_dict(convert_state_dict({k: v.to(dtype) for k, v in state.items()}, "sll", model), strict=True)
    return model


_KEY = re.compile(r"^(?:module\.)?(?:model\.)?model\.(\d+)\.(.+)$")


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Authors' ``LipschitzNetwork`` keys -> lipzoo ``SLLNet`` keys (normalisation buffers kept from ``model``)."""
    if fmt not in ("sll", "sll-legacy"):
        raise ConversionError(f"_sll cannot convert format {fmt!r}")
    n_features = len(model.features)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if not m:
            raise ConversionError(f"unexpected key {key!r} in an SLL checkpoint (expected [module.]model.model.<i>.*)")
        i, name = int(m.group(1)), m.group(2)
        if fmt == "sll-legacy" and name == "weights":
            name = "weight" if i > 0 and not isinstance(model.features[min(i, n_features - 1)], SLLConv2d) else "kernel"
        prefix = f"features.{i}" if i < n_features else "head"
        out[f"{prefix}.{name}"] = value
    for key, value in model.state_dict().items():
        if key.startswith("normalize."):
            out[key] = value.clone()
    if fmt == "sll-legacy":
        for module in model.modules():
            if isinstance(module, (SLLConv2d, SLLLinear)) and module.q_mode != "abs":
                raise ConversionError("legacy SLL checkpoints need the |q| layers: create the model with q_mode='abs'")
    return out
