"""Convex Potential Layers (CPL; Meunier, Delattre, Araujo & Allauzen, ICML 2022, "A Dynamical System
Perspective for Lipschitz Neural Networks"; code MILES-PSL/Convex-Potential-Layer).

Math. ``f(x) = x - h W^T ReLU(W x + b)``, the explicit Euler step of the gradient flow of the convex potential
``x -> sum ReLU-antiderivative(W x + b)``. Its Jacobian is ``I - h W^T D W`` with ``D = diag(ReLU') in [0, 1]``:
symmetric, spectrum in ``[1 - h ||W||_2^2, 1]``. So ``f`` is 1-Lipschitz whenever ``h <= 2 / ||W||_2^2`` (and
for a larger ``h`` it is not, where every unit is active), and in general ``Lip(f) <= max(1, h ||W||_2^2 - 1)``.

What lipzoo changes. The paper sets ``h = 2 / (s^2 + 1e-4)`` with ``s`` a *power-iteration estimate* of
``||W||_2`` (1 iteration per training step, 100 for eval). Power iteration converges from below, so ``s`` can be
smaller than ``||W||_2`` and the layer then is not 1-Lipschitz. lipzoo never uses an estimate:

* dense (:class:`CPLLinear`): ``s`` is the largest eigenvalue of the smaller Gram matrix of ``W``, computed with
  ``eigvalsh``; for eval and every bound it is computed in float64 plus a rounding slack that makes it a proven
  upper bound (:func:`lipzoo._numerics.spectral_norm_upper`);
* conv (:class:`CPLConv2d`, zero "same" padding, stride 1, ``conv_transpose2d`` as the exact adjoint): on an
  input of spatial size ``(H, W)`` the zero-padded convolution is a compression of the *circular* convolution on
  the grid ``(H + r, W + r)``, ``r = k // 2`` (the ``r`` zero rows/columns absorb every wrap-around), whose norm
  is exactly ``max_f ||K_hat(f)||_2`` over the grid's DFT frequencies. So ``s = max_f sqrt(lambda_max(K_hat(f)
  K_hat(f)^H))`` is an upper bound of ``||W||_2`` for that input size (nearly tight). The bound depends on the
  input size: the forward recomputes ``h`` for each input size (cached per size in eval mode), and
  ``lipschitz_bound()`` is for the last input size seen (else the ``input_size`` given at construction).

Step size. In eval mode (the certified map) ``h = 2 / s_up^2`` with ``s_up`` the proven float64 bound, rounded
*down* to the forward's dtype, so ``h s_up^2 <= 2``. In training ``h`` is computed in float32 from the same
formula (differentiable, no estimate from below, but float32 eigenvalues carry ~1e-6 relative error; the
gradient of the max over frequencies flows through the maximising frequency).
``lipschitz_bound()`` is ``max(1, h_used * s_up^2 - 1)`` for the ``h`` of the current mode: 1 in eval mode, at
most ~1 + 1e-5 in training mode.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, float_rounding_slack, parametrization_dtype, spectral_norm_upper
from .base import LipschitzModule, ParametrizationCache

__all__ = ["CPLConv2d", "CPLLinear", "conv_norm_upper", "conv_frequency_sq_norms", "power_iteration_norm"]

Size2 = tuple[int, int]


def _param_dtype(t: torch.Tensor) -> torch.Tensor:
    """Parametrisations run in float32 or float64, never in a reduced precision."""
    return t.to(parametrization_dtype(t.dtype))


def _as_size2(size: int | Size2) -> Size2:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def _round_down(h64: float, dtype: torch.dtype) -> float:
    """The largest value of ``dtype`` that is <= ``h64`` (as a Python float)."""
    t = torch.tensor(h64, dtype=torch.float64).to(dtype)
    if float(t) > h64:
        t = torch.nextafter(t, torch.tensor(0.0, dtype=dtype))
    return float(t)


def conv_frequency_sq_norms(kernel: torch.Tensor, grid: Size2) -> torch.Tensor:
    """``lambda_max(K_hat(f) K_hat(f)^H)`` for every DFT frequency ``f`` of the grid (one real half: a real kernel's
    spectrum is conjugate-symmetric). Differentiable; dtype follows the kernel."""
    c_out, c_in, kh, kw = kernel.shape
    nh, nw = grid
    if nh < kh or nw < kw:
        raise ValueError(f"FFT grid {grid} smaller than the kernel {(kh, kw)}")
    kf = torch.fft.rfft2(kernel, s=(nh, nw))  # (c_out, c_in, nh, nw//2+1); the kernel's offset is a unit phase
    kf = kf.permute(2, 3, 0, 1).reshape(-1, c_out, c_in)
    g = kf @ kf.mH if c_out <= c_in else kf.mH @ kf
    return torch.linalg.eigvalsh(g)[:, -1].clamp_min(0.0)


def conv_norm_upper(kernel: torch.Tensor, input_size: int | Size2) -> float:
    """Proven upper bound of the l2 norm of ``conv2d(., kernel, padding=k//2)`` (stride 1, zero padding) on inputs
    of spatial size ``input_size``: the exact norm of the circular convolution on the grid ``(H + r, W + r)``,
    computed in float64 plus rounding slack (FFT error ``<= c log2(N) u ||K||_1-ish``, Gram formation and
    ``eigvalsh`` backward error, each bounded generously by a multiple of ``u (k_h k_w) ||K||_F^2``)."""
    k = kernel.detach().double()
    if not bool(torch.isfinite(k).all()):
        return math.inf
    c_out, c_in, kh, kw = k.shape
    h, w = _as_size2(input_size)
    grid = (h + kh // 2, w + kw // 2)
    lam = float(conv_frequency_sq_norms(k, grid).max())
    u = 2.0 ** -53
    fro2 = float((k * k).sum()) * kh * kw  # >= ||K_hat(f)||_F^2 for every f (Cauchy-Schwarz over taps)
    n = max(c_out, c_in)
    slack = 10.0 * (math.log2(grid[0] * grid[1]) + kh * kw + 2 * n + 10) * u * fro2
    return math.sqrt(lam + slack)


def power_iteration_norm(op, adjoint, x0: torch.Tensor, iters: int) -> float:
    """``||op(x_n)||`` after ``iters`` steps of power iteration on ``adjoint(op(.))`` from ``x0`` (a *lower*
    estimate of ``||op||_2``; what the CPL paper uses). For tests and diagnostics only."""
    x = x0 / x0.norm()
    for _ in range(iters):
        x = adjoint(op(x))
        x = x / x.norm()
    return float(op(x).norm())


class _CPLBase(LipschitzModule):
    weight_name = "weight"

    def _step(self, size: Size2 | None, dtype: torch.dtype) -> torch.Tensor:
        """``h`` of the current mode, as a 0-d tensor of ``dtype`` (train: float32/float64 differentiable;
        eval: from the proven float64 bound, rounded down)."""
        if self.training:
            with autocast_off(self.kernel_param.device):
                s2 = self._sq_norm_train(size)
                return (2.0 / s2).to(dtype)
        return self._cache.get(lambda: self._eval_step(size, dtype), extra=(size, dtype))

    def _eval_step(self, size: Size2 | None, dtype: torch.dtype) -> torch.Tensor:
        s_up = self._norm_upper(size)
        # 1 - 4e-15 absorbs the float64 roundings of 2 / s^2 (so that h s_up^2 <= 2 holds for the real numbers)
        h = _round_down(2.0 / (s_up * s_up) * (1.0 - 4e-15), dtype) if math.isfinite(s_up) and s_up > 0 else 0.0
        return torch.tensor(h, dtype=dtype, device=self.kernel_param.device)

    @property
    def kernel_param(self) -> torch.Tensor:
        return getattr(self, self.weight_name)

    def lipschitz_bound(self, input_size: int | Size2 | None = None) -> float:
        """Proven bound ``max(1, h s_up^2 - 1)`` of the map of the current mode for inputs of ``input_size``."""
        size = self._bound_size(input_size)
        dtype = self._last_dtype
        return self._bound_cache.get(lambda: self._bound(size, dtype), extra=(size, dtype))

    @torch.no_grad()
    def _bound(self, size: Size2 | None, dtype: torch.dtype) -> float:
        s_up = self._norm_upper(size)
        if not math.isfinite(s_up):
            return math.inf
        h = float(self._step(size, dtype).double())
        if not math.isfinite(h) or h < 0:
            return math.inf
        return max(1.0, h * s_up * s_up - 1.0)


class CPLConv2d(_CPLBase):
    """CPL convolution on ``channels`` channels with ``inner_dim`` hidden channels: ``x - h K^T ReLU(K x + b)``.

    Parameters (the authors' names): ``kernel`` (inner_dim, channels, k, k) and ``bias`` (inner_dim,).
    ``input_size``: spatial size used by ``lipschitz_bound()`` before any forward (the CIFAR models: 32).
    """

    weight_name = "kernel"

    def __init__(self, channels: int, inner_dim: int, kernel_size: int = 3, input_size: int | Size2 = 32):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError("CPLConv2d needs an odd kernel size for 'same' zero padding")
        self.channels, self.inner_dim, self.kernel_size = channels, inner_dim, kernel_size
        self.input_size: Size2 = _as_size2(input_size)
        self._last_dtype = torch.float32
        self.kernel = nn.Parameter(torch.empty(inner_dim, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(inner_dim))
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:  # the authors' init
        nn.init.kaiming_uniform_(self.kernel, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.channels * self.kernel_size ** 2)
        nn.init.uniform_(self.bias, -bound, bound)

    def _sq_norm_train(self, size: Size2) -> torch.Tensor:
        """``max_f lambda_max(K_hat(f) K_hat(f)^H)`` on the grid, differentiable: every frequency's eigenvalue
        without autograd, then the maximising frequency's matrix again with autograd (the max's gradient flows
        through that frequency only), which avoids a batched ``eigh`` backward."""
        k = _param_dtype(self.kernel)
        r = self.kernel_size // 2
        nh, nw = size[0] + r, size[1] + r
        with torch.no_grad():
            idx = int(conv_frequency_sq_norms(k.detach(), (nh, nw)).argmax())
        fh, fw = divmod(idx, nw // 2 + 1)
        kh, kw = k.shape[-2:]
        ctype = torch.complex128 if k.dtype == torch.float64 else torch.complex64
        ah = torch.arange(kh, device=k.device, dtype=k.dtype) * (-2 * math.pi * fh / nh)
        aw = torch.arange(kw, device=k.device, dtype=k.dtype) * (-2 * math.pi * fw / nw)
        phase = torch.polar(torch.ones(kh, kw, device=k.device, dtype=k.dtype), ah.view(-1, 1) + aw.view(1, -1))
        kf = (k.to(ctype) * phase.to(ctype)).sum(dim=(2, 3))  # K_hat at the maximising frequency
        g = kf @ kf.mH if kf.shape[0] <= kf.shape[1] else kf.mH @ kf
        return torch.linalg.eigvalsh(g)[-1]

    def _norm_upper(self, size: Size2) -> float:
        return conv_norm_upper(self.kernel, size)

    def _bound_size(self, input_size: int | Size2 | None) -> Size2:
        return self.input_size if input_size is None else _as_size2(input_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = (int(x.shape[-2]), int(x.shape[-1]))
        if size != self.input_size:
            self.input_size = size  # the bound follows the last input size
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        self._last_dtype = dtype
        h = self._step(size, dtype)
        p = self.kernel_size // 2
        res = F.relu(F.conv2d(x, self.kernel, self.bias, padding=p))
        res = F.conv_transpose2d(res, self.kernel, padding=p)
        return x - h.to(res.dtype) * res

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inner_dim={self.inner_dim}, kernel_size={self.kernel_size}"


class CPLLinear(_CPLBase):
    """CPL dense layer on ``features`` with ``inner_dim`` hidden units: ``x - h W^T ReLU(W x + b)``.

    Parameters (the authors' names): ``weights`` (inner_dim, features) and ``bias`` (inner_dim,).
    """

    weight_name = "weights"

    def __init__(self, features: int, inner_dim: int):
        super().__init__()
        self.features, self.inner_dim = features, inner_dim
        self._last_dtype = torch.float32
        self.weights = nn.Parameter(torch.empty(inner_dim, features))
        self.bias = nn.Parameter(torch.empty(inner_dim))
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weights, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.features)
        nn.init.uniform_(self.bias, -bound, bound)

    def _sq_norm_train(self, size: None) -> torch.Tensor:
        w = _param_dtype(self.weights)
        g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        return torch.linalg.eigvalsh(g)[-1]

    def _norm_upper(self, size: None) -> float:
        return spectral_norm_upper(self.weights)

    def _bound_size(self, input_size) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"CPLLinear expects (N, {self.features}), got {tuple(x.shape)}")
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        self._last_dtype = dtype
        h = self._step(None, dtype)
        res = F.relu(F.linear(x, self.weights, self.bias))
        return x - h.to(res.dtype) * F.linear(res, self.weights.T)

    def extra_repr(self) -> str:
        return f"features={self.features}, inner_dim={self.inner_dim}"
