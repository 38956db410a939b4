"""Cayley-transform orthogonal layers (Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley
Transform", ICLR 2021; authors' code locuslab/orthogonal-convolutions, also ``cayley_ortho_conv.py`` in the SOC repo).

**Convolution** (:class:`CayleyConv2d`). A free kernel ``weight`` (c_out, c_in, k, k) defines a *circular*
convolution on the input grid ``H x W``; it is block-diagonal in the unitary 2-D DFT basis with one
``c_out x c_in`` matrix per frequency, ``W_f = shift_f * conj(rfft2(weight, (H, W)))_f`` (the kernel centred as in a
"same" convolution, :func:`~lipzoo.layers.sandwich.fft_kernel`, the same spectral convention as the Sandwich conv).
Every frequency is orthogonalised by the Cayley transform (:func:`~lipzoo.layers.sandwich.cayley`):
``Q_f = cayley(alpha * W_f / ||W_hat||_F)`` where ``||W_hat||_F`` runs over all rfft2 frequencies (half plane) and
``alpha`` is a trained scalar (initialised to ``||W_hat||_F`` on the layer's input grid, as the authors' lazy init).
For ``c_out >= c_in`` the Cayley transform of ``[U; V]`` is ``[(I + A)^-1 (I - A); -2 V (I + A)^-1]`` with the
skew-Hermitian-plus-PSD ``A = U - U^H + V^H V``: orthonormal columns; for ``c_out < c_in`` the transposed form has
orthonormal rows. So the layer is an isometry (or a co-isometry) *by construction*: the forward is
``y = irfft2(Q_f rfft2(x)_f) + b``.

**What is proven** (:meth:`CayleyConv2d.lipschitz_bound`): the bound is measured on the realised operator, never
assumed to be 1: ``max_f ||Q_eff_f||_2`` over the rfft2 half plane, in float64 of the float32 (or float64) matrices
the forward applies (:func:`spectral_norm_bound`: the largest eigenvalue of the small Gram matrix plus explicit slack
for its float64 rounding). ``irfft2`` keeps only the
Hermitian part ``(Q(u, v) + conj Q(-u, v)) / 2`` on the self-conjugate columns (v = 0 and v = W/2), so the bound uses
exactly these effective operators (:meth:`CayleyConv2d.effective_operators`). The unitary DFT preserves norms, so
the circular convolution's l2 norm equals the max over frequencies. At the self-conjugate frequencies themselves the
imaginary part of ``W_f`` (zero in exact arithmetic) is set to zero before the transform.

**1x1 kernels** have ``W_f = W`` at every frequency: ``Q = cayley(alpha W / (sqrt(#freq) ||W||_F))`` is one real
matrix, applied as a 1x1 convolution (no FFT); ``#freq = H (W//2 + 1)`` keeps the authors' grid dependence.

**Stride 2** (the authors' ``StridedConv``): space-to-depth (``PixelUnshuffle(2)``, channel ``4c + 2dy + dx``, the
authors' einops rearrange) then a stride-1 layer with ``4 c_in`` inputs and kernel ``k -> max(1, k // 2)``.

**Dense layer** (:class:`CayleyLinear`): ``Q = cayley(alpha W / ||W||_F)`` with ``W`` (out, in), ``alpha``
initialised to ``||W||_F``; the bound is the float64 spectral norm of the realised ``Q`` (plus rounding slack).

**Numerics.** The parametrisation is computed in float32 (float64 for float64 weights) with autocast disabled, and
cached in eval mode by :class:`~lipzoo.layers.base.ParametrizationCache` (key: every parameter and the grid). The
batched matrix inverse goes through the Sandwich layer's helper (``lipzoo.layers.sandwich._inv``, via ``cayley``),
which avoids a oneMKL hang in batched LU on CPU.

Shared math is imported, not repeated: :func:`~lipzoo.layers.sandwich.cayley`, ``fft_kernel``, and the private
helpers ``_real_right_matrix``, ``_spectral_apply``, ``_complex_fro_norm``,
``_act_dtype``, ``_pair`` from :mod:`lipzoo.layers.sandwich`, and ``_imag_mask_cached`` from
:mod:`lipzoo.layers.lot`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, parametrization_dtype, spectral_norm_bound
from .base import LipschitzModule, ParametrizationCache, RealisedMatrixLinear
from .lot import _imag_mask_cached
from .sandwich import (
    _act_dtype,
    _complex_fro_norm,
    _pair,
    _real_right_matrix,
    _spectral_apply,
    bound_sizes,
    cayley,
    fft_kernel,
    unshuffled_grid,
)
from .shapes import PixelUnshuffle

__all__ = ["CayleyConv2d", "CayleyLinear", "spectral_norm_bound"]

_Size = tuple[int, int]


class CayleyConv2d(LipschitzModule):
    """Circular Cayley convolution ``in_channels -> out_channels`` (authors' ``CayleyConv``), stride 1 or 2.

    Parameters (authors' names): ``weight`` (c_out, c_in', k', k') with ``c_in' = 4 c_in`` and
    ``k' = max(1, k // 2)`` for stride 2, ``bias`` (c_out,), ``alpha`` (0-dim, trained).
    ``input_size`` (optional; the layer's input size, before any unshuffle) fixes the initial ``alpha`` and is the
    default grid of :meth:`lipschitz_bound` until a forward has seen a size. Any ``H x W >= k' x k'`` input works;
    the parametrisation depends on the grid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        input_size: int | Sequence[int] | None = None,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"CayleyConv2d supports stride 1 or 2, got {stride}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size = max(1, kernel_size // 2) if stride == 2 else kernel_size
        self.unshuffle = PixelUnshuffle(2) if stride == 2 else None
        k = self.kernel_size
        self.input_size = None if input_size is None else _pair(input_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels * stride * stride, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.alpha = nn.Parameter(torch.empty(()))
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self._seen_sizes: set[_Size] = set()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default init (the authors' layer is an nn.Conv2d subclass)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            side = self.input_size or (32, 32)
            self.alpha.copy_(self.fft_weight_norm(side))

    def _grid(self, input_size: _Size) -> _Size:
        return unshuffled_grid(input_size, self.stride, self.kernel_size, "CayleyConv2d")

    @torch.no_grad()
    def fft_weight_norm(self, input_size: int | Sequence[int]) -> torch.Tensor:
        """``||W_hat||_F`` over the rfft2 half plane of the grid of ``input_size`` (the authors' initial alpha)."""
        grid = self._grid(_pair(input_size))
        w = self.weight.to(parametrization_dtype(self.weight.dtype))
        if self.kernel_size == 1:
            return w.norm() * math.sqrt(grid[0] * (grid[1] // 2 + 1))
        return _complex_fro_norm(fft_kernel(w, grid))

    def _compute_params(self, grid: _Size) -> dict[str, torch.Tensor]:
        """``Q`` (``(F, c_out, c_in')`` complex, or ``(1, c_out, c_in')`` real for 1x1 kernels) and the operator as
        the forward applies it (real-embedded per-frequency matrix, or a 1x1 conv kernel)."""
        with autocast_off(self.weight.device):
            dt = parametrization_dtype(self.weight.dtype)
            w, alpha = self.weight.to(dt), self.alpha.to(dt)
            if self.kernel_size == 1:
                w = w[:, :, 0, 0]
                nfreq = grid[0] * (grid[1] // 2 + 1)
                Q = cayley(alpha * w / (w.norm() * math.sqrt(nfreq)))
                return dict(Q=Q[None], op=Q[:, :, None, None])
            wf = fft_kernel(w, grid)  # (F, c_out, c_in')
            # self-conjugate frequencies: W_f is real in exact arithmetic
            mask = _imag_mask_cached(grid[0], grid[1], wf.real.dtype, str(wf.device)).reshape(-1, 1, 1)
            wf = torch.complex(wf.real, wf.imag * mask)
            Q = cayley((alpha / _complex_fro_norm(wf)) * wf)
            return dict(Q=Q, op=_real_right_matrix(Q))

    def _params(self, grid: _Size) -> dict[str, torch.Tensor]:
        return self._cache.get(lambda: self._compute_params(grid), extra=grid)

    def orthogonal_matrices(self, input_size: int | Sequence[int]) -> torch.Tensor:
        """Per-frequency ``Q_f`` (rfft2 half plane, row-major) for inputs of ``input_size``; ``(1, c_out, c_in')``
        real for 1x1 kernels. Cached in eval mode per grid."""
        return self._params(self._grid(_pair(input_size)))["Q"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"CayleyConv2d expects (N, C, H, W), got {tuple(x.shape)}")
        size = (x.shape[-2], x.shape[-1])
        self._seen_sizes.add(size)
        p = self._params(self._grid(size))
        if self.unshuffle is not None:
            x = self.unshuffle(x)
        if self.kernel_size == 1:
            dt = _act_dtype(x, p["op"].dtype)
            return F.conv2d(x, p["op"].to(dt), None if self.bias is None else self.bias.to(dt))
        y = _spectral_apply(p["op"], x.to(p["op"].dtype))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def effective_operators(self, input_size: int | Sequence[int]) -> torch.Tensor:
        """Per-frequency matrices the realised map applies for inputs of ``input_size`` (see the module docstring):
        the Hermitian part on the self-conjugate columns, ``Q_f`` elsewhere."""
        grid = self._grid(_pair(input_size))
        Q = self._params(grid)["Q"]
        if self.kernel_size == 1:
            return Q
        H, Wr = grid[0], grid[1] // 2 + 1
        neg = (-torch.arange(H, device=Q.device)) % H
        M = Q.reshape(H, Wr, *Q.shape[-2:]).clone()
        for v in [0] + ([grid[1] // 2] if grid[1] % 2 == 0 else []):
            M[:, v] = 0.5 * (M[:, v] + M[neg, v].conj())
        return M.reshape(H * Wr, *Q.shape[-2:])

    def _sizes(self, input_size: int | Sequence[int] | None) -> tuple[_Size, ...]:
        return bound_sizes(input_size, self._seen_sizes, self.input_size, "CayleyConv2d")

    @torch.no_grad()
    def lipschitz_bound(self, input_size: int | Sequence[int] | None = None) -> float:
        """PROVEN l2 bound for inputs of ``input_size`` (default: the constructor's ``input_size`` and every size
        this layer has run on; the max over them): ``max_f ||Q_eff_f||_2`` in float64, plus rounding slack. It is
        ``1`` up to the float orthogonality defect of the realised matrices."""
        sizes = self._sizes(input_size)
        return self._bound_cache.get(
            lambda: max(spectral_norm_bound(self.effective_operators(s)) for s in sizes), extra=sizes)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"bias={self.bias is not None}")
        return s + (f", input_size={self.input_size}" if self.input_size is not None else "")


class CayleyLinear(RealisedMatrixLinear):
    """Dense Cayley layer (authors' ``CayleyLinear``): ``y = Q x + b``, ``Q = cayley(alpha W / ||W||_F)``.

    ``Q`` has orthonormal columns (out >= in) or rows (out < in). Inputs of any shape ``(N, ...)`` are flattened.
    Parameters: ``weight`` (out, in), init U(+-1/sqrt(in)); ``bias`` (out,), same init; ``alpha`` (0-dim),
    init ``||W||_F``. ``lipschitz_bound()``: the float64 spectral norm of the realised ``Q`` plus rounding slack.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.alpha = nn.Parameter(torch.empty(()))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight, -std, std)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -std, std)
        with torch.no_grad():
            self.alpha.copy_(self.weight.norm())

    def _compute_matrix(self) -> torch.Tensor:
        with autocast_off(self.weight.device):
            dt = parametrization_dtype(self.weight.dtype)
            w = self.weight.to(dt)
            return cayley(self.alpha.to(dt) * w / w.norm())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
