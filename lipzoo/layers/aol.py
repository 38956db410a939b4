"""Almost-Orthogonal Lipschitz layers (AOL; Prach & Lampert, ECCV 2022, arXiv 2208.03160).

Math. A parameter matrix ``P`` (out x in) is rescaled column-wise, ``W = P D`` with
``D = diag(d)``, ``d_i = (sum_j |P^T P|_ij + eps)^(-1/2)`` (the authors add ``eps = 1e-6``; it only makes
``d`` smaller). The paper's Theorem 1 gives ``||P D||_2 <= 1``: with ``M = P^T P`` and the weighted Schur test
(weights ``q_i = 1 / d_i``), ``||D M D|| <= max_i d_i^2 sum_j |M_ij| <= 1``.

Convolution (Theorem 2): for a kernel ``K`` (out, in, kh, kw), the Gram operator of ``conv(., K)`` is the
block-Toeplitz operator whose blocks are the kernel autocorrelations
``A_ij(s) = sum_o sum_p K[o, i, p] K[o, j, p + s]`` (shape (in, in, 2kh-1, 2kw-1), up to the orientation of s; computed as
``conv2d(K^T, K^T, padding=k-1)``), and ``d_i = (sum_{j, s} |A_ij(s)| + eps)^(-1/2)`` rescales the *input*
channels: ``K_r[o, i] = K[o, i] d_i``. The bound holds on the infinite grid, hence for zero "same" padding (a
compression of it, any input size) and for circular padding (the wrapped Gram entries are sums of the same
autocorrelations: triangle inequality), and for any stride (a subsampling of the output).

Proven bound (``lipschitz_bound()``), computed from the *realised* weights, not from the theorem alone: the
forward uses the float32 (or float64) kernel ``W_r``; in float64 we form ``A = W_r^T W_r`` (dense) or its
autocorrelation (conv) and apply the same weighted Schur test with the realised ``q_i = 1 / d_i``:
``||W_r||^2 <= max_i (sum_j |A_ij| q_j) / q_i``, times ``1 + float_rounding_slack(n, float64)`` for the
float64 products (n = their inner length). It is 1 up to float error (about 1e-7 in float32) and it would
show a larger number if the realised rescaling were off.

Initialisation (authors' TF code): identity / Dirac ("identity centre") for square layers, orthogonal for
channel changes; biases zero. Under autocast the rescaling runs in float32.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, float_rounding_slack, promoted
from .base import LipschitzModule, ParametrizationCache

__all__ = ["AOLConv2d", "AOLLinear", "aol_dense_scaling", "aol_conv_scaling", "conv_autocorrelation"]

_EPS = 1e-6  # the authors' epsilon under the square root


def conv_autocorrelation(kernel: torch.Tensor) -> torch.Tensor:
    """``A_ij(s) = sum_o sum_p K[o, i, p] K[o, j, p + s]`` of a kernel (out, in, kh, kw): (in, in, 2kh-1, 2kw-1).

    ``A`` are the blocks of the Gram operator ``conv^T conv`` of ``conv(., K)`` on the infinite grid."""
    kh, kw = kernel.shape[-2:]
    kt = kernel.transpose(0, 1)  # (in, out, kh, kw): batch = in channel i, channels = out
    return F.conv2d(kt, kt, padding=(kh - 1, kw - 1))


def aol_dense_scaling(weight: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """``d`` (in,) of a dense parameter ``P`` (out, in): ``(sum_j |P^T P|_ij + eps)^(-1/2)``."""
    return ((weight.T @ weight).abs().sum(dim=1) + eps).rsqrt()


def aol_conv_scaling(kernel: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """``d`` (in,) of a conv kernel (out, in, kh, kw): ``(sum_{j,s} |A_ij(s)| + eps)^(-1/2)``."""
    return (conv_autocorrelation(kernel).abs().sum(dim=(1, 2, 3)) + eps).rsqrt()


def _weighted_schur_sq(gram_abs_rowsum_weighted: torch.Tensor, q: torch.Tensor) -> float:
    """``max_i (sum_j |A_ij| q_j) / q_i`` given the weighted row sums ``sum_j |A_ij| q_j`` (float64)."""
    return float((gram_abs_rowsum_weighted / q).max())


class _AOLLayer(LipschitzModule):
    """What AOLConv2d and AOLLinear share: the parameter ``P`` (``weight``, out x in x ...) rescaled over its input
    axis, ``W = P * d`` with ``d = _scaling(P)`` (float32/float64, even under autocast, cached), and the proven bound
    of the realised ``W`` by the weighted Schur test (module docstring): ``sqrt(max_i rows_i / q_i)`` with
    ``q = 1 / d`` and ``rows = |Gram(W)| q`` (``_schur_rows``), times the float64 rounding slack of the products."""

    weight: nn.Parameter

    def _init_parameters(self, shape: tuple[int, ...], bias: bool) -> None:
        self.weight = nn.Parameter(torch.empty(*shape))
        self.bias = nn.Parameter(torch.zeros(shape[0])) if bias else None
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self._identity_init():
            pass
        elif self.init == "orthogonal":
            nn.init.orthogonal_(self.weight)
        elif self.init == "kaiming":
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        else:
            raise ValueError(f"unknown init {self.init!r}")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _identity_init(self) -> bool:
        raise NotImplementedError  # pragma: no cover - per layer

    def _scaling(self, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - per layer

    def _schur_rows(self, w_r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - per layer

    def _inner_length(self) -> int:
        raise NotImplementedError  # pragma: no cover - per layer

    def rescaled_weight(self) -> torch.Tensor:
        """The weight the forward uses, ``P * d`` over the input axis (float32/float64, even under autocast)."""
        with autocast_off(self.weight.device):
            p = promoted(self.weight)
            return p * self._scaling(p).view(1, -1, *([1] * (p.dim() - 2)))

    def _forward_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The cached rescaled weight and the bias, in ``x``'s dtype unless autocast picks the dtype."""
        w, bias = self._cache.get(self.rescaled_weight), self.bias
        if not torch.is_autocast_enabled(x.device.type):
            w = w.to(x.dtype)
            bias = None if bias is None else bias.to(x.dtype)
        return w, bias

    def lipschitz_bound(self) -> float:
        return self._bound_cache.get(self._realised_bound)

    @torch.no_grad()
    def _realised_bound(self) -> float:
        w_r = self._cache.get(self.rescaled_weight).detach().double()
        q = 1.0 / self._scaling(promoted(self.weight.detach())).double()  # the realised weights' Schur weights
        if not (bool(torch.isfinite(w_r).all()) and bool(torch.isfinite(q).all())):
            return math.inf
        rows = self._schur_rows(w_r, q)
        return math.sqrt(_weighted_schur_sq(rows, q)) * (1.0 + float_rounding_slack(self._inner_length() + 4,
                                                                                     torch.float64))


class AOLConv2d(_AOLLayer):
    """AOL convolution ``in_channels -> out_channels`` (odd kernel, "same" padding, stride 1 or more).

    Parameters: ``weight`` (out, in, k, k) — the unconstrained kernel ``P`` — and ``bias`` (out,).
    ``padding_mode``: ``"zeros"`` (the AOL paper's TF code, ``padding="same"``) or ``"circular"`` (the 1LLC
    port). ``init``: ``"dirac"`` (identity centre; the authors' default for square layers), ``"orthogonal"``
    (their choice for channel changes) or ``"kaiming"``. Default: dirac when in == out, else orthogonal.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        init: str | None = None,
        eps: float = _EPS,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("AOLConv2d needs an odd kernel size for 'same' padding")
        if padding_mode not in ("zeros", "circular"):
            raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.stride, self.padding_mode, self.eps = stride, padding_mode, float(eps)
        self.init = init or ("dirac" if in_channels == out_channels else "orthogonal")
        self._init_parameters((out_channels, in_channels, kernel_size, kernel_size), bias)

    def _identity_init(self) -> bool:
        if self.init != "dirac":
            return False
        if self.in_channels == self.out_channels:
            nn.init.dirac_(self.weight)
        else:  # identity on the first min(in, out) channels
            nn.init.zeros_(self.weight)
            c = self.kernel_size // 2
            n = min(self.in_channels, self.out_channels)
            with torch.no_grad():
                self.weight[torch.arange(n), torch.arange(n), c, c] = 1.0
        return True

    def _scaling(self, p: torch.Tensor) -> torch.Tensor:
        return aol_conv_scaling(p, self.eps)

    def _schur_rows(self, w_r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        a = conv_autocorrelation(w_r).abs()  # (in, in, 2k-1, 2k-1)
        return (a * q.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))

    def _inner_length(self) -> int:
        return self.out_channels * self.kernel_size ** 2 + self.in_channels * (2 * self.kernel_size - 1) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self._forward_weights(x)
        p = self.kernel_size // 2
        if self.padding_mode == "circular" and p > 0:
            return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w, bias, stride=self.stride)
        return F.conv2d(x, w, bias, stride=self.stride, padding=p)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding_mode={self.padding_mode!r}, bias={self.bias is not None}")


class AOLLinear(_AOLLayer):
    """AOL dense layer ``in_features -> out_features``: ``y = P diag(d) x + b``.

    Parameters: ``weight`` (out, in) — ``P`` — and ``bias`` (out,). ``init``: ``"identity"`` (the authors'
    dense init; for non-square, identity on the leading block), ``"orthogonal"`` or ``"kaiming"``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init: str = "identity",
                 eps: float = _EPS):
        super().__init__()
        self.in_features, self.out_features, self.init, self.eps = in_features, out_features, init, float(eps)
        self._init_parameters((out_features, in_features), bias)

    def _identity_init(self) -> bool:
        if self.init != "identity":
            return False
        with torch.no_grad():
            self.weight.copy_(torch.eye(self.out_features, self.in_features))
        return True

    def _scaling(self, p: torch.Tensor) -> torch.Tensor:
        return aol_dense_scaling(p, self.eps)

    def _schur_rows(self, w_r: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (w_r.T @ w_r).abs() @ q

    def _inner_length(self) -> int:
        return self.out_features + self.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, bias = self._forward_weights(x)
        return F.linear(x.flatten(1), w, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
