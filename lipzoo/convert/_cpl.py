"""CPL (MILES-PSL/Convex-Potential-Layer) modules and checkpoints -> lipzoo.

Authors' conventions. ``ConvexPotentialLayerConv(input_size, cin, cout, kernel_size, stride, epsilon)``: ``kernel``
(cout, cin, k, k), ``bias`` (cout,), a buffer ``eval_sv_max`` (1,) and the power-iteration start ``pm.u`` (a
``requires_grad=False`` parameter of ``input_size``). Its map is ``x - h K^T ReLU(K x + b)`` with zero padding 1
(for every ``k``) and the given stride on both convolutions, and ``h = 2 / (s^2 + epsilon)`` where ``s`` is a
*power-iteration estimate* of ``||K||`` (of the stride-1 convolution): 1 iteration from ``pm.u`` per training
forward (which also resets ``eval_sv_max`` to 0), 100 iterations on the first eval forward after that, stored in
``eval_sv_max`` and reused. ``ConvexPotentialLayerLinear(cin, cout)``: ``weights`` (cout, cin), ``bias``, an unused
``alpha``, the same step rule with ``pm.u`` of shape (1, cin). Whole networks are ``NormalizedModel(
ConvexPotentialLayerNetwork)``: keys ``model.stable_block.{i}`` (convs), ``model.layers_linear.{j}`` (dense, j >= 1),
``model.last_last`` (LLN head), ``model.base.*`` (the same tensors again), ``module.`` under DataParallel.

Two conversions, on purpose different:

* :func:`from_reference` reproduces the authors' map: its layers (:class:`AuthorsStepCPLConv2d`,
  :class:`AuthorsStepCPLLinear`) keep ``eval_sv_max`` and ``pm.u`` and use the authors' step. Their
  ``lipschitz_bound()`` is still proven: ``max(1, h s_up^2 - 1)`` with ``s_up`` lipzoo's proven upper bound of
  ``||K||``, so an underestimating power iteration shows as a bound above 1 instead of a false certificate.
* :func:`convert_state_dict` (``checkpoint_format='cpl'``) loads the weights into lipzoo's :class:`CPLNet`, whose
  step ``h = 2 / s_up^2`` comes from the proven bound: the certified model differs from the authors' map by that
  step (``s^2 + 1e-4`` vs ``s_up^2``), and the estimate buffers are dropped.
"""
from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers.cpl import CPLConv2d, CPLLinear
from ..layers.heads import LLN
from ..layers.normalize import InputNormalize
from ..layers.shapes import FirstChannels
from . import ConversionError
from ._common import load_exact, spec_parts

__all__ = ["from_reference", "convert_state_dict", "AuthorsStepCPLConv2d", "AuthorsStepCPLLinear"]

TRAIN_ITERS, EVAL_ITERS = 1, 100


def _unit(a: torch.Tensor) -> torch.Tensor:
    """``a / (||a||_F + 1e-12)``: the authors' normalisation of power-iteration vectors."""
    return a / (torch.sqrt((a * a).sum()) + 1e-12)


class _PowerStart(nn.Module):
    """Holds the authors' power-iteration vector under their key ``pm.u`` (a frozen parameter)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.u = nn.Parameter(_unit(torch.randn(shape)), requires_grad=False)


class _AuthorsStep:
    """The authors' step ``h = 2 / (s^2 + epsilon)`` from power iteration (mixin; ``_power_op`` is ``K`` and
    ``_power_adj`` its adjoint as the authors apply them to ``pm.u``)."""

    epsilon: float
    eval_sv_max: torch.Tensor
    pm: _PowerStart

    def _estimate(self, iters: int, update: bool) -> torch.Tensor:
        """``<K u_n, v_n>`` after ``iters`` steps ``v = unit(K u)``, ``u = unit(K^T v)`` from ``pm.u``; ``update``
        writes ``u_n`` back (as the authors' forward does)."""
        k = self._power_weight()
        u = self.pm.u.detach()
        v = None
        for _ in range(iters):
            v = _unit(self._power_op(u, k))
            u = _unit(self._power_adj(v, k)).detach()
        if update:
            self.pm.u.data = u
        return (self._power_op(u, k) * v).sum()

    def _authors_h(self, update: bool) -> torch.Tensor:
        if self.training:
            if update:
                self.eval_sv_max.sub_(self.eval_sv_max)
            s = self._estimate(TRAIN_ITERS, update)
        elif float(self.eval_sv_max) == 0:
            s = self._estimate(EVAL_ITERS, update).detach()
            if update:
                self.eval_sv_max.add_(s)
            s = self.eval_sv_max if update else s.reshape(1)
        else:
            s = self.eval_sv_max
        return 2 / (s ** 2 + self.epsilon)

    def lipschitz_bound(self, input_size=None) -> float:
        """Proven ``max(1, h s_up^2 - 1)`` for the authors' ``h`` of the current mode (no state is changed)."""
        size = self._bound_size(input_size)
        s_up = self._norm_upper(size)
        with torch.no_grad():
            h = float(self._authors_h(update=False).double().reshape(()))
        if not (math.isfinite(s_up) and math.isfinite(h)) or h < 0:
            return math.inf
        return max(1.0, h * s_up * s_up - 1.0)


class AuthorsStepCPLConv2d(_AuthorsStep, CPLConv2d):
    """``ConvexPotentialLayerConv`` with the authors' step and stride; parameters as :class:`CPLConv2d`."""

    def __init__(self, input_size: tuple[int, int, int, int], channels: int, inner_dim: int, kernel_size: int = 3,
                 stride: int = 1, epsilon: float = 1e-4):
        super().__init__(channels, inner_dim, kernel_size, input_size=tuple(input_size[-2:]))
        self.stride, self.epsilon = stride, epsilon
        self.register_buffer("eval_sv_max", torch.zeros(1))
        self.pm = _PowerStart(tuple(input_size))

    lipschitz_bound = _AuthorsStep.lipschitz_bound  # in the class body, so it runs in the certification context

    def _power_weight(self) -> torch.Tensor:
        return self.kernel

    @staticmethod
    def _power_op(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(u, (1, 1, 1, 1)), k)

    @staticmethod
    def _power_adj(v: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(v, k)[..., 1:-1, 1:-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_size = (int(x.shape[-2]), int(x.shape[-1]))
        res = F.relu(F.conv2d(x, self.kernel, self.bias, stride=self.stride, padding=1))
        res = F.conv_transpose2d(res, self.kernel, stride=self.stride, padding=1)
        return x - self._authors_h(update=True) * res


class AuthorsStepCPLLinear(_AuthorsStep, CPLLinear):
    """``ConvexPotentialLayerLinear`` with the authors' step; ``alpha`` is kept (unused, as in their code)."""

    def __init__(self, features: int, inner_dim: int, epsilon: float = 1e-4):
        super().__init__(features, inner_dim)
        self.epsilon = epsilon
        self.register_buffer("eval_sv_max", torch.zeros(1))
        self.pm = _PowerStart((1, features))
        self.alpha = nn.Parameter(torch.zeros(1))

    lipschitz_bound = _AuthorsStep.lipschitz_bound

    def _power_weight(self) -> torch.Tensor:
        return self.weights

    @staticmethod
    def _power_op(u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(u, w)

    @staticmethod
    def _power_adj(v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(v, w.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = F.linear(F.relu(F.linear(x, self.weights, self.bias)), self.weights.T)
        return x - self._authors_h(update=True) * res


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    cls, args, kwargs, dtype = spec_parts(spec, state)
    if cls == "ConvexPotentialLayerConv":
        return load_exact(AuthorsStepCPLConv2d(*args, **kwargs), state, dtype)
    if cls == "ConvexPotentialLayerLinear":
        return load_exact(AuthorsStepCPLLinear(*args, **kwargs), state, dtype)
    if cls == "LinearNormalized":
        return load_exact(LLN(args[0], args[1], bias=kwargs.get("bias", True), eps=1e-12), state, dtype)
    if cls == "NormalizedModel(ConvexPotentialLayerNetwork)":
        return _network_from_reference(spec, state, dtype)
    raise ConversionError(f"no lipzoo equivalent for CPL class {cls!r}")


def _cplnet(kw: dict[str, Any], mean: tuple[float, ...], std: tuple[float, ...]) -> nn.Module:
    from ..models.cpl import CPLNet

    model = CPLNet(width=kw.get("num_channels", 20), n_conv=kw["depth"], n_dense=kw.get("depth_linear", 3),
                   conv_inner_dim=kw.get("conv_size", 20), dense_inner_dim=kw.get("n_features", 512),
                   num_classes=kw["num_classes"], head="lln" if kw.get("use_lln", True) else "trunc", mean=mean)
    if tuple(std) != (1.0, 1.0, 1.0):
        model.normalize = InputNormalize(mean, std)
    return model


def _network_from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    c = spec["constructor"]
    mean, std = tuple(c["mean"]), tuple(c.get("std", (1.0, 1.0, 1.0)))
    model = _cplnet(c["kwargs"], mean, std)
    for i, layer in enumerate(model.features):  # the authors' step in every layer (their conv input is 32x32)
        if isinstance(layer, CPLConv2d):
            model.features[i] = AuthorsStepCPLConv2d((1, layer.channels, 32, 32), layer.channels, layer.inner_dim)
        elif isinstance(layer, CPLLinear):
            model.features[i] = AuthorsStepCPLLinear(layer.features, layer.inner_dim)
    model = model.to(dtype)
    with torch.no_grad():  # the authors' Normalize casts the Python-float mean/std to the input dtype
        model.normalize.mean.copy_(torch.tensor(mean, dtype=dtype).view(1, -1, 1, 1))
        model.normalize.std.copy_(torch.tensor(std, dtype=dtype).view(1, -1, 1, 1))
    model.load_state_dict(_convert(state, model, keep_estimates=True), strict=True)
    return model


_KEY = re.compile(r"^(?:module\.)?model\.(stable_block|layers_linear|last_last|base)\.(?:(\d+)\.)?(.+)$")
_ESTIMATES = ("eval_sv_max", "pm.u", "alpha")


def _convert(state: dict[str, torch.Tensor], model: nn.Module, keep_estimates: bool) -> dict[str, torch.Tensor]:
    n_conv = sum(isinstance(m, CPLConv2d) for m in model.features)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _KEY.match(key)
        if not m:
            raise ConversionError(f"unexpected key {key!r} in a CPL checkpoint (expected [module.]model.<part>.*)")
        part, idx, name = m.group(1), m.group(2), m.group(3)
        if part == "base" or (not keep_estimates and name in _ESTIMATES):
            continue  # model.base.* repeats the stable_block / layers_linear tensors
        if part == "stable_block":
            if int(idx) >= n_conv:
                raise ConversionError(f"key {key!r}: the model has only {n_conv} CPL convolutions")
            out[f"features.{1 + int(idx)}.{name}"] = value
        elif part == "layers_linear":
            out[f"features.{n_conv + 2 + int(idx)}.{name}"] = value
        else:
            out[f"head.{name}" if idx is None else f"head.{idx}.{name}"] = value
    if isinstance(model.head, FirstChannels):
        out = {k: v for k, v in out.items() if not k.startswith("head.")}
    for key, value in model.state_dict().items():
        if key.startswith("normalize."):
            out[key] = value.clone()
    return out


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Authors' ``NormalizedModel(ConvexPotentialLayerNetwork)`` keys -> lipzoo ``CPLNet`` keys (the power-iteration
    buffers ``eval_sv_max``, ``pm.u`` and the unused ``alpha`` are dropped; normalisation buffers kept from
    ``model``)."""
    if fmt != "cpl":
        raise ConversionError(f"_cpl cannot convert format {fmt!r}")
    return _convert(state, model, keep_estimates=False)
