"""SDP-based Lipschitz layers (SLL; Araujo et al., ICLR'23, Thm 3 / Sec. 4).

``f(x) = x - 2 W^T T^{-1} ReLU(W x + b)`` with ``T = diag(t)^{-1}`` chosen so that ``W^T T^{-1} W <= I``
(Gershgorin with weights q > 0): ``1 / t_i = sum_j |W W^T|_ij q_j / q_i``. Then the Jacobian
``I - 2 W^T diag(t) D W`` (``D`` = ReLU' in [0, 1]) is symmetric with spectrum in [-1, 1]: the layer is
1-Lipschitz in l2 for every input.

Two ``q`` semantics (both as in the authors' code, ``q_mode``):

* ``"exp"`` (current code, Oct 2023): ``q = exp(param)``; in the conv layer q cancels (it is reshaped so that
  ``q_i / q_i`` appear), so the conv rescaling is the AOL/Gershgorin one with q = 1 and ``q`` gets no gradient.
* ``"abs"`` (legacy code, Feb-Mar 2023; LBDN's SLL blocks): ``q = |param|`` and q acts in the conv layer; the
  legacy dense layer adds 1e-6 to ``|q_i|`` in the denominator only, which is not exactly 1-Lipschitz: its
  ``lipschitz_bound()`` says by how much.

The conv layer uses zero "same" padding (the authors hard-code padding=1 for 3x3 kernels) with
``conv_transpose2d`` as the exact adjoint.

``lipschitz_bound()``: with ``t_used`` the rescaling the forward uses and ``t*`` the exact Gershgorin value
computed in float64 from the same weights, ``r = max_i t_used_i / t*_i`` and the bound is ``max(1, 2r - 1)``
(the Jacobian's spectrum lies in [1 - 2r, 1]). It is 1 up to float error for the current code.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, promoted
from .base import LipschitzModule, ParametrizationCache

__all__ = ["SLLConv2d", "SLLLinear"]

QMode = Literal["exp", "abs"]
_LEGACY_EPS = 1e-6


def _safe_inv(x: torch.Tensor) -> torch.Tensor:
    """1/x, and 0 where x == 0 (a zero row of W gives a zero rescaling: the layer is then the identity there)."""
    inv = 1.0 / x
    return torch.where(torch.isinf(inv), torch.zeros_like(inv), inv)


def _bound_from_rescaling(t_used: torch.Tensor, t_exact: torch.Tensor) -> float:
    t_used, t_exact = t_used.double(), t_exact.double()
    active = t_used > 0
    if not bool(active.any()):
        return 1.0
    if bool((t_exact[active] <= 0).any()):
        return math.inf
    r = float((t_used[active] / t_exact[active]).max())
    return max(1.0, 2.0 * r - 1.0) * (1.0 + 1e-12)


class SLLConv2d(LipschitzModule):
    """SLL convolution, ``channels -> channels`` (inner dimension ``inner_dim``; the SLL networks use 5).

    Parameters (authors' names): ``kernel`` (inner, C, k, k), ``bias`` (1, inner, 1, 1), ``q`` (inner,).
    """

    def __init__(self, channels: int, inner_dim: int, kernel_size: int = 3, q_mode: QMode = "exp"):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("SLLConv2d needs an odd kernel size for 'same' zero padding")
        if q_mode not in ("exp", "abs"):
            raise ValueError(f"q_mode must be 'exp' or 'abs', got {q_mode!r}")
        self.channels, self.inner_dim, self.kernel_size, self.q_mode = channels, inner_dim, kernel_size, q_mode
        self.kernel = nn.Parameter(torch.empty(inner_dim, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(1, inner_dim, 1, 1))
        # with q = exp(param) the factors cancel in the conv rescaling: q is kept (checkpoints carry it) but frozen
        self.q = nn.Parameter(torch.randn(inner_dim), requires_grad=q_mode == "abs")
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.kernel)
        fan_in = self.channels * self.kernel_size ** 2
        bound = 1 / math.sqrt(fan_in)
        nn.init.uniform_(self.bias, -bound, bound)

    def _ktk_abs_rowsum(self, kernel: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
        k = self.kernel_size
        ktk = F.conv2d(kernel, kernel, padding=k - 1).abs()  # (inner, inner, 2k-1, 2k-1): K K^T as an operator
        if q is None:
            return ktk.sum(dim=(1, 2, 3))
        return (ktk * q.view(1, -1, 1, 1)).sum(dim=(1, 2, 3)) / q

    def _q(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.q_mode == "exp" else self.q.to(dtype).abs()

    def rescaling(self) -> torch.Tensor:
        """``t`` of the forward pass (float32 or float64, never lower precision)."""
        with autocast_off(self.kernel.device):
            kernel, q = promoted(self.kernel), promoted(self.q)
            q = None if self.q_mode == "exp" else q.abs()
            return _safe_inv(self._ktk_abs_rowsum(kernel, q))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self._cache.get(self.rescaling)
        p = self.kernel_size // 2
        res = F.relu(F.conv2d(x, self.kernel, self.bias.view(-1), padding=p))
        res = res * (2.0 * t).view(1, -1, 1, 1).to(res.dtype)
        return x - F.conv_transpose2d(res, self.kernel, padding=p)

    def lipschitz_bound(self) -> float:
        return self._bound_cache.get(self._exact_bound)  # cached in eval mode, like the rescaling

    @torch.no_grad()
    def _exact_bound(self) -> float:
        t_used = self.rescaling()
        q = self._q(torch.float64)
        t_exact = _safe_inv(self._ktk_abs_rowsum(self.kernel.double(), q))
        return _bound_from_rescaling(t_used, t_exact)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner_dim={self.inner_dim}, kernel_size={self.kernel_size}, q_mode={self.q_mode!r}"


class SLLLinear(LipschitzModule):
    """SLL dense layer, ``features -> features`` (inner dimension ``inner_dim``; the SLL networks use 2048).

    Parameters (authors' names): ``weight`` (inner, features), ``bias`` (1, inner), ``q`` (inner,).
    """

    def __init__(self, features: int, inner_dim: int, q_mode: QMode = "exp"):
        super().__init__()
        if q_mode not in ("exp", "abs"):
            raise ValueError(f"q_mode must be 'exp' or 'abs', got {q_mode!r}")
        self.features, self.inner_dim, self.q_mode = features, inner_dim, q_mode
        self.weight = nn.Parameter(torch.empty(inner_dim, features))
        self.bias = nn.Parameter(torch.empty(1, inner_dim))
        self.q = nn.Parameter(torch.randn(inner_dim))
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_normal_(self.weight)
        bound = 1 / math.sqrt(self.features)
        nn.init.uniform_(self.bias, -bound, bound)

    @staticmethod
    def _gershgorin(weight: torch.Tensor, q_num: torch.Tensor, q_den: torch.Tensor) -> torch.Tensor:
        # 1/t_i = sum_j |W W^T|_ij q_j / q_i
        wwt = weight @ weight.T
        return _safe_inv((wwt.abs() * q_num.view(1, -1)).sum(dim=1) / q_den)

    def rescaling(self) -> torch.Tensor:
        with autocast_off(self.weight.device):
            weight, q = promoted(self.weight), promoted(self.q)
            if self.q_mode == "exp":
                # the authors compute |exp(-q_i) (WW^T)_ij exp(q_j)|
                wwt = weight @ weight.T
                return _safe_inv((torch.exp(-q).view(-1, 1) * wwt * torch.exp(q).view(1, -1)).abs().sum(dim=1))
            q_abs = q.abs()
            return self._gershgorin(weight, q_abs, q_abs + _LEGACY_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"SLLLinear expects (N, {self.features}), got {tuple(x.shape)}")
        t = self._cache.get(self.rescaling)
        res = F.relu(F.linear(x, self.weight, self.bias.view(-1)))
        res = res * (2.0 * t).to(res.dtype)
        return x - F.linear(res, self.weight.T)

    def lipschitz_bound(self) -> float:
        return self._bound_cache.get(self._exact_bound)  # cached in eval mode, like the rescaling

    @torch.no_grad()
    def _exact_bound(self) -> float:
        t_used = self.rescaling()
        w = self.weight.double()
        q = torch.exp(self.q.double()) if self.q_mode == "exp" else self.q.double().abs()
        return _bound_from_rescaling(t_used, self._gershgorin(w, q, q))

    def extra_repr(self) -> str:
        return f"features={self.features}, inner_dim={self.inner_dim}, q_mode={self.q_mode!r}"
