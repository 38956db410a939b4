"""Block Convolution Orthogonal Parametrisation (BCOP; Li et al., "Preventing Gradient Attenuation in Lipschitz
Constrained Convolutional Networks", NeurIPS 2019; authors' code ColinQiyangLi/LConvNet ``lconvnet/layers/bcop.py``,
also ``block_ortho_conv.py`` in the SOC repo and ``lipnn/layers/lipschitz/bcop.py`` in 1LipschitzLayersCompared).

**Parametrisation.** ``param_matrices`` holds ``2k - 1`` unconstrained ``n x n`` matrices (``n = max(c_in, c_out)``),
each orthonormalised by first-order Bjorck iterations (:func:`bjorck_orthonormalize`). The first gives the
``c_in x c_out`` block ``H`` (top-left of the orthonormalised matrix); each of the other ``2k - 2`` gives a symmetric
projector of rank ``n // 2``: ``P = O[:, :n//2] O[:, :n//2]^T`` (the authors' "half" mask). Consecutive pairs
``(P, Q)`` give the 2x2 orthogonal block kernels ``[[P Q, P (I - Q)], [(I - P) Q, (I - P)(I - Q)]]``; their
``k - 1``-fold block (matrix) convolution is a ``k x k`` kernel of ``n x n`` matrices, which is multiplied by ``H``
(``H^T`` when ``c_in > c_out``) and arranged as the ``(c_out, c_in, k, k)`` conv kernel exactly as the authors do
(:func:`bcop_kernel`). The convolution is **circular** (the input is padded circularly by ``k // 2`` and convolved
without padding), stride 1; stride 2 is space-to-depth (``PixelUnshuffle(2)``) and kernel ``k -> max(1, k // 2)``
(the ``StridedConv`` wrapper of locuslab/orthogonal-convolutions, used for KWLarge).

With exact orthogonal matrices this circular convolution is orthogonal (a product of block-orthogonal 2x2 kernels).
Bjorck stops after finitely many iterations, so the projectors are only approximately idempotent and ``H`` only
approximately orthonormal: **nothing about orthogonality is assumed**.

**What is proven** (:meth:`BCOPConv2d.lipschitz_bound`): the EXACT l2 norm of the realised circular convolution for
the input size, computed in float64: the realised (float32) kernel is cast to float64 (exact), its per-frequency
matrices ``K_f`` on the (unshuffled) input grid are formed by a float64 FFT (:func:`~lipzoo.layers.sandwich.fft_kernel`,
the same centring as ``conv2d`` with circular padding ``k // 2``) and the bound is ``max_f ||K_f||_2`` (largest
eigenvalue of the float64 Gram matrices) plus explicit slack for the float64 FFT and eigensolver rounding. The unitary DFT block-diagonalises a circular
convolution and ``K_{-f} = conj(K_f)``, so the max over the rfft2 half plane is the operator norm.

**Scaling before Bjorck.** The authors divide by a power-iteration estimate from a random start (so their forward is
not deterministic). lipzoo uses a deterministic power iteration (fixed start, no gradient) and never divides by less
than ``||M||_F / 1.7`` (``||M||_2 <= ||M||_F``), which keeps every singular value below ``1.7 < sqrt 3`` where the
iteration converges. This changes how fast Bjorck converges, never the bound (which is measured).

**Dense layer** (:class:`BjorckLinear`, LConvNet's ``BjorckLinear``): ``W = bjorck(weight)``; the bound is the float64
spectral norm of the realised ``W`` plus rounding slack.

Parametrisations run in float32 (float64 for float64 weights) with autocast disabled and are cached in eval mode by
:class:`~lipzoo.layers.base.ParametrizationCache`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, parametrization_dtype, spectral_norm_bound
from .base import LipschitzModule, ParametrizationCache, RealisedMatrixLinear, float_rounding_slack
from .sandwich import _act_dtype, _pair, bound_sizes, fft_kernel, unshuffled_grid
from .shapes import PixelUnshuffle

__all__ = ["bjorck_orthonormalize", "bcop_kernel", "circular_conv_norm_bound", "BCOPConv2d", "BjorckLinear"]

_Size = tuple[int, int]
# the scale never goes below ||M||_F / _MAX_SIGMA, so every singular value is <= _MAX_SIGMA < sqrt(3)
_MAX_SIGMA = 1.7


@torch.no_grad()
def _bjorck_scale(w: torch.Tensor, power_iters: int = 10) -> torch.Tensor:
    """Deterministic scale ``s`` (shape ``(..., 1, 1)``) with ``||w||_2 / s <= 1.7``: a power-iteration estimate of
    ``||w||_2`` from a fixed start, but at least ``||w||_F / 1.7``."""
    v = torch.ones(*w.shape[:-2], w.shape[-1], 1, dtype=w.dtype, device=w.device)
    v = v / v.norm(dim=-2, keepdim=True)
    for _ in range(power_iters):
        v = w.mT @ (w @ v)
        v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    est = (w @ v).norm(dim=-2, keepdim=True)
    fro = torch.linalg.matrix_norm(w, keepdim=True)
    return torch.maximum(est, fro / _MAX_SIGMA).clamp_min(torch.finfo(w.dtype).tiny)


def bjorck_orthonormalize(w: torch.Tensor, iters: int, beta: float = 0.5, scale: bool = True) -> torch.Tensor:
    """First-order Bjorck orthonormalisation of a (batch of) matrices ``(..., rows, cols)``:
    ``w <- (1 + beta) w - beta w (w^T w)``, ``iters`` times, on the tall orientation (wide inputs are transposed),
    after dividing by :func:`_bjorck_scale` (no gradient through the scale, as the authors). Orthonormal only in the
    limit; callers that need a bound measure the result."""
    if w.shape[-2] < w.shape[-1]:
        return bjorck_orthonormalize(w.mT, iters, beta, scale).mT
    if scale:
        w = w / _bjorck_scale(w)
    for _ in range(iters):
        w = (1.0 + beta) * w - beta * (w @ (w.mT @ w))
    return w


def _block_orth(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The 2 x 2 kernel ``[[p q, p (I - q)], [(I - p) q, (I - p)(I - q)]]`` as ``(2, 2, n, n)``."""
    pq = p @ q
    p_iq = p - pq
    ip_q = q - pq
    ip_iq = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device) - p - q + pq
    return torch.stack((torch.stack((pq, p_iq)), torch.stack((ip_q, ip_iq))))


def _matrix_conv(m1: torch.Tensor, m2: torch.Tensor) -> torch.Tensor:
    """Full 2-D convolution of kernels of matrices: ``r[i, j] = sum_{a, b} m1[i - a, j - b] @ m2[a, b]``."""
    k1, k2, n = m1.shape[0], m2.shape[0], m1.shape[-1]
    out = m1.new_zeros(k1 + k2 - 1, k1 + k2 - 1, n, n)
    for a in range(k2):
        for b in range(k2):
            out[a:a + k1, b:b + k1] += m1 @ m2[a, b]
    return out


def bcop_kernel(ortho: torch.Tensor, in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """The ``(c_out, c_in, k, k)`` conv kernel from the ``2k - 1`` orthonormalised ``n x n`` matrices ``ortho``.

    ``H = ortho[0, :c_in, :c_out]``; projectors ``P_j = O_j[:, :n//2] O_j[:, :n//2]^T`` from ``ortho[1:]``; block
    kernel ``B = block(P_1, P_2) * ... * block(P_{2k-3}, P_{2k-2})`` (matrix convolution); with ``c_in <= c_out``
    ``weight[o, c, a, b] = (H B[b, a])[c, o]``, else ``weight[o, c, a, b] = (H^T B[b, a])[o, c]`` (the authors'
    ``convolution_orthogonal_generator_projs``). ``k = 1``: ``weight[:, :, 0, 0] = H^T``.
    """
    n = ortho.shape[-1]
    H = ortho[0, :in_channels, :out_channels]
    if kernel_size == 1:
        return H.t()[:, :, None, None]
    half = ortho[1:, :, : n // 2]
    projs = half @ half.mT  # (2k - 2, n, n)
    B = _block_orth(projs[0], projs[1])
    for j in range(1, kernel_size - 1):
        B = _matrix_conv(B, _block_orth(projs[2 * j], projs[2 * j + 1]))
    if in_channels > out_channels:
        K = H.t() @ B  # (k, k, c_out, c_in) indexed [i, j, o, c]
        return K.permute(2, 3, 1, 0)
    K = H @ B  # (k, k, c_in, c_out) indexed [i, j, c, o]
    return K.permute(3, 2, 1, 0)


@torch.no_grad()
def circular_conv_norm_bound(weight: torch.Tensor, grid: _Size) -> float:
    """Proven upper bound (exact up to float64 rounding) of the l2 norm of the circular convolution with ``weight``
    ``(c_out, c_in, k, k)`` on an ``H x W`` grid: ``max_f ||K_f||_2`` of the float64 per-frequency matrices plus slack.

    Slack: every entry of ``K_f`` is a ``k^2``-term sum computed by a float64 FFT of length ``H W``; its error is at
    most ``gamma_m sum_d |w_{oc}(d)|`` with ``m = k^2 + 2 (H + W)`` (generous for the FFT's ``log``-depth), so the spectral
    norm error is at most ``gamma_m ||(sum_d |w_{oc}(d)|)_{oc}||_F``; :func:`~lipzoo.layers.cayley.spectral_norm_bound` adds its own slack.
    """
    w = weight.detach().to(torch.float64)
    H, W = grid
    k = w.shape[-1]
    sv = spectral_norm_bound(fft_kernel(w, (H, W)))
    fft_err = float_rounding_slack(k * k + 2 * (H + W), torch.float64) * float(w.abs().sum((-2, -1)).norm())
    return sv + fft_err


class BCOPConv2d(LipschitzModule):
    """BCOP circular convolution ``in_channels -> out_channels`` (odd kernel after the stride reduction), stride 1/2.

    Parameters (authors' names): ``param_matrices`` (2k' - 1, n, n) with ``n = max(c_in', c_out)``,
    ``c_in' = 4 c_in`` and ``k' = max(1, k // 2)`` for stride 2; ``bias`` (c_out,). Init: each matrix orthogonal with
    gain ``1/sqrt(n)``, bias U(+-1/sqrt(c_out)) (LConvNet). ``bjorck_iters`` / ``eval_bjorck_iters``: Bjorck
    iterations in training / eval mode (authors: 20 and 20). ``input_size``: default grid of :meth:`lipschitz_bound`
    until a forward has seen a size.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        bjorck_iters: int = 20,
        eval_bjorck_iters: int | None = None,
        bjorck_beta: float = 0.5,
        input_size: int | Sequence[int] | None = None,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"BCOPConv2d supports stride 1 or 2, got {stride}")
        k = max(1, kernel_size // 2) if stride == 2 else kernel_size
        if k % 2 != 1:
            raise ValueError(f"BCOPConv2d needs an odd kernel (after the stride-2 reduction), got {k}")
        self.in_channels, self.out_channels, self.stride, self.kernel_size = in_channels, out_channels, stride, k
        self.bjorck_iters = int(bjorck_iters)
        self.eval_bjorck_iters = int(bjorck_iters if eval_bjorck_iters is None else eval_bjorck_iters)
        self.bjorck_beta = float(bjorck_beta)
        self.unshuffle = PixelUnshuffle(2) if stride == 2 else None
        self.input_size = None if input_size is None else _pair(input_size)
        cin = in_channels * stride * stride
        self.max_channels = max(cin, out_channels)
        self.param_matrices = nn.Parameter(torch.empty(2 * k - 1, self.max_channels, self.max_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self._seen_sizes: set[_Size] = set()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = 1.0 / math.sqrt(self.max_channels)
        with torch.no_grad():
            for m in self.param_matrices:
                nn.init.orthogonal_(m, gain=gain)
        if self.bias is not None:
            std = 1.0 / math.sqrt(self.out_channels)
            nn.init.uniform_(self.bias, -std, std)

    def _compute_weight(self) -> torch.Tensor:
        iters = self.bjorck_iters if self.training else self.eval_bjorck_iters
        with autocast_off(self.param_matrices.device):
            m = self.param_matrices.to(parametrization_dtype(self.param_matrices.dtype))
            ortho = bjorck_orthonormalize(m, iters, self.bjorck_beta)
            cin = self.in_channels * self.stride * self.stride
            return bcop_kernel(ortho, cin, self.out_channels, self.kernel_size)

    def realised_weight(self) -> torch.Tensor:
        """The ``(c_out, c_in', k', k')`` kernel the forward applies (cached in eval mode)."""
        return self._cache.get(self._compute_weight)

    def _grid(self, input_size: _Size) -> _Size:
        return unshuffled_grid(input_size, self.stride, self.kernel_size, "BCOPConv2d")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"BCOPConv2d expects (N, C, H, W), got {tuple(x.shape)}")
        size = (x.shape[-2], x.shape[-1])
        self._grid(size)
        self._seen_sizes.add(size)
        w = self.realised_weight()
        if self.unshuffle is not None:
            x = self.unshuffle(x)
        dt = _act_dtype(x, w.dtype)
        bias = None if self.bias is None else self.bias.to(dt)
        p = self.kernel_size // 2
        if p:
            x = F.pad(x, (p, p, p, p), mode="circular")
        return F.conv2d(x.to(dt), w.to(dt), bias)

    def _sizes(self, input_size: int | Sequence[int] | None) -> tuple[_Size, ...]:
        return bound_sizes(input_size, self._seen_sizes, self.input_size, "BCOPConv2d")

    @torch.no_grad()
    def lipschitz_bound(self, input_size: int | Sequence[int] | None = None) -> float:
        """PROVEN l2 bound for inputs of ``input_size`` (default: the constructor's ``input_size`` and every size
        this layer has run on; the max over them): the exact float64 norm of the realised circular convolution
        on the (unshuffled) grid (:func:`circular_conv_norm_bound`), in the current mode's Bjorck iterations."""
        if self.kernel_size == 1:  # the same matrix at every frequency: the size does not matter
            return self._bound_cache.get(lambda: spectral_norm_bound(self.realised_weight()[:, :, 0, 0]))
        sizes = self._sizes(input_size)
        return self._bound_cache.get(
            lambda: max(circular_conv_norm_bound(self.realised_weight(), self._grid(s)) for s in sizes), extra=sizes)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"bias={self.bias is not None}, bjorck_iters=({self.bjorck_iters}, {self.eval_bjorck_iters})")
        return s + (f", input_size={self.input_size}" if self.input_size is not None else "")


class BjorckLinear(RealisedMatrixLinear):
    """Dense layer with a Bjorck-orthonormalised weight (LConvNet's ``BjorckLinear``): ``y = W x + b``.

    ``weight`` (out, in), orthogonal init; ``bias`` U(+-1/sqrt(in)). Inputs ``(N, ...)`` are flattened. The bound is
    the float64 spectral norm of the realised ``W`` plus rounding slack (never assumed 1).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bjorck_iters: int = 20,
                 eval_bjorck_iters: int | None = None, bjorck_beta: float = 0.5):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bjorck_iters = int(bjorck_iters)
        self.eval_bjorck_iters = int(bjorck_iters if eval_bjorck_iters is None else eval_bjorck_iters)
        self.bjorck_beta = float(bjorck_beta)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            std = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -std, std)

    def _compute_matrix(self) -> torch.Tensor:
        iters = self.bjorck_iters if self.training else self.eval_bjorck_iters
        with autocast_off(self.weight.device):
            w = self.weight.to(parametrization_dtype(self.weight.dtype))
            return bjorck_orthonormalize(w, iters, self.bjorck_beta)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"bjorck_iters=({self.bjorck_iters}, {self.eval_bjorck_iters})")
