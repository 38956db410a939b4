"""Sandwich layers (LBDN; Wang & Manchester, "Direct Parameterization of Lipschitz-Bounded Deep Networks",
ICML 2023, arXiv 2301.11526).

**Parametrisation.** A free weight ``W`` of shape ``(c_out, c_in + c_out)`` (per frequency for convolutions) is
mapped by the Cayley transform (:func:`cayley`) of ``alpha * W / ||W||_F`` to ``Q = [A B]`` with orthonormal rows,
``A A^H + B B^H = I`` (``A``: ``c_out x c_out``, ``B``: ``c_out x c_in``).

**Sandwich layer** (paper Eq. 9 / Thm 3.2): ``y = sqrt2 A^T Psi ReLU(sqrt2 Psi^-1 B x + b)`` with
``Psi = diag(exp(psi))``. ReLU is positively homogeneous, so ``Psi ReLU(Psi^-1 z + b) = ReLU(z + Psi b)``; lipzoo
evaluates the layer in that form, ``y = sqrt2 A^T ReLU(sqrt2 B x + exp(psi) * b)``: ``psi`` only rescales the
bias, and the Lipschitz bound does not depend on it.

**Why 1-Lipschitz, and the bound we state.** Write the layer with its realised operators, ``y = M2 ReLU(M1 x + c)``
(``M1 = sqrt2 B``, ``M2 = sqrt2 A^H`` up to rounding). Let ``u = ReLU(z1) - ReLU(z2)`` for ``dz = M1 dx``: ReLU's
slope restriction gives ``||u||^2 <= u^T M1 dx``. With ``E = (M1 M1^H + M2^H M2) / 2 - I`` (``A A^H + B B^H - I``
for the ideal operators, 0 in exact arithmetic) and ``l = max(lmax(E), 0)``:
``||dy||^2 = 2||u||^2 + 2 u^T E u - ||M1^H u||^2 <= ||dx||^2 - ||dx - M1^H u||^2 + 2 l ||u||^2``, and
``||u|| <= ||M1|| ||dx||`` with ``||M1||^2 <= 2 (1 + l)``, hence ``Lip^2 <= 1 + 4 l (1 + l)``. With ``E = 0`` this is
the paper's Thm 3.2. :meth:`lipschitz_bound` evaluates it in float64 from the operators the forward pass really
uses (the float32 factors), plus a bound on the float64 rounding of ``E``; for float32 weights it is ~``1 + 1e-5``.

**Convolutions** (:class:`SandwichConv`) are circular and computed in the Fourier domain on the input grid
``H x W`` (rfft2 half plane ``H x (W//2+1)``): ``W_f = shift_f * conj(rfft2(weight, (H, W)))_f`` with
``shift_f = exp(-2 pi i s (u/H + v/W))``, ``s = (k-1)//2`` (so the kernel is centred as in a "same" convolution),
``Q_f = cayley(alpha * W_f / ||W_hat||_F)`` where the Frobenius norm runs over **all** rfft2 frequencies (the half
plane, as in the authors' code). The operator is block-diagonal in the unitary DFT basis, so the bound above holds
with ``max_f`` of the per-frequency quantities. At the self-conjugate columns (v = 0 and v = W/2) ``irfft2``
uses the Hermitian part ``(M(u) + conj M(-u)) / 2``; the bound uses exactly these effective operators.
A 1x1 kernel has ``W_f = W`` at every frequency, so ``Q_f`` is one real matrix and the layer is evaluated
pointwise (1x1 convolutions, no FFT); ``||W_hat||_F = sqrt(#freq) ||W||_F`` keeps the grid dependence.

**Stride 2** is space-to-depth (``PixelUnshuffle(2)``) followed by a stride-1 layer with ``4 c_in`` input
channels and kernel ``k -> max(1, k // 2)`` (so a 3x3 strided layer is 1x1 on the unshuffled grid).

**Input scale.** Every layer takes ``scale`` (``sqrt(gamma)`` in the authors' networks); it multiplies the input and
the stated bound.

**Numerics.** The parametrisation is always computed in float32 (float64 for float64 weights), with autocast
disabled; in eval mode it is cached by :class:`~lipzoo.layers.base.ParametrizationCache` (key: every parameter,
and the input size for convolutions). ``alpha`` is a trained parameter in every layer (the authors create the
conv ``alpha`` lazily on the first forward, after the optimizer was built, so theirs is never trained).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import activation_dtype, autocast_off, float_rounding_slack, parametrization_dtype, svd_norm_bound
from .base import LipschitzModule, ParametrizationCache
from .shapes import PixelUnshuffle

__all__ = [
    "cayley", "sandwich_bound", "fft_kernel", "SandwichFc", "SandwichLin", "SandwichConv1", "SandwichConv1Lin",
    "SandwichConv",
]

SQRT2 = math.sqrt(2.0)
_Size = tuple[int, int]


def _inv(M: torch.Tensor) -> torch.Tensor:
    """``torch.linalg.inv``, one matrix at a time for CPU batches of matrices larger than 128.

    With more than one thread, oneMKL's batched LU in torch 2.14 (CPU) fails for such batches ("Parameter 6 was
    incorrect on entry to SLASWP/CLASWP", then a hang); single matrices and smaller batched ones are fine.
    """
    if M.device.type != "cpu" or M.dim() < 3 or M.shape[-1] <= 128:
        return torch.linalg.inv(M)
    flat = M.reshape(-1, *M.shape[-2:])
    return torch.stack([torch.linalg.inv(m) for m in flat.unbind(0)]).reshape(M.shape)


def cayley(W: torch.Tensor) -> torch.Tensor:
    """Cayley transform of a (batch of) real or complex matrices ``W`` of shape ``(..., rows, cols)``.

    Tall or square ``W`` (rows >= cols): with ``U = W[:cols]``, ``V = W[cols:]`` and ``A = U - U^H + V^H V``,
    returns ``[(I + A)^-1 (I - A); -2 V (I + A)^-1]``, which has orthonormal **columns**. ``I + A`` is always
    invertible (its Hermitian part is ``I + V^H V >= I``). Wide ``W`` uses the plain (non-conjugating) transpose:
    ``cayley(W^T)^T``, with orthonormal **rows** (the authors' convention, kept so that checkpoints agree).
    """
    rows, cols = W.shape[-2:]
    if cols > rows:
        return cayley(W.transpose(-2, -1)).transpose(-2, -1)
    U, V = W[..., :cols, :], W[..., cols:, :]
    eye = torch.eye(cols, dtype=W.dtype, device=W.device)
    inv = _inv(eye + U - U.mH + V.mH @ V)
    # (I + A)^-1 (I - A) = 2 (I + A)^-1 - I
    return torch.cat((2.0 * inv - eye, -2.0 * V @ inv), dim=-2)


@torch.no_grad()
def sandwich_bound(M1: torch.Tensor, M2: torch.Tensor) -> float:
    """Proven l2 Lipschitz bound of ``x -> M2 ReLU(M1 x + c)`` (any ``c``) for realised operators ``M1``
    (``(..., m, n)``, ideally ``sqrt2 B``) and ``M2`` (``(..., p, m)``, ideally ``sqrt2 A^H``).

    Leading dims are a block-diagonal batch (frequencies); the bound is the max over blocks. With
    ``E = (M1 M1^H + M2^H M2) / 2 - I`` (``A A^H + B B^H - I`` for the ideal operators) and ``e`` an upper bound of
    ``max(lmax(E), 0)`` computed in float64, returns ``sqrt(1 + 4 e (1 + e))`` (module docstring: ``||M1||^2 <=
    2 (1 + lmax(E))``). Exactly orthogonal factors give 1.
    """
    ctype = torch.complex128 if M1.is_complex() or M2.is_complex() else torch.float64
    M1, M2 = M1.to(ctype), M2.to(ctype)
    m, k = M1.shape[-2], M1.shape[-1] + M2.shape[-2]
    E = 0.5 * (M1 @ M1.mH + M2.mH @ M2)
    E.diagonal(dim1=-2, dim2=-1).sub_(1.0)
    lmax = float(torch.linalg.eigvalsh(E).amax())
    enorm = float(torch.linalg.matrix_norm(E, ord="fro").amax())
    # float64 error of forming E (k-term dot products of rows of norm^2 <= 2 (1 + ||E||)), over the m x m entries
    # (Frobenius bound), plus the backward error of the symmetric eigensolver (~ m u ||E||).
    u64 = torch.finfo(torch.float64).eps
    slack = m * float_rounding_slack(k + 2, torch.float64) * (1.0 + enorm) + 4 * m * u64 * enorm
    e = max(lmax, 0.0) + slack
    return math.sqrt(1.0 + 4.0 * e * (1.0 + e))


class _SandwichMatrix(LipschitzModule):
    """Shared parameters of the dense Sandwich layers: ``weight`` (out, in + out), 0-dim ``alpha``, ``bias``.

    :meth:`factors` returns ``(A, B)``: ``Q = cayley(alpha * W / ||W||_F) = [A B]`` with ``A`` (out, out) and
    ``B`` (out, in), in float32 (float64 for float64 weights), never under autocast.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scale: float = 1.0):
        super().__init__()
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.weight = nn.Parameter(torch.empty(out_features, in_features + out_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.alpha = nn.Parameter(torch.empty(()))
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)  # lipschitz_bound() in eval mode
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init on the (out, in + out) weight, as the authors' layers (nn.Linear subclasses)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.alpha.copy_(self.weight.norm())

    def _compute_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast_off(self.weight.device):
            dt = parametrization_dtype(self.weight.dtype)
            w, alpha = self.weight.to(dt), self.alpha.to(dt)
            Q = cayley(alpha * w / w.norm())
            return Q[:, : self.out_features], Q[:, self.out_features :]

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` of the forward pass (cached in eval mode)."""
        return self._cache.get(self._compute_factors)

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale if self.scale != 1.0 else x

    def _bias(self, dtype: torch.dtype) -> torch.Tensor | None:
        return None if self.bias is None else self.bias.to(dtype)

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        return s + (f", scale={self.scale:g}" if self.scale != 1.0 else "")


_act_dtype = activation_dtype  # the name the other families import


class SandwichFc(_SandwichMatrix):
    """Dense Sandwich layer ``y = sqrt2 A^T ReLU(sqrt2 B (s x) + exp(psi) * b)``, ``in -> out`` features.

    Equal to the paper's ``sqrt2 A^T Psi ReLU(sqrt2 Psi^-1 B x + b)`` (authors' ``SandwichFc``). Parameters:
    ``weight`` (out, in + out), ``alpha`` (0-dim), ``psi`` (out,), ``bias`` (out,).
    ``lipschitz_bound()``: ``|s| * sandwich_bound(sqrt2 B, sqrt2 A^T)`` (1 up to the float orthogonality defect).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scale: float = 1.0):
        super().__init__(in_features, out_features, bias, scale)
        self.psi = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self.factors()
        dt = _act_dtype(x, A.dtype)
        z = F.linear(self._scaled(x), B.to(dt)) * SQRT2
        if self.bias is not None:
            z = z + torch.exp(self.psi) * self.bias
        return F.linear(F.relu(z), A.t().to(dt)) * SQRT2

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        def bound() -> float:
            A, B = self.factors()  # the forward applies sqrt2 to the activations: the operators are exactly these
            return abs(self.scale) * sandwich_bound(SQRT2 * B.double(), SQRT2 * A.t().double())

        return self._bound_cache.get(bound)


class SandwichLin(_SandwichMatrix):
    """Linear Sandwich output layer: ``y = B (s x) + b``, or ``y = 2 A^T B (s x) + b`` with ``AB=True``.

    ``||B|| <= 1`` and ``||2 A^T B|| <= 1`` for exact ``[A B]`` with orthonormal rows (the latter is the Sandwich
    layer with ReLU replaced by the identity). ``lipschitz_bound()``: ``|s|`` times the float64 spectral norm of
    the realised matrix (exact, plus SVD rounding).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, scale: float = 1.0, AB: bool = False):
        super().__init__(in_features, out_features, bias, scale)
        self.AB = bool(AB)

    def _compute_matrix(self) -> torch.Tensor:
        A, B = self._compute_factors()
        with autocast_off(self.weight.device):
            return 2.0 * A.t() @ B if self.AB else B

    def matrix(self) -> torch.Tensor:
        """The realised ``(out, in)`` matrix of the forward pass (cached in eval mode)."""
        return self._cache.get(self._compute_matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        M = self.matrix()
        dt = _act_dtype(x, M.dtype)
        return F.linear(self._scaled(x), M.to(dt), self._bias(dt))

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        return abs(self.scale) * svd_norm_bound(self.matrix())

    def extra_repr(self) -> str:
        return super().extra_repr() + (", AB=True" if self.AB else "")


class SandwichConv1Lin(SandwichLin):
    """1x1 convolution with the matrix ``2 A^T B`` (authors' ``SandwichConv1Lin``): ``y = conv1x1(s x) + b``.

    Parameters as :class:`SandwichLin` (the authors call the weight ``kernel``). Bound: ``|s| ||2 A^T B||``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, scale: float = 1.0):
        super().__init__(in_channels, out_channels, bias, scale, AB=True)

    def reset_parameters(self) -> None:
        # the authors' init of the 1x1 forms: xavier-normal weight, bias U(+-1/sqrt(in + out))
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight.shape[1])
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.alpha.copy_(self.weight.norm())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        M = self.matrix()
        dt = _act_dtype(x, M.dtype)
        return F.conv2d(self._scaled(x), M.to(dt)[:, :, None, None], self._bias(dt))


class SandwichConv1(SandwichConv1Lin):
    """:class:`SandwichConv1Lin` followed by ReLU (authors' ``SandwichConv1``); ReLU keeps the bound."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


def _pair(size: int | Sequence[int]) -> _Size:
    if isinstance(size, int):
        return (size, size)
    h, w = size
    return (int(h), int(w))


def unshuffled_grid(input_size: _Size, stride: int, kernel_size: int, layer: str) -> _Size:
    """The FFT grid of a circular conv for inputs of ``input_size``: halved by a stride-2 space-to-depth; refuses odd
    sizes at stride 2 and grids smaller than the kernel (``layer`` names the layer in the message)."""
    H, W = input_size
    if stride == 2:
        if H % 2 or W % 2:
            raise ValueError(f"stride-2 {layer} needs even input sizes, got {H}x{W}")
        H, W = H // 2, W // 2
    if H < kernel_size or W < kernel_size:
        raise ValueError(f"input grid {H}x{W} is smaller than the kernel {kernel_size}")
    return H, W


def bound_sizes(input_size: int | Sequence[int] | None, seen: set[_Size], constructed: _Size | None,
                layer: str) -> tuple[_Size, ...]:
    """The input sizes a size-dependent bound covers: ``input_size`` if given, else every size the layer has run on
    and the one it was constructed for."""
    if input_size is not None:
        return (_pair(input_size),)
    sizes = set(seen) | ({constructed} if constructed is not None else set())
    if not sizes:
        raise ValueError(f"{layer}.lipschitz_bound needs input_size= (the layer has no known input size)")
    return tuple(sorted(sizes))


def fft_kernel(weight: torch.Tensor, grid: _Size) -> torch.Tensor:
    """The authors' spectral kernel ``W_f = shift_f * conj(rfft2(weight, grid))_f``, ``shift_f = exp(-2 pi i s
    (u/H + v/W))``, ``s = (k-1)//2``, as ``(F, c_out, c_in)`` with ``F = H (W//2+1)`` (rfft2 half plane, row-major).

    It centres the ``k x k`` kernel: the spectral product is the circular cross-correlation
    ``out(z) = sum_d weight(d) x(z + d - s)`` (conv2d with circular "same" padding). Computed as ``rfft2(K)`` of
    the real kernel ``K(y) = weight((s - y) mod grid)`` (flipped and wrapped), which avoids complex elementwise ops.
    """
    k = weight.shape[-1]
    H, W = grid
    r = k - 1 - (k - 1) // 2
    K = torch.roll(F.pad(weight.flip(-2, -1), (0, W - k, 0, H - k)), shifts=(-r, -r), dims=(-2, -1))
    return torch.fft.rfft2(K).reshape(*weight.shape[:2], -1).permute(2, 0, 1)


def _complex_fro_norm(z: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.view_as_real(z))


def _real_right_matrix(M: torch.Tensor) -> torch.Tensor:
    """Real ``(F, 2C, 2C_out)`` matrix ``R`` with ``view_as_real(x) @ R == view_as_real(x @ M^T)`` for complex
    row vectors ``x`` (C,) and ``M`` (F, C_out, C): ``a + ib`` becomes the block ``[[a, b], [-b, a]]``. Real
    batched GEMMs are faster than complex ones on CPU (whose backward copies every matrix of the batch)."""
    Mt = M.transpose(-2, -1)
    a, b = Mt.real, Mt.imag
    nf, c, co = a.shape
    return torch.stack((torch.stack((a, b), -1), torch.stack((-b, a), -1)), 2).reshape(nf, 2 * c, 2 * co)


def _spectral_apply(R: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``irfft2(M_f rfft2(x)_f)`` for real ``x`` (N, C, H, W), with ``R = _real_right_matrix(M)``."""
    n, c, H, W = x.shape
    xf = torch.fft.rfft2(x)  # (N, C, H, W//2+1)
    xr = torch.view_as_real(xf.permute(2, 3, 0, 1)).reshape(-1, n, 2 * c)  # (F, N, 2C)
    with autocast_off(x.device):  # small GEMMs: bf16 casts would cost more
        y = torch.bmm(xr, R.to(xr.dtype))
    y = torch.view_as_complex(y.reshape(H, W // 2 + 1, n, -1, 2))
    return torch.fft.irfft2(y.permute(2, 3, 0, 1), s=(H, W))


class SandwichConv(LipschitzModule):
    """Circular Sandwich convolution ``c_in -> c_out`` (authors' ``SandwichConv``), stride 1 or 2.

    Per rfft2 frequency ``f`` of the (unshuffled) input grid: ``h = irfft2(sqrt2 B_f x_f) + exp(psi) * b``;
    ``y = irfft2(sqrt2 A_f^H rfft2(ReLU(h)))`` with ``[A_f B_f] = cayley(alpha W_f / ||W_hat||_F)`` (module docstring).
    Parameters (authors' names): ``weight`` (c_out, c_in' + c_out, k', k') with ``c_in' = 4 c_in`` and
    ``k' = max(1, k // 2)`` for stride 2, ``bias`` (c_out,), ``psi`` (c_out,), ``alpha`` (0-dim, trained).

    ``input_size`` (optional; the layer's input size, before any unshuffle) fixes the initial ``alpha``
    (``||W_hat||_F`` on that grid, as the authors' lazy init) and is the default grid of :meth:`lipschitz_bound`.
    Any even or odd ``H x W >= k' x k'`` input works; the parametrisation depends on the grid.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        bias: bool = True,
        scale: float = 1.0,
        input_size: int | Sequence[int] | None = None,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"SandwichConv supports stride 1 or 2, got {stride}")
        self.in_channels, self.out_channels, self.stride, self.scale = in_channels, out_channels, stride, float(scale)
        self.kernel_size = max(1, kernel_size // 2) if stride == 2 else kernel_size
        self.unshuffle = PixelUnshuffle(2) if stride == 2 else None
        cin = in_channels * stride * stride
        k = self.kernel_size
        self.input_size = None if input_size is None else _pair(input_size)
        self.weight = nn.Parameter(torch.empty(out_channels, cin + out_channels, k, k))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.psi = nn.Parameter(torch.zeros(out_channels))
        self.alpha = nn.Parameter(torch.empty(()))
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)  # lipschitz_bound() in eval mode
        self._seen_sizes: set[_Size] = set()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default init on the (c_out, c_in' + c_out, k', k') weight, as the authors' layer
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            if self.input_size is not None:
                self.alpha.copy_(self.fft_weight_norm(self.input_size))
            else:  # no grid yet: the value ||W_hat||_F has for a flat spectrum (exact for 1x1 kernels)
                n = 32 // self.stride
                self.alpha.copy_(self.weight.norm() * math.sqrt(n * (n // 2 + 1)))

    def _grid(self, input_size: _Size) -> _Size:
        return unshuffled_grid(input_size, self.stride, self.kernel_size, "SandwichConv")

    @torch.no_grad()
    def fft_weight_norm(self, input_size: int | Sequence[int], weight: torch.Tensor | None = None) -> torch.Tensor:
        """``||W_hat||_F`` over the rfft2 half plane of the grid of ``input_size`` (the authors' initial alpha), for
        this layer's weight or a given ``weight`` of the same shape."""
        w = self.weight if weight is None else weight
        return _complex_fro_norm(fft_kernel(w.to(parametrization_dtype(w.dtype)), self._grid(_pair(input_size))))

    def _compute_params(self, grid: _Size) -> dict[str, torch.Tensor]:
        """Factors ``A``, ``B`` (``(F, ...)`` complex, or ``(1, ...)`` real for 1x1 kernels), the realised operators
        ``M1 = sqrt2 B``, ``M2 = sqrt2 A^H`` (rounded once), and the same as the forward pass uses them: real-embedded
        per-frequency matrices ``op1``, ``op2``, or 1x1 conv kernels for 1x1 layers."""
        cout = self.out_channels
        with autocast_off(self.weight.device):
            dt = parametrization_dtype(self.weight.dtype)
            if self.kernel_size == 1:
                # W_f = W for every frequency (no shift, real), so ||W_hat||_F = sqrt(#freq) ||W||_F and
                # Q_f = Q: the layer is the pointwise (1x1) sandwich, computed without FFTs.
                w = self.weight.to(dt)[:, :, 0, 0]
                nfreq = grid[0] * (grid[1] // 2 + 1)
                Q = cayley(self.alpha.to(dt) * w / (w.norm() * math.sqrt(nfreq)))
                A, B = Q[:, :cout], Q[:, cout:]
                M1, M2 = SQRT2 * B, SQRT2 * A.t()
                return dict(A=A[None], B=B[None], M1=M1[None], M2=M2[None], op1=M1[:, :, None, None],
                            op2=M2[:, :, None, None])
            wf = fft_kernel(self.weight.to(dt), grid)
            Q = cayley((self.alpha.to(dt) / _complex_fro_norm(wf)) * wf)
            A, B = Q[..., :cout], Q[..., cout:]
            M1, M2 = SQRT2 * B, SQRT2 * A.mH
            return dict(A=A, B=B, M1=M1, M2=M2, op1=_real_right_matrix(M1), op2=_real_right_matrix(M2))

    def _params(self, grid: _Size) -> dict[str, torch.Tensor]:
        return self._cache.get(lambda: self._compute_params(grid), extra=grid)

    def factors(self, input_size: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frequency ``(A_f, B_f)``, shapes ``(F, c_out, c_out)`` and ``(F, c_out, c_in')``, for inputs of
        ``input_size`` (cached in eval mode per grid). For 1x1 kernels ``F = 1``: one real matrix pair serves every
        frequency."""
        p = self._params(self._grid(_pair(input_size)))
        return p["A"], p["B"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._seen_sizes.add((x.shape[-2], x.shape[-1]))
        p = self._params(self._grid((x.shape[-2], x.shape[-1])))
        x = x * self.scale if self.scale != 1.0 else x
        if self.unshuffle is not None:
            x = self.unshuffle(x)
        bias = None if self.bias is None else torch.exp(self.psi) * self.bias
        if self.kernel_size == 1:
            dt = _act_dtype(x, p["op1"].dtype)
            h = F.relu(F.conv2d(x, p["op1"].to(dt), None if bias is None else bias.to(dt)))
            return F.conv2d(h, p["op2"].to(dt))
        h = _spectral_apply(p["op1"], x.to(p["op1"].dtype))
        if bias is not None:
            h = h.add_(bias.to(h.dtype).view(1, -1, 1, 1))  # in place: irfft2's backward does not need h
        return _spectral_apply(p["op2"], F.relu_(h))

    @torch.no_grad()
    def effective_operators(self, input_size: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frequency ``(M1_f, M2_f)`` the realised map applies for inputs of ``input_size``: irfft2 keeps only
        the Hermitian part ``(M(u, v) + conj M(-u, v)) / 2`` on the self-conjugate columns (v = 0, and v = W/2 for
        even W); elsewhere the half plane determines the other half by conjugate symmetry."""
        grid = self._grid(_pair(input_size))
        p = self._params(grid)
        if self.kernel_size == 1:  # one real operator pair for every frequency
            return p["M1"], p["M2"]
        H, Wr = grid[0], grid[1] // 2 + 1
        neg = (-torch.arange(H, device=p["M1"].device)) % H
        cols = [0] + ([grid[1] // 2] if grid[1] % 2 == 0 else [])
        out = []
        for M in (p["M1"], p["M2"]):
            M = M.reshape(H, Wr, *M.shape[-2:]).clone()
            for v in cols:
                M[:, v] = 0.5 * (M[:, v] + M[neg, v].conj())
            out.append(M.reshape(H * Wr, *M.shape[-2:]))
        return out[0], out[1]

    @torch.no_grad()
    def lipschitz_bound(self, input_size: int | Sequence[int] | None = None) -> float:
        """Proven bound for inputs of ``input_size`` (default: the constructor's ``input_size`` and every size
        this layer has run on; the max over them): ``|s| sandwich_bound(M1_f, M2_f)`` over all frequencies."""
        sizes = bound_sizes(input_size, self._seen_sizes, self.input_size, "SandwichConv")
        return self._bound_cache.get(
            lambda: abs(self.scale) * max(sandwich_bound(*self.effective_operators(s)) for s in sizes), extra=sizes)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"bias={self.bias is not None}")
        if self.scale != 1.0:
            s += f", scale={self.scale:g}"
        return s + (f", input_size={self.input_size}" if self.input_size is not None else "")
