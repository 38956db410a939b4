"""BCOP (ColinQiyangLi/LConvNet, and its ``StridedConv`` wrapper in locuslab/orthogonal-convolutions) modules and
checkpoints -> lipzoo.

Authors' conventions. LConvNet ``BCOP(cin, cout, k)``: ``param_matrices`` (2k - 1, n, n), ``bias``, and a frozen
float32 parameter ``mask`` (2k - 2, 1, n) selecting the first ``n // 2`` columns of each projector (the only mask the
code allows; lipzoo's :class:`~lipzoo.layers.bcop.BCOPConv2d` hard-codes it, so the converter checks and drops it).
``BjorckLinear(fin, fout)``: ``weight``, ``bias``. Both orthonormalise with 20 Bjorck steps after dividing by a
power-iteration estimate from a random start; lipzoo's start is fixed, which changes nothing once Bjorck has
converged (the recorded cases agree to ~1e-15).

One convention differs: for ``k = 1`` and ``cin == cout`` the authors' kernel is ``H`` itself, while lipzoo's
:func:`~lipzoo.layers.bcop.bcop_kernel` uses ``H^T`` (as the authors do for ``cin > cout``; for ``cin < cout`` their
1x1 kernel has the wrong shape and cannot run). Bjorck commutes with transposition for square matrices, so the
converter transposes ``param_matrices[0]`` of such layers and the lipzoo layer computes the authors' kernel.

Networks: locuslab's ``nn.Sequential(Normalize(mu, 1.0), KWLarge(conv=BCOP, linear=BjorckLinear))`` (keys
``1.model.{i}.*``, as for Cayley; ``checkpoint_format='bcop'``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers.bcop import BCOPConv2d, BjorckLinear
from . import ConversionError
from ._common import load_exact, spec_parts
from ._cayley import kwlarge_keys

__all__ = ["from_reference", "convert_state_dict", "convert_bcop_layer_state"]


def _check_mask(key: str, mask: torch.Tensor) -> None:
    n = mask.shape[-1]
    expected = torch.zeros_like(mask)
    expected[..., : n // 2] = 1
    if not torch.equal(mask, expected):
        raise ConversionError(f"{key}: only the half-rank projector mask of LConvNet's BCOP is supported")


def convert_bcop_layer_state(state: dict[str, torch.Tensor], layer: BCOPConv2d, prefix: str = "") -> dict[str, torch.Tensor]:
    """One authors' BCOP layer's entries (``prefix`` + ``param_matrices``/``bias``/``mask``) -> lipzoo's: the mask
    is checked and dropped; ``param_matrices[0]`` is transposed for ``k = 1`` square layers (module docstring)."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name == "mask":
            _check_mask(key, value)
            continue
        if name == "param_matrices" and layer.kernel_size == 1 and layer.in_channels * layer.stride ** 2 == layer.out_channels:
            value = torch.cat((value[:1].mT, value[1:]))
        out[key] = value
    return out


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    cls, args, kwargs, dtype = spec_parts(spec, state)
    c = spec.get("constructor", {})
    if not kwargs.pop("power_iteration_scaling", True):
        raise ConversionError("BCOP/BjorckLinear with power_iteration_scaling=False (sqrt(rows*cols) scaling) is not supported")
    iters = kwargs.pop("bjorck_iters", 20)
    if cls == "BCOP":
        cin, cout, k = args[:3]
        layer = BCOPConv2d(cin, cout, k, kwargs.pop("stride", 1), bias=kwargs.pop("bias", True), bjorck_iters=iters,
                           input_size=c.get("input_size"))
        return load_exact(layer, convert_bcop_layer_state(state, layer), dtype)
    if cls == "BjorckLinear":
        return load_exact(BjorckLinear(args[0], args[1], bias=kwargs.pop("bias", True), bjorck_iters=iters), state, dtype)
    if cls == "Sequential(Normalize, KWLarge)":
        from ..models.bcop import BCOPKWLarge

        if c.get("std", 1.0) != 1.0:
            raise ConversionError("only the certified runs' Normalize(mu, 1.0) is supported")
        model = BCOPKWLarge(channels=c["channels"], dense=c["dense"], num_classes=c["num_classes"],
                            input_size=c["input_size"], mean=tuple(c["mean"]),
                            layer_kwargs=dict(bjorck_iters=iters, eval_bjorck_iters=iters)).to(dtype)
        with torch.no_grad():  # the authors subtract the mean in the input's dtype
            model.normalize.mean.copy_(torch.tensor(c["mean"], dtype=dtype).view(1, -1, 1, 1))
        model.load_state_dict(convert_state_dict({k: v.to(dtype) for k, v in state.items()}, "bcop", model))
        return model
    raise ConversionError(f"no lipzoo equivalent for BCOP class {cls!r}")


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Authors' ``Sequential(Normalize, KWLarge(BCOP, BjorckLinear))`` state -> lipzoo ``BCOPKWLarge``."""
    if fmt != "bcop":
        raise ConversionError(f"_bcop cannot convert format {fmt!r}")
    out = kwlarge_keys(state, model, "BCOP")
    modules = dict(model.named_modules())
    for key in [k for k in out if k.endswith(".mask")]:
        prefix = key[: -len("mask")]
        layer = modules.get(prefix[:-1])
        if not isinstance(layer, BCOPConv2d):
            raise ConversionError(f"{key}: a BCOP mask for a layer that is not a BCOP convolution")
        layer_state = convert_bcop_layer_state({k: v for k, v in out.items() if k.startswith(prefix)}, layer, prefix)
        out = {k: v for k, v in out.items() if not k.startswith(prefix)} | layer_state
    return out
