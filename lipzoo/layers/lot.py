"""Layer-wise Orthogonal Training convolutions (LOT; Xu, Li & Li, NeurIPS'22, arXiv 2210.11620, Sec. 3).

A LOT convolution orthogonalises an unconstrained kernel ``V`` (c_out x c_in x k x k) frequency by frequency:
on an ``nh x nw`` grid the circular convolution is block-diagonal in the 2-D DFT basis, with one
``c_out x c_in`` matrix ``V_f`` per frequency f, and

    W_f = (V_f V_f^H + eps I)^(-1/2) V_f                                                  (paper Eq. 5-6)

has orthonormal rows (c_out <= c_in) or columns (c_out >= c_in) up to ``eps``. The inverse square root is
computed as the authors do (``lot_ortho_conv.py``): ``S = V_f V_f^H + eps I``, ``nu = ||S||_F + eps``,
``S <- S / nu``, then ``T`` coupled Newton-Schulz steps ``Y0 = S, Z0 = I; M = (3I - Z Y) / 2; Y <- Y M;
Z <- M Z`` (Z -> S^(-1/2)), and ``W_f = Z V_f / sqrt(nu)``.

Conventions that fix the realised operator (they match the authors' code):

* stride 2 = ``PixelUnshuffle(2)`` first (channel ``4c + 2dy + dx``), then a stride-1 LOT on 4 c_in channels;
* the input is zero-padded by ``p = k // 2`` on every side (grid ``n = H + 2p``), convolved *circularly* on
  that grid, and cropped back to ``H x W``; this is ``conv2d(x, V, padding=p)`` on the torus, i.e.
  ``V_f = exp(2 pi i s (u/nh + v/nw)) conj(DFT(V)_f)`` with ``s = -(k // 2)`` (``-(k-1)//2`` in the code);
* ``k = 1``: ``V_f = V`` at every frequency, so the layer is the pointwise map ``W = orth(V)``, computed once
  in real arithmetic and applied as a 1x1 convolution (no FFT, any input size).

Real-input symmetry ``W_{-f} = conj(W_f)`` lets the forward use ``rfft2``/``irfft2`` (only the
``nh x (nw//2 + 1)`` half plane is orthogonalised and applied).

Lipschitz contract (``LOTConv2d.lipschitz_bound``): PROVEN, in l2, for real inputs of the stated spatial size:
the bound is ``max_f ||W_f||_2`` over the matrices the forward actually applies (half plane; the other
half are their conjugates), computed in float64 by ``torch.linalg.matrix_norm(ord=2)`` (+1e-12 relative
slack for the float64 SVD). Pad and crop have norm <= 1, the (unitary) DFT preserves norms, and taking the
real part (``irfft2``) has norm <= 1, so nothing is assumed about the Newton-Schulz convergence or ``eps``.
Because ``W_f`` depends on the grid, the bound depends on the input size (not for ``k = 1``).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import LAPACK_SVD_SLACK, autocast_off, parametrization_dtype, svd_norm_bound
from .base import LipschitzModule, ParametrizationCache

__all__ = ["lot_orthogonalize", "fft_shift", "LOTConv2d", "LOTLinear"]

Size2 = tuple[int, int]


def lot_orthogonalize(v: torch.Tensor, iters: int, eps: float = 1e-4) -> torch.Tensor:
    """``(V V^H + eps I)^(-1/2) V`` for a batch of matrices ``v`` (..., c_out, c_in), by ``iters`` coupled
    Newton-Schulz steps on ``S / (||S||_F + eps)`` (the authors' scaling, so the eigenvalues lie in (0, 1]).

    Exact only in the limit ``iters -> inf``; with finite ``iters`` the singular values of the result are
    *approximately* 1 (``sigma / sqrt(sigma^2 + eps)``, less where the iteration has not converged). Callers
    that need a proven bound measure the result (see :meth:`LOTConv2d.lipschitz_bound`).
    """
    batch_shape, (c_out, c_in) = v.shape[:-2], v.shape[-2:]
    v = v.reshape(-1, c_out, c_in)
    eye = torch.eye(c_out, dtype=v.dtype, device=v.device)
    s = torch.baddbmm(eps * eye, v, v.mH)  # V V^H + eps I
    nu = torch.linalg.matrix_norm(s, keepdim=True) + eps  # Frobenius norm, per matrix
    if iters <= 0:
        return (v / nu.sqrt()).reshape(*batch_shape, c_out, c_in)
    s = s / nu
    # M = (3I - Z Y) / 2 as one fused 1.5 I - 0.5 Z Y (scaling by 1/2 is exact). The first step has Z0 = I
    # (I @ Y and M @ I are exact) and the last Y update is never used.
    half3 = 1.5 * eye
    z = half3 - 0.5 * s
    y = torch.bmm(s, z)
    for step in range(1, iters):
        m = torch.baddbmm(half3, z, y, alpha=-0.5)
        if step < iters - 1:
            y = torch.bmm(y, m)
        z = torch.bmm(m, z)
    return (torch.bmm(z, v) / nu.sqrt()).reshape(*batch_shape, c_out, c_in)


@lru_cache(maxsize=64)
def _fft_shift_cached(nh: int, nw: int, s: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    u = torch.arange(nh, dtype=torch.float64).view(-1, 1) / nh
    v = torch.arange(nw // 2 + 1, dtype=torch.float64).view(1, -1) / nw
    angle = 2 * math.pi * s * (u + v)
    return torch.polar(torch.ones_like(angle), angle).to(dtype=dtype, device=device)


def fft_shift(
    nh: int, nw: int, s: int, dtype: torch.dtype = torch.complex64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``exp(2 pi i s (u/nh + v/nw))`` on the rfft half plane (``nh x (nw//2 + 1)``); cached per size.

    Multiplying the spectrum by it shifts the circular correlation by ``s`` pixels (``s = -(k//2)`` centres a
    ``k x k`` kernel). The returned tensor is shared: do not modify it in place.
    """
    return _fft_shift_cached(int(nh), int(nw), int(s), dtype, str(torch.device(device)))


@lru_cache(maxsize=64)
def _imag_mask_cached(nh: int, nw: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    mask = torch.ones(nh, nw // 2 + 1, dtype=dtype, device=device)
    rows = [0] + ([nh // 2] if nh % 2 == 0 else [])
    cols = [0] + ([nw // 2] if nw % 2 == 0 else [])
    for u in rows:
        mask[u, cols] = 0.0
    return mask


def _realify_self_conjugate(vf: torch.Tensor, nw: int) -> torch.Tensor:
    """Zero the imaginary part at the self-conjugate frequencies ``(u, v) = (-u, -v) mod n`` of a spectrum
    (..., nh, nw//2+1) of real data on an nh x nw grid, where it is zero in exact arithmetic.

    Besides exactness this matters for speed: round-off-sized imaginary parts multiplied together in complex
    GEMMs (Newton-Schulz and its backward) underflow to subnormal numbers, which made CPU training ~3x slower.
    """
    mask = _imag_mask_cached(vf.shape[-2], nw, vf.real.dtype, str(vf.device))
    return torch.complex(vf.real, vf.imag * mask)


def _as_size2(size: int | Size2) -> Size2:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


class _FrequencyMatmul(torch.autograd.Function):
    """``z_f = W_f x_f`` for w (F, c_out, c_in) and x (F, c_in, B) contiguous, complex: one ``bmm`` over
    frequencies whose backward hands ``bmm`` contiguous gradients (autograd's own backward would pass the
    permuted gradient, batch stride 1, for which CPU ``bmm`` loops matrix by matrix: ~100x slower here).
    Supports ``torch.func`` (jvp, vjp, vmap)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(w, x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        w, x = inputs
        ctx.save_for_backward(w, x)
        ctx.save_for_forward(w, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w, x = ctx.saved_tensors
        # one contiguous copy of conj(grad); then gw = g x^H = conj(conj(g) x^T) and gx = w^H g =
        # conj(w^T conj(g)) need no conjugated copy of the (large) saved x (bmm materialises conj operands)
        gc = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device).copy_(grad.conj())
        gw = torch.bmm(gc, x.mT).conj() if ctx.needs_input_grad[0] else None
        gx = torch.bmm(w.mT, gc).conj() if ctx.needs_input_grad[1] else None
        return gw, gx

    @staticmethod
    def jvp(ctx, w_t: torch.Tensor | None, x_t: torch.Tensor | None) -> torch.Tensor:
        w, x = ctx.saved_tensors
        out = None if w_t is None else torch.bmm(w_t, x)
        if x_t is not None:
            out = torch.bmm(w, x_t) if out is None else out + torch.bmm(w, x_t)
        return out


class LOTConv2d(LipschitzModule):
    """LOT convolution ``in_channels -> out_channels``, kernel ``k`` (odd), stride 1 or 2.

    Parameters (authors' names and shapes): ``weight`` (out, in * stride^2, k, k) and ``bias`` (out,).
    Square layers (``out == in * stride^2``) start at the identity (centre tap, zero bias); the others use
    PyTorch's default ``Conv2d`` init.

    Args:
        train_iters / eval_iters: Newton-Schulz steps in training / eval mode (authors: 10 / 10).
        eps: the ``eps`` of ``S = V V^H + eps I`` and of ``||S||_F + eps`` (authors: 1e-4).
        ortho_dtype: ``torch.float64`` computes the per-frequency matrices in complex128 (the paper's FP64
            setting) and casts them to the input's precision to apply them; ``None``: the precision of the
            weights and input, at least float32. Under ``torch.autocast`` everything here runs in float32
            (or float64); the output is float32 (float64 for float64 inputs or weights).
        input_size: spatial size ``H`` or ``(H, W)`` of this layer's input (before the unshuffle); used by
            :meth:`lipschitz_bound` until a forward has seen another size.

    In eval mode the orthogonalised matrices are cached per grid size and precision (invalidated by any
    parameter change, ``load_state_dict``, ``.to()`` and ``train()``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        train_iters: int = 10,
        eval_iters: int = 10,
        eps: float = 1e-4,
        ortho_dtype: torch.dtype | None = None,
        input_size: int | Size2 | None = None,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"LOTConv2d needs an odd kernel size, got {kernel_size}")
        if stride not in (1, 2):
            raise ValueError(f"LOTConv2d supports stride 1 or 2 (unshuffle), got {stride}")
        if ortho_dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"ortho_dtype must be None, torch.float32 or torch.float64, got {ortho_dtype}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.train_iters, self.eval_iters, self.eps = train_iters, eval_iters, eps
        self.ortho_dtype = ortho_dtype
        self.input_size: Size2 | None = None if input_size is None else _as_size2(input_size)
        c_in = in_channels * stride * stride
        self.weight = nn.Parameter(torch.empty(out_channels, c_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self._last_dtype: torch.dtype | None = None
        self.reset_parameters()

    @property
    def is_square(self) -> bool:
        return self.weight.shape[0] == self.weight.shape[1]

    def reset_parameters(self) -> None:
        if self.is_square:
            k = self.kernel_size
            with torch.no_grad():
                self.weight.zero_()
                idx = torch.arange(self.out_channels)
                self.weight[idx, idx, k // 2, k // 2] = 1.0
                if self.bias is not None:
                    self.bias.zero_()
            return
        # nn.Conv2d's default init
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    # ----------------------------------------------------------------------------------------- realised W
    def _grid(self, input_size: Size2) -> Size2:
        """The padded FFT grid for an input of spatial size ``input_size`` (before the unshuffle)."""
        h, w = input_size
        if self.stride > 1:
            if h % self.stride or w % self.stride:
                raise ValueError(f"stride-{self.stride} LOT needs an input size divisible by it, got {input_size}")
            h, w = h // self.stride, w // self.stride
        p = self.kernel_size // 2
        return (h + 2 * p, w + 2 * p)

    def _compute_weights(self, grid: Size2 | None, apply_dtype: torch.dtype) -> torch.Tensor:
        """Realised matrices: (c_out, c_in) real for k = 1, else (nh * (nw//2+1), c_out, c_in) complex."""
        iters = self.train_iters if self.training else self.eval_iters
        with autocast_off(self.weight.device):
            work = self.ortho_dtype or parametrization_dtype(self.weight.dtype, apply_dtype)
            v = self.weight.to(work)
            if self.kernel_size == 1:
                return lot_orthogonalize(v[:, :, 0, 0], iters, self.eps).to(apply_dtype)
            nh, nw = grid
            vf = torch.fft.rfft2(v, s=(nh, nw)).conj()  # (c_out, c_in, nh, nw//2+1)
            vf = vf * fft_shift(nh, nw, -(self.kernel_size // 2), vf.dtype, vf.device)
            vf = _realify_self_conjugate(vf, nw)
            vf = vf.permute(2, 3, 0, 1).reshape(-1, *vf.shape[:2])
            w = lot_orthogonalize(vf, iters, self.eps)
            return w.to(torch.complex128 if apply_dtype == torch.float64 else torch.complex64)

    def realised_weights(
        self, input_size: int | Size2 | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The matrices the forward applies for inputs of ``input_size`` (default: see :meth:`lipschitz_bound`)
        and real precision ``dtype`` (default: that of the last forward, else of the weights, >= float32).

        ``k = 1``: one real (c_out, c_in) matrix. ``k > 1``: (nh * (nw//2 + 1), c_out, c_in) complex, rfft
        half plane in row-major (u, v) order. Cached in eval mode.
        """
        apply_dtype = parametrization_dtype(dtype or self._last_dtype or self.weight.dtype)
        grid = None if self.kernel_size == 1 else self._grid(self._resolve_size(input_size))
        return self._cache.get(lambda: self._compute_weights(grid, apply_dtype), extra=(grid, apply_dtype))

    def _resolve_size(self, input_size: int | Size2 | None) -> Size2:
        if input_size is not None:
            return _as_size2(input_size)
        if self.input_size is None:
            raise ValueError(
                "the LOT bound depends on the input size: pass input_size=, construct the layer with "
                "input_size=, or run a forward first"
            )
        return self.input_size

    # -------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"LOTConv2d expects (N, C, H, W), got {tuple(x.shape)}")
        size = (x.shape[-2], x.shape[-1])
        apply_dtype = parametrization_dtype(x.dtype, self.weight.dtype)
        self.input_size, self._last_dtype = size, apply_dtype
        w = self.realised_weights(size, apply_dtype)
        with autocast_off(x.device):
            x = x.to(apply_dtype)
            if self.stride > 1:
                x = F.pixel_unshuffle(x, self.stride)
            bias = None if self.bias is None else self.bias.to(apply_dtype)
            if self.kernel_size == 1:
                return F.conv2d(x, w[:, :, None, None], bias)
            return self._circular_apply(x, w, bias)

    def _circular_apply(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        b, c_in, h, wd = x.shape
        p = self.kernel_size // 2
        nh, nw = h + 2 * p, wd + 2 * p
        # zero-padding at the end instead of both sides is a circular shift by p of the padded signal; the
        # circular conv commutes with it, so cropping [:h, :w] here equals the authors' [p:-p, p:-p].
        xf = torch.fft.rfft2(x, s=(nh, nw))  # (B, c_in, nh, nw//2+1)
        nwr = xf.shape[-1]
        xf = xf.permute(2, 3, 1, 0).contiguous().view(nh * nwr, c_in, b)  # frequency-major (F, c_in, B)
        zf = _FrequencyMatmul.apply(w, xf)  # (F, c_out, B)
        zf = zf.view(nh, nwr, -1, b).permute(3, 2, 0, 1)  # (B, c_out, nh, nwr) view; irfft2 copies it once
        z = torch.fft.irfft2(zf, s=(nh, nw))[..., :h, :wd]
        return z if bias is None else z + bias.view(1, -1, 1, 1)

    # ------------------------------------------------------------------------------------------- the bound
    @torch.no_grad()
    def lipschitz_bound(self, input_size: int | Size2 | None = None) -> float:
        """PROVEN l2 bound for inputs of spatial size ``input_size`` (before the unshuffle).

        Default size: the last forward's input size, else the ``input_size`` given at construction (for
        ``k = 1`` the size does not matter). The bound is ``max_f ||W_f||_2`` of the matrices the forward
        applies in the current mode (train/eval iterations) and the last forward's precision, computed in
        float64 (module docstring): measured on the realised matrices, so it holds whether or not Newton-Schulz
        has converged (it is ~1 - eps/2 when it has). Cached in eval mode like the weights.
        """
        size = None if self.kernel_size == 1 else self._resolve_size(input_size)
        return self._bound_cache.get(lambda: self._spectral_bound(size), extra=(size, self._last_dtype))

    def _spectral_bound(self, size: Size2 | None) -> float:
        return svd_norm_bound(self.realised_weights(size), LAPACK_SVD_SLACK)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"iters=({self.train_iters}, {self.eval_iters}), eps={self.eps}")
        if self.ortho_dtype is not None:
            s += f", ortho_dtype={self.ortho_dtype}"
        if self.bias is None:
            s += ", bias=False"
        return s


class LOTLinear(LOTConv2d):
    """LOT 1x1 layer used as a classification head: ``(N, C) or (N, C, 1, 1) -> (N, num_classes)``.

    ``W = orth(V)`` with ``V`` = ``weight[:, :, 0, 0]`` (num_classes x in_features): for ``num_classes <=
    in_features`` its rows are orthonormal up to ``eps`` and Newton-Schulz error; the bound is ``||W||_2``
    (computed, float64). Keys ``weight`` (num_classes, in_features, 1, 1) and ``bias`` as the authors' LOT head.
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, **kwargs):
        super().__init__(in_features, num_classes, kernel_size=1, stride=1, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"LOTLinear expects {self.in_channels} features, got {x.shape[1]}")
        return super().forward(x[:, :, None, None]).flatten(1)
