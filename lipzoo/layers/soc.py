"""Skew Orthogonal Convolution (SOC; Singla & Feizi, ICML'21, and the "improved techniques" version of
Singla, Singla & Feizi, NeurIPS'22, arXiv 2211.08453).

Math (both versions). With ``P`` the trainable kernel of shape (C, C, k, k), ``C = max(c_in s^2, c_out)``:

* skew kernel ``L = (P - T(P)) / 2``, ``T`` = swap the channel axes and flip both spatial axes. With zero
  "same" padding (odd k), ``conv(., T(P))`` is the exact adjoint of ``conv(., P)``, so ``S = conv(., L)`` is a
  skew-symmetric operator on every input size and ``exp(S)`` is orthogonal;
* scaling ``L_n = c L / sigma`` with ``sigma = min_i <v_i, M_i(L) u_i>`` (the four "Fantastic Four" reshapes
  of L, with persistent power-iteration vectors ``u_i, v_i``) and ``c`` = ``correction`` (0.7 in the ICML'21
  code, 1 in the improved code, always 1 for k = 1). The scaling only controls the Taylor error;
* ``y = trunc_{c_out}( sum_{j=0..K} S^j pad_C(unshuffle_s(x)) / j! ) + b``: stride 2 is a 2x2 pixel-unshuffle
  (``nn.PixelUnshuffle`` channel order), zero channels are appended at the end when ``c_out > c_in s^2`` and
  the first ``c_out`` channels are kept when ``c_out < c_in s^2``.

Versions (``version=``): ``"icml21"`` (singlasahil14/SOC: K = 5 powers in training, 12 in eval, running sum;
power iteration 50 times on the first training step and every 200 steps, else once) and ``"improved"``
(singlasahil14/improved_l2_robustness: "6 / 15 terms" counting the identity = K = 5 / 14 powers, Horner form;
one power iteration per training forward, 50 on :meth:`SOCConv2d.update_sigma`). Eval never iterates: it uses
the *stored* vectors, as a checkpoint defines them.

Proven bound (:meth:`SOCConv2d.lipschitz_bound`, for the eval-mode map). Because ``L_n`` is exactly skew
(``fl(a - b) = -fl(b - a)``), ``exp(S)`` is orthogonal and the Taylor remainder in integral form gives
``||sum_{j<=K} S^j/j!|| <= 1 + s^{K+1} / (K+1)!`` for any ``s >= ||S||_2``. ``s`` is the Fantastic-Four bound
(Singla & Feizi 2021, Thm 1, valid for zero padding as a compression of a circular convolution)
``sqrt(k k) min_i ||M_i(L_n)||_2``, each norm computed in float64 (Gram eigenvalues plus rounding slack, not
power iteration) from the kernel the forward uses. Unshuffle is a permutation, channel padding an isometry
and truncation a projection (bound 1).
"""
from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, promoted, spectral_norm_upper
from .base import LipschitzModule, ParametrizationCache
from .shapes import ChannelPad, FirstChannels, PixelUnshuffle

__all__ = [
    "SOCConv2d", "SOCHead", "skew_kernel", "transpose_kernel", "conv_exp", "ff_matrices", "fantastic_four_norm_bound",
    "spectral_norm_upper",
]

Version = Literal["icml21", "improved"]

# Per-version defaults (see the module docstring): Taylor orders are the highest power K.
_VERSIONS: dict[str, dict] = {
    "icml21": dict(train_order=5, eval_order=12, correction=0.7, update_freq=200, horner=False),
    "improved": dict(train_order=5, eval_order=14, correction=1.0, update_freq=0, horner=True),
}

# Fantastic Four reshapes of a (C_out, C_in, kh, kw) kernel L (o, i, a, b): M1 = [(o,a), (i,b)],
# M2 = [(o,b), (i,a)], M3 = [o, (i,a,b)], M4 = [i, (o,a,b)] (rows, columns). The stored vectors are v_i (rows)
# and u_i (columns) reshaped so that <v_i, M_i u_i> = sum(L * u_i * v_i) (the authors' broadcasting layout).
_FF_PERMUTE = ((0, 2, 1, 3), (0, 3, 1, 2), (0, 1, 2, 3), (1, 0, 2, 3))
_FF_ROWS = (2, 2, 1, 1)  # how many leading (permuted) axes index the rows
# The same products in the authors' broadcasting form: M_i u_i = sum(L * u_i, axes_v), M_i^T v_i = sum(L * v_i, axes_u).
_FF_SUM_AXES = (((1, 3), (0, 2)), ((1, 2), (0, 3)), ((1, 2, 3), (0,)), ((0, 2, 3), (1,)))


def _ff_shapes(c: int, k: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(u_i shape, v_i shape) of the four reshapes for a (c, c, k, k) kernel (the authors' state-dict shapes)."""
    return [((1, c, 1, k), (c, 1, k, 1)), ((1, c, k, 1), (c, 1, 1, k)), ((1, c, k, k), (c, 1, 1, 1)),
            ((c, 1, k, k), (1, c, 1, 1))]


def ff_matrices(kernel: torch.Tensor) -> list[torch.Tensor]:
    """The four Fantastic-Four reshapes ``M_1..M_4`` of a conv kernel (see the comment above)."""
    out = []
    for perm, rows in zip(_FF_PERMUTE, _FF_ROWS):
        p = kernel.permute(*perm)
        out.append(p.reshape(math.prod(p.shape[:rows]), -1))
    return out


def transpose_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """``T(P)``: swap the channel axes and flip both spatial axes (the kernel of the adjoint convolution)."""
    return kernel.transpose(0, 1).flip(2, 3)


def skew_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """``L = (P - T(P)) / 2``: ``conv(., L)`` with zero "same" padding is exactly skew-symmetric."""
    return 0.5 * (kernel - transpose_kernel(kernel))


def conv_exp(
    x: torch.Tensor, kernel: torch.Tensor, order: int, horner: bool = False, autocast_convs: bool = False
) -> torch.Tensor:
    """``sum_{j=0..order} S^j x / j!`` with ``S = conv2d(., kernel)``, zero "same" padding ``k // 2``.

    ``horner=False``: running sum ``t <- S t / j`` (ICML'21 code); ``horner=True``:
    ``z <- x + S z / j`` for ``j = order..1`` (improved code). Equal in exact arithmetic.

    By default the sum runs in the kernel's dtype (float32/float64) even under autocast. ``autocast_convs=True``
    lets an active autocast run the convolutions (bf16 on CPU) while the sum stays in the kernel's dtype: the
    terms then carry bf16 rounding (below 1e-2 relative error on a layer's output). Meant for training where
    bf16 convolutions are fast (``python scripts/bench.py train``: x1.2-1.4 on this project's AVX512-BF16 CPU; on
    another host bf16 weight gradients of these convolutions were 20-40x slower than float32).
    """
    pad = kernel.shape[-1] // 2
    if x.dtype in (torch.float16, torch.bfloat16):  # autocast activations; never a silent float64 -> float32
        x = x.to(kernel.dtype)
    with contextlib.nullcontext() if autocast_convs else autocast_off(x.device):
        return _conv_exp(x, kernel, order, horner, pad)


def _conv_exp(x: torch.Tensor, kernel: torch.Tensor, order: int, horner: bool, pad: int) -> torch.Tensor:
    if horner:
        z = x
        for j in range(order, 0, -1):
            z = torch.add(x, F.conv2d(z, kernel, padding=pad), alpha=1.0 / j)
        return z
    z = term = x
    for j in range(1, order + 1):
        term = F.conv2d(term, kernel, padding=pad).div_(j)
        z = z + term  # type promotion keeps the sum in x's dtype when autocast returns bf16 terms
    return z


def fantastic_four_norm_bound(kernel: torch.Tensor) -> float:
    """Proven upper bound of the l2 operator norm of ``conv2d(., kernel)`` with zero padding, any input size.

    ``sqrt(kh kw) * min_i ||M_i||_2`` over the four reshapes (Singla & Feizi, "Fantastic Four", Thm 1; zero
    padding is a compression of a circular convolution), each norm bounded by
    :func:`~lipzoo._numerics.spectral_norm_upper`.
    For an exactly skew kernel ``||M_2|| = ||M_1||`` and ``||M_4|| = ||M_3||`` (a sign and a permutation), and for
    k = 1 all four are the same matrix up to transposition, so fewer norms are computed.
    """
    w = kernel.detach().double()
    if not bool(torch.isfinite(w).all()):
        return math.inf
    kh, kw = w.shape[-2:]
    mats = ff_matrices(w)
    if kh == kw and w.shape[0] == w.shape[1] and torch.equal(w, -transpose_kernel(w)):
        mats = [mats[2]] if kh == 1 else [mats[0], mats[2]]
    return math.sqrt(kh * kw) * min(spectral_norm_upper(m) for m in mats)


def _normalize(t: torch.Tensor, float32_norm: bool) -> torch.Tensor:
    """``t / max(||t||, 1e-12)``; ``float32_norm`` computes the norm in float32 as the ICML'21 code does."""
    if float32_norm:
        n = float(torch.sqrt(torch.sum(t.float() * t.float())))
        return t / max(n, 1e-12)
    return F.normalize(t.flatten(), dim=0).view_as(t)


class SOCConv2d(LipschitzModule):
    """SOC convolution ``c_in -> c_out`` (kernel k odd, stride 1 or 2); see the module docstring for the math.

    State (lipzoo names): ``weight`` P (C, C, k, k), ``bias`` (c_out,), buffers ``u1..u4``, ``v1..v4``
    (the Fantastic-Four power-iteration vectors) and ``correction`` (1,).

    Args:
        version: ``"icml21"`` or ``"improved"``; sets the defaults below.
        train_order / eval_order: highest Taylor power K in train / eval mode (icml21: 5 / 12, improved: 5 / 14).
        correction: scale of the normalised kernel (icml21 0.7, improved 1.0; forced to 1.0 for k = 1).
        init_iters: power iterations at construction and in :meth:`update_sigma` (50).
        update_iters: power iterations per training forward (1).
        update_freq: every ``update_freq``-th training forward (from the first, counted by a Python counter
            that restarts at 0 after construction) runs ``init_iters`` instead; 0 = never (icml21: 200,
            improved: 0; the improved recipe calls :meth:`update_sigma` itself).
        float32_norm: normalise power-iteration vectors with a float32 norm and the authors' reductions (the
            ICML'21 code's numerics). Only the train-mode vectors' last ~7 digits depend on it, and those also
            depend on the machine's float32 summation order, so bitwise reproduction is not guaranteed.
        autocast_convs: in training mode under an active autocast, run the Taylor terms' convolutions in the
            autocast dtype (:func:`conv_exp`); the eval (certified) map always runs in float32/float64.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        version: Version = "icml21",
        train_order: int | None = None,
        eval_order: int | None = None,
        correction: float | None = None,
        init_iters: int = 50,
        update_iters: int = 1,
        update_freq: int | None = None,
        float32_norm: bool = False,
        autocast_convs: bool = False,
    ):
        super().__init__()
        if version not in _VERSIONS:
            raise ValueError(f"version must be one of {sorted(_VERSIONS)}, got {version!r}")
        if kernel_size % 2 != 1:
            raise ValueError("SOC needs an odd kernel size (zero 'same' padding keeps the operator skew)")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        d = _VERSIONS[version]
        self.version = version
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = kernel_size, stride
        self.channels = max(in_channels * stride * stride, out_channels)
        self.train_order = d["train_order"] if train_order is None else int(train_order)
        self.eval_order = d["eval_order"] if eval_order is None else int(eval_order)
        self.horner = d["horner"]
        self.init_iters, self.update_iters = init_iters, update_iters
        self.update_freq = d["update_freq"] if update_freq is None else int(update_freq)
        self.float32_norm = float32_norm
        self.autocast_convs = autocast_convs
        self._train_steps = 0  # Python counter, not saved (as in the ICML'21 code)

        self.unshuffle = PixelUnshuffle(stride) if stride > 1 else nn.Identity()
        c_mid = in_channels * stride * stride
        self.pad = ChannelPad(self.channels) if out_channels > c_mid else nn.Identity()
        self.trunc = FirstChannels(out_channels) if out_channels < c_mid else nn.Identity()

        C, k = self.channels, kernel_size
        self.weight = nn.Parameter(torch.empty(C, C, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        corr = 1.0 if kernel_size == 1 else (d["correction"] if correction is None else float(correction))
        self.register_buffer("correction", torch.tensor([corr]))
        for i, (u_shape, v_shape) in enumerate(_ff_shapes(C, k), start=1):
            self.register_buffer(f"u{i}", torch.zeros(u_shape))
            self.register_buffer(f"v{i}", torch.zeros(v_shape))
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """P ~ N(0, 1/C); bias ~ U(+-1/sqrt(c_out)) (icml21) or U(+-1/sqrt(C)) (improved); then re-estimate
        the power-iteration vectors on the new kernel (``init_iters`` iterations from random unit vectors)."""
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.channels))
        if self.bias is not None:
            fan = self.out_channels if self.version == "icml21" else self.channels
            nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan), 1.0 / math.sqrt(fan))
        if self.weight.is_meta:
            return
        with torch.no_grad():
            for u, v in self._vectors():
                u.copy_(_normalize(torch.randn_like(u), False))
                v.copy_(_normalize(torch.randn_like(v), False))
        self.update_sigma()

    def _vectors(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(getattr(self, f"u{i}"), getattr(self, f"v{i}")) for i in range(1, 5)]

    def _param_for_math(self) -> torch.Tensor:
        return promoted(self.weight)

    @torch.no_grad()
    def power_iteration(self, iters: int) -> None:
        """``iters`` sweeps of the alternating power method ``v_i <- M_i u_i / ||.||``, ``u_i <- M_i^T v_i / ||.||``
        on the four reshapes of L, in the authors' order (in place on the u/v buffers)."""
        if iters <= 0 or self.weight.is_meta:  # meta tensors (shape-only builds) have no values to iterate on
            return
        with autocast_off(self.weight.device):
            L = skew_kernel(self._param_for_math())
            if self.float32_norm:
                # ICML'21 numerics: its float32 norm turns float64 summation-order differences into ~1e-7
                # jumps, so reproduce its reductions too (slower: full-kernel temporaries)
                for _ in range(iters):
                    for (u, v), (axes_v, axes_u) in zip(self._vectors(), _FF_SUM_AXES):
                        v.copy_(_normalize((L * u.to(L.dtype)).sum(axes_v, keepdim=True), True))
                        u.copy_(_normalize((L * v.to(L.dtype)).sum(axes_u, keepdim=True), True))
                return
            mats = ff_matrices(L)
            for _ in range(iters):
                for (u, v), m in zip(self._vectors(), mats):
                    v.copy_(_normalize(m @ u.to(m.dtype).flatten(), False).view_as(v))
                    u.copy_(_normalize(m.T @ v.to(m.dtype).flatten(), False).view_as(u))

    def update_sigma(self, iters: int | None = None) -> None:
        """Refresh the power-iteration vectors (``init_iters`` sweeps by default), in any mode."""
        self.power_iteration(self.init_iters if iters is None else iters)

    def _train_step_iterations(self) -> int:
        if self.update_freq > 0 and self._train_steps % self.update_freq == 0:
            n = self.init_iters
        else:
            n = self.update_iters
        self._train_steps += 1
        return n

    def normalized_kernel(self) -> torch.Tensor:
        """``L_n = correction * L / sigma`` from the stored vectors, float32 (float64 for float64 weights)."""
        with autocast_off(self.weight.device):
            L = skew_kernel(self._param_for_math())
            sigma = None
            for u, v in self._vectors():
                s = torch.sum(L * u.to(L.dtype) * v.to(L.dtype))
                sigma = s if sigma is None else torch.minimum(sigma, s)
            return (self.correction.to(L.dtype) * L) / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.power_iteration(self._train_step_iterations())
            order = self.train_order
        else:
            order = self.eval_order
        kernel = self._cache.get(self.normalized_kernel)
        z = self.pad(self.unshuffle(x))
        if z.shape[1] != self.channels:
            raise ValueError(f"SOCConv2d expected {self.in_channels} input channels, got {x.shape[1]}")
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            z = z.contiguous(memory_format=torch.channels_last)  # keep channels_last through unshuffle / pad
        low_precision = self.autocast_convs and self.training
        z = self.trunc(conv_exp(z, kernel, order, horner=self.horner, autocast_convs=low_precision))
        if self.bias is not None:
            z = z + self.bias.view(1, -1, 1, 1)
        return z

    @torch.no_grad()
    def skew_norm_bound(self) -> float:
        """Proven upper bound of ``||S||_2`` for the kernel the eval forward uses (any input size)."""
        return fantastic_four_norm_bound(self.normalized_kernel())

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """Proven l2 bound of the eval-mode map: ``1 + s^{K+1} / (K+1)!`` with ``s`` = :meth:`skew_norm_bound`
        and ``K = eval_order`` (train mode uses fresh vectors and ``train_order``; it is not certified).
        Cached in eval mode like the kernel (it costs a few seconds for C >= 1024)."""
        return self._bound_cache.get(self._taylor_bound, extra=self.eval_order)

    def _taylor_bound(self) -> float:
        s = self.skew_norm_bound()
        if not math.isfinite(s):
            return math.inf
        k1 = self.eval_order + 1
        try:
            rem = math.exp(k1 * math.log(s) - math.lgamma(k1 + 1)) if s > 0 else 0.0
        except OverflowError:
            return math.inf
        return 1.0 + rem

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"version={self.version!r}, train_order={self.train_order}, eval_order={self.eval_order}, "
            f"bias={self.bias is not None}"
        )


class SOCHead(LipschitzModule):
    """The SOC logits layer: a 1x1 :class:`SOCConv2d` on the flattened features (as a 1x1 image), first
    ``num_classes`` outputs, flattened to (N, num_classes). Bound: that of the SOC layer."""

    def __init__(self, in_features: int, num_classes: int, version: Version = "icml21", **soc_kwargs):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.conv = SOCConv2d(in_features, num_classes, kernel_size=1, stride=1, version=version, **soc_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.flatten(1)[:, :, None, None]).flatten(1)

    def lipschitz_bound(self) -> float:
        return self.conv.lipschitz_bound()
