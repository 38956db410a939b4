"""The ground floor of every proof: the numeric context in which certificates and bounds are computed.

* :func:`certification_context` — the context every certificate, ``lipschitz_bound()``, audit and verification
  runs in: autocast off on every device, every float32 matmul / convolution backend in IEEE float32 (no TF32,
  no implicit bf16 in oneDNN), the caller's settings restored afterwards; and a fresh *cache scope*, in which
  every :class:`~lipzoo.layers.base.ParametrizationCache` recomputes its value once from the current
  parameters before it is reused (writes through ``.data`` bump no version counter, so a cache alone cannot
  be trusted for a proof).
* :func:`float_rounding_slack` — the relative rounding error of a dot product in a given dtype.
* :func:`spectral_norm_bound` — a proven upper bound of ``||M||_2`` (dense, batched, complex), from the Gram matrix;
  :func:`spectral_norm_upper` — the same for one real matrix with the SOC/CPL slack, and :func:`svd_norm_bound`
  — from a float64 SVD with a relative error allowance (LOT, Sandwich): the layers keep their published bounds bit
  for bit.
* :func:`autocast_off`, :func:`parametrization_dtype` and :func:`promoted` — every layer computes its
  parametrisation in float32 (float64 for float64 weights) with autocast off, even while the network trains under
  autocast.

Nothing here imports the rest of lipzoo.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import threading
from typing import Iterator

import torch

__all__ = [
    "autocast_off", "cache_scope", "certification_context", "current_cache_scope", "float_rounding_slack",
    "parametrization_dtype", "precision_guard", "spectral_norm_bound", "spectral_norm_upper", "svd_norm_bound",
    "activation_dtype", "promoted",
    "LAPACK_SVD_SLACK",
]

# float32 precision leaves of torch's backends (torch >= 2.9 API); each accepts "ieee" and is restored as read
_FP32_LEAVES: tuple[tuple[str, str], ...] = (
    ("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"), ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"),
)
_AUTOCAST_DEVICES: tuple[str, ...] = ("cpu", "cuda", "xpu", "mps", "hpu")
_STATE = threading.local()
# a relative allowance on a float64 SVD's largest singular value (LAPACK: |err| <= p(n) eps_64 sigma_max, here
# p(n) <= 4500; it covers gamma_{4n} for every matrix side n <= 2250)
LAPACK_SVD_SLACK = 1e-12
_SCOPE_IDS = itertools.count(1)


def float_rounding_slack(inner_dim: int, dtype: torch.dtype = torch.float32) -> float:
    """``gamma_n = n u / (1 - n u)`` (Higham, Thm 3.5): the relative error bound of an ``n``-term dot product in
    ``dtype`` (``u = eps / 2``)."""
    u = torch.finfo(dtype).eps / 2
    n = max(int(inner_dim), 1)
    return n * u / max(1.0 - n * u, 1e-12)


@torch.no_grad()
def spectral_norm_bound(M: torch.Tensor) -> float:
    """Proven upper bound of ``max ||M_b||_2`` over a batch of real or complex matrices ``M`` ``(..., m, n)``,
    computed in float64 from the small Gram matrix ``G = M M^H`` (``m <= n``) or ``M^H M``: ``sqrt(lmax(G) + e)``.

    ``e`` covers the float64 rounding of ``G`` (each entry an ``n``-term dot product: ``|dG_ij| <= gamma_{2n+2}
    ||row_i|| ||row_j||``, so ``||dG||_2 <= gamma_{2n+2} ||M||_F^2``, complex products counted twice) and the
    backward error of the symmetric eigensolver (``<= 4 k u ||G||_F``, ``k`` the Gram size). Much cheaper than an
    SVD for the wide dense layers (a 256 x 4096 matrix needs a 256 x 256 eigenproblem).
    """
    M = M.detach().to(torch.complex128 if M.is_complex() else torch.float64)
    if M.dim() == 2:
        M = M[None]
    m, n = M.shape[-2:]
    G = M @ M.mH if m <= n else M.mH @ M
    lmax = torch.linalg.eigvalsh(G).amax(dim=-1)
    fro2 = torch.linalg.matrix_norm(M, ord="fro") ** 2
    u = torch.finfo(torch.float64).eps / 2
    err = float_rounding_slack(2 * max(m, n) + 2, torch.float64) * fro2 + 4 * min(m, n) * u * torch.linalg.matrix_norm(
        G, ord="fro")
    return math.sqrt(float((lmax.clamp_min(0) + err).amax()))


@torch.no_grad()
def svd_norm_bound(M: torch.Tensor, rel_slack: float | None = None) -> float:
    """Upper bound of ``max ||M_b||_2`` over a batch of real or complex matrices ``M`` ``(..., m, n)``: the largest
    singular value from a float64 (complex128) SVD times ``1 + rel_slack``.

    The SVD's backward error is ``p(n) u sigma_max`` (LAPACK); ``rel_slack`` defaults to ``gamma_{4 max(m, n)}``
    (:func:`float_rounding_slack` in float64); :data:`LAPACK_SVD_SLACK` is the fixed allowance of the LOT layers.
    Prefer :func:`spectral_norm_bound` (an explicit proof) in new code.
    """
    if rel_slack is None:
        rel_slack = float_rounding_slack(4 * max(M.shape[-2:]), torch.float64)
    s = float(torch.linalg.matrix_norm(M.detach().to(torch.complex128 if M.is_complex() else torch.float64),
                                       ord=2).amax())
    return s * (1.0 + rel_slack)


def spectral_norm_upper(m: torch.Tensor) -> float:
    """Proven upper bound of ``||m||_2`` of one real matrix (float64): ``sqrt(lambda_max(G))`` for the Gram matrix
    ``G`` of the smaller side, plus rounding slack: forming G errs by at most ``gamma_inner ||m||_F^2`` and
    ``eigvalsh`` is backward stable (error <= ``p(n) u ||G||``; we allow ``p(n) = 10 n``).

    The SOC (Fantastic Four) and CPL layers' bound. It differs from :func:`spectral_norm_bound` only in how the
    slack is counted; the published SOC checkpoints' bounds rest on it bit for bit, so it stays as it is."""
    m = m.detach().double()
    g = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    lam = float(torch.linalg.eigvalsh(g)[-1])
    n, inner, u = g.shape[0], max(m.shape), 2.0 ** -53
    fro2 = float((m * m).sum())
    slack = 1.01 * ((inner + 2) * u * fro2 + 10 * n * u * max(abs(lam), fro2))
    return math.sqrt(max(lam, 0.0) + slack)


def activation_dtype(x: torch.Tensor, param_dtype: torch.dtype) -> torch.dtype:
    """Dtype in which a layer feeds its realised weights to ``F.linear`` / ``F.conv2d``: the parameters' under an
    active autocast (autocast then decides), else the input's."""
    if torch.is_autocast_enabled(x.device.type):
        return param_dtype
    return x.dtype


def parametrization_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float64 if any of ``dtypes`` is float64, else float32: parametrisations never run in half or bfloat16."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def promoted(t: torch.Tensor) -> torch.Tensor:
    """``t`` in :func:`parametrization_dtype` (float16 / bfloat16 -> float32; float32 and float64 unchanged)."""
    return t.to(parametrization_dtype(t.dtype))


def autocast_off(device: torch.device | str) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device``'s type (a no-op on devices without autocast)."""
    device_type = torch.device(device).type
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


def _fp32_leaves() -> list[object]:
    out = []
    for backend, op in _FP32_LEAVES:
        leaf = getattr(getattr(torch.backends, backend, None), op, None)
        if leaf is not None and hasattr(leaf, "fp32_precision"):
            out.append(leaf)
    return out


def _autocast_enabled(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except (RuntimeError, TypeError, ValueError):
        return False


@contextlib.contextmanager
def precision_guard() -> Iterator[None]:
    """Autocast off and IEEE float32 matmuls and convolutions inside; the caller's settings restored after.

    The backends' ``fp32_precision`` leaves are saved and restored one by one (never through the legacy
    ``allow_tf32`` flags, so a caller who set those reads them back unchanged and without torch's
    mixed-API error).
    """
    leaves = _fp32_leaves()
    saved = [leaf.fp32_precision for leaf in leaves]
    with contextlib.ExitStack() as stack:
        for device_type in _AUTOCAST_DEVICES:
            if _autocast_enabled(device_type):
                stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        try:
            for leaf in leaves:
                leaf.fp32_precision = "ieee"
            yield
        finally:
            for leaf, value in zip(leaves, saved):
                leaf.fp32_precision = value


def current_cache_scope() -> int | None:
    """Id of the innermost active :func:`cache_scope`, or ``None`` outside one."""
    return getattr(_STATE, "scope", None)


@contextlib.contextmanager
def cache_scope() -> Iterator[int]:
    """A scope in which every parametrisation cache recomputes once, then may be reused.

    Nested scopes share the outermost one, so a certificate recomputes each parametrisation at most once per
    call however many bounds and forwards it asks for.
    """
    outer = current_cache_scope()
    if outer is not None:
        yield outer
        return
    _STATE.scope = next(_SCOPE_IDS)
    try:
        yield _STATE.scope
    finally:
        _STATE.scope = None


@contextlib.contextmanager
def certification_context() -> Iterator[None]:
    """:func:`precision_guard` and :func:`cache_scope` together: the context of every proof lipzoo computes."""
    with precision_guard(), cache_scope():
        yield
