"""The curvature rule of the MLP head (Singla et al., NeurIPS'22, arXiv 2211.08453, Sec. 4).

Head ``z = W2 softplus_beta(W1 f + b1) + b2`` on features ``f``. For the gap ``g_j = z_t - z_j`` with
``u = w2_t - w2_j`` the Hessian is ``W1^T diag(u * s'') W1`` with ``0 <= s'' <= beta/4``, so its smallest
eigenvalue is ``>= -K_tj``, ``K_tj = beta/4 * lambda_max(W1^T diag(relu(-u)) W1)`` (computed exactly with
``eigvalsh`` in float64, plus a backward-error margin; the NeurIPS'22 bound uses ``|u|``, which is never
smaller). Taylor's theorem gives ``g_j(f + d) >= D - G ||d|| - K ||d||^2 / 2`` (``D`` the gap,
``G = ||grad g_j(f)||``), positive for ``||d|| < (sqrt(G^2 + 2 K D) - G) / K = 2 D / (sqrt(G^2 + 2 K D) + G)``
(:func:`pair_radii`, the margin kernel of the rule). The radius is the min over ``j`` of that, divided by ``L``.
``K_tj`` is computed only for the pairs that decide a minimum (:func:`mlp_radii`): the others use the cheaper upper
bound ``K_tj <= beta/4 (lambda_max(W1^T diag(relu(w2_j)) W1) + lambda_max(W1^T diag(relu(-w2_t)) W1))`` (2C
eigenproblems), which only lowers their radii; the result equals the all-pairs one (C(C-1) eigenproblems, 9900 for
CIFAR-100). Training uses the same kernel with a differentiable curvature *estimate*
(:func:`mlp_curvature_estimate`).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, current_cache_scope, float_rounding_slack, promoted
from .margins import own_class_mask, safe_ratio

__all__ = ["MLPParams", "mlp_gaps_and_grads", "pair_radii", "lambda_max_upper", "mlp_curvature_bounds", "mlp_radii",
           "mlp_curvature_estimate", "mlp_margins", "curvature_penalty"]


@dataclass
class MLPParams:
    w1: torch.Tensor  # (h, d)
    b1: torch.Tensor  # (h,)
    w2: torch.Tensor  # (C, h)
    b2: torch.Tensor  # (C,)
    beta: float
    threshold: float

    @classmethod
    def of(cls, head: nn.Module, dtype: torch.dtype | None = None) -> "MLPParams":
        fc1, fc2 = getattr(head, "fc1", None), getattr(head, "fc2", None)
        if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
            raise TypeError("the 'mlp_curvature' rule needs a head with nn.Linear fc1 and fc2, "
                            f"got {type(head).__name__}")

        def cast(t: torch.Tensor | None, n: int) -> torch.Tensor:
            if t is None:
                return torch.zeros(n, dtype=dtype or fc1.weight.dtype, device=fc1.weight.device)
            return t if dtype is None else t.to(dtype)

        return cls(cast(fc1.weight, 0), cast(fc1.bias, fc1.out_features), cast(fc2.weight, 0),
                   cast(fc2.bias, fc2.out_features), float(getattr(head, "beta", 1.0)),
                   float(getattr(head, "threshold", 20.0)))


def mlp_gaps_and_grads(features: torch.Tensor, labels: torch.Tensor, p: MLPParams,
                        chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gaps z_y - z_j, gradient norms ||grad_f (z_y - z_j)||, logits), each (N, C), for the smooth softplus."""
    f = features.flatten(1).to(p.w1.dtype)
    n, c, h = f.shape[0], p.w2.shape[0], p.w2.shape[1]
    chunk = chunk or max(1, (1 << 23) // max(1, c * max(h, p.w1.shape[1])))
    gaps, norms, logits = [], [], []
    for i in range(0, n, chunk):
        fi, yi = f[i:i + chunk], labels[i:i + chunk]
        pre = F.linear(fi, p.w1, p.b1)
        z = F.linear(_softplus(pre, p.beta), p.w2, p.b2)
        s1 = torch.sigmoid(p.beta * pre)  # derivative of softplus_beta
        v = (s1[:, None, :] * p.w2[None]) @ p.w1  # (n, C, d): grad of z_j
        v_y = v.gather(1, yi.view(-1, 1, 1).expand(-1, 1, v.shape[2]))
        gaps.append(z.gather(1, yi[:, None]) - z)
        norms.append((v_y - v).norm(dim=2))
        logits.append(z)
    return torch.cat(gaps), torch.cat(norms), torch.cat(logits)


def _softplus(x: torch.Tensor, beta: float) -> torch.Tensor:
    """The smooth softplus ``log(1 + exp(beta x)) / beta`` (no threshold), stable for large ``|x|``."""
    z = beta * x
    return (F.relu(z) + torch.log1p(torch.exp(-z.abs()))) / beta


def _curvature_radius(gap: torch.Tensor, grad_norm: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """``2 D / (sqrt(G^2 + 2 K D) + G)`` for ``D > 0`` (the root of ``D - G r - K r^2 / 2``), ``D / G`` for
    ``D <= 0`` (negative); +inf when ``G = K = 0 < D``."""
    pos = gap > 0
    d_pos = torch.where(pos, gap, torch.zeros_like(gap))
    den = torch.sqrt(grad_norm ** 2 + 2 * curvature * d_pos) + grad_norm
    r_pos = safe_ratio(2 * d_pos, den)
    r_neg = safe_ratio(gap, grad_norm)
    return torch.where(pos, r_pos, torch.where(gap == 0, torch.zeros_like(gap), r_neg))


def pair_radii(gaps: torch.Tensor, grad_norms: torch.Tensor, curvature: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    """The margin kernel of the rule: (N, C) curvature radius of each pair ``(y_n, j)`` (+inf at ``j = y_n``) from
    gaps ``D``, gradient norms ``G`` (N, C) and the curvature bounds ``K`` (C, C) (rows taken at ``labels``); the
    radius of ``y`` is the min over ``j``. Training and the certifier both call it."""
    rad = _curvature_radius(gaps, grad_norms, curvature.to(gaps.dtype)[labels])
    return rad.masked_fill(own_class_mask(labels, gaps.shape[1]), float("inf"))


def _lanczos_max(mat: torch.Tensor, steps: int) -> float:
    """Largest Ritz value of ``steps`` Lanczos steps (full reorthogonalisation): a lower estimate of lambda_max."""
    n = mat.shape[0]
    q = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(mat)
    basis = [q / q.norm()]
    alphas, betas = [], []
    for i in range(min(steps, n)):
        w = mat @ basis[-1]
        alphas.append(float(basis[-1] @ w))
        qs = torch.stack(basis, dim=1)
        w = w - qs @ (qs.T @ w)
        w = w - qs @ (qs.T @ w)
        b = float(w.norm())
        if b <= 1e-14 * max(abs(alphas[-1]), 1e-300) or i == min(steps, n) - 1:
            break
        betas.append(b)
        basis.append(w / b)
    k = len(alphas)
    tri = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        tri = tri + torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(tri)[-1])


def lambda_max_upper(mat: torch.Tensor, steps: int = 64) -> float:
    """A proven upper bound of ``lambda_max`` of a symmetric PSD float64 matrix (exact in real arithmetic for the
    given entries).

    Small matrices: ``eigvalsh`` plus ``4 n eps ||A||_F`` (its backward error). Larger ones: a Lanczos estimate
    ``mu``, raised until the float64 Cholesky factorisation of ``(mu - c) I - A`` succeeds, with
    ``c = gamma_{n+1} n max_i (mu - A_ii)`` covering the factorisation's backward error (Demmel 1989; Rump 2006),
    which proves ``mu I - A`` positive definite; typically within 1e-6 relative of the true value.
    """
    n = mat.shape[0]
    if n == 0:
        return 0.0
    if n <= 128:
        lam = float(torch.linalg.eigvalsh(mat)[-1].clamp_min(0))
        return lam + 4 * n * torch.finfo(torch.float64).eps * float(torch.linalg.matrix_norm(mat))
    trace = float(mat.diagonal().sum())  # lambda_max <= trace for a PSD matrix: the fallback
    est = max(_lanczos_max(mat, steps), 0.0)
    eye = torch.eye(n, dtype=mat.dtype, device=mat.device)
    for attempt in range(16):
        mu = est * (1 + 1e-9 * 4.0 ** attempt) + 1e-300
        if mu >= trace:
            break
        b = mu * eye - mat
        c = float_rounding_slack(n + 1, torch.float64) * n * float(b.diagonal().max())
        if int(torch.linalg.cholesky_ex(b - c * eye).info) == 0:
            return mu
    return trace * (1 + 1e-12)


class _CurvatureBounds:
    """Proven curvature bounds of one MLP head (float64, CPU), computed on demand and kept until its weights change.

    ``pair(t, j) = beta/4 * lambda_max(W1^T diag(relu(w2_j - w2_t)) W1)`` (upper bound, see
    :func:`mlp_curvature_bounds`) and the cheaper ``split(t, j) = beta/4 * (lambda_max(W1^T diag(relu(w2_j)) W1) +
    lambda_max(W1^T diag(relu(-w2_t)) W1)) >= pair(t, j)`` (``relu(a - b) <= relu(a) + relu(-b)`` entrywise, so the
    matrices are ordered in the PSD sense): 2C eigenvalue problems instead of C(C-1).
    """

    def __init__(self, head: nn.Module):
        p = MLPParams.of(head, torch.float64)
        self.w1, self.w2, self.quarter = p.w1.detach().cpu(), p.w2.detach().cpu(), p.beta / 4.0
        self.key = self.key_of(head)
        self.scope = current_cache_scope()
        c = self.w2.shape[0]
        self.exact = torch.full((c, c), float("nan"), dtype=torch.float64)
        self.exact.fill_diagonal_(0.0)
        self._split: torch.Tensor | None = None
        self._row_sq = (self.w1 * self.w1).sum(dim=1)  # ||w1_i||^2
        self._gram: torch.Tensor | None = None

    @staticmethod
    def key_of(head: nn.Module) -> tuple:
        p = MLPParams.of(head)
        return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape)) for t in (p.w1, p.w2)) + (p.beta, p.threshold)

    def _lambda_max(self, a: torch.Tensor) -> float:
        """Upper bound of ``lambda_max(W1^T diag(a) W1)`` for ``a >= 0``, from the cheaper of the d x d matrix and
        the k x k one on the support of ``a`` (``S W1 W1^T S``, ``S = diag(sqrt a)``: same non-zero spectrum),
        plus ``(gamma_max(d,k) + 4u) trace`` for the rounding errors of forming it in float64."""
        idx = a.nonzero().flatten()
        k, d = idx.numel(), self.w1.shape[1]
        if k == 0:
            return 0.0
        s = a[idx].sqrt()
        if k <= d:
            if self._gram is None:
                self._gram = self.w1 @ self.w1.T
            mat = self._gram[idx][:, idx] * (s[:, None] * s[None, :])
        else:
            b = self.w1[idx] * s[:, None]
            mat = b.T @ b
        trace = float((a[idx] * self._row_sq[idx]).sum())
        form_err = (float_rounding_slack(max(d, k), torch.float64) + 4 * 2.0 ** -53) * trace * (1 + 1e-9)
        return lambda_max_upper(mat) + form_err

    def pair(self, t: int, j: int) -> float:
        if math.isnan(float(self.exact[t, j])):
            self.exact[t, j] = self.quarter * self._lambda_max((self.w2[j] - self.w2[t]).clamp_min(0))
        return float(self.exact[t, j])

    def split(self) -> torch.Tensor:
        if self._split is None:
            pos = torch.tensor([self._lambda_max(w.clamp_min(0)) for w in self.w2], dtype=torch.float64)
            neg = torch.tensor([self._lambda_max((-w).clamp_min(0)) for w in self.w2], dtype=torch.float64)
            self._split = self.quarter * (neg[:, None] + pos[None, :]) * (1 + 1e-12)
            self._split.fill_diagonal_(0.0)
        return self._split

    def best_known(self) -> torch.Tensor:
        """The exact pair bound where computed, else the split bound (C, C): an upper bound everywhere."""
        return torch.where(torch.isnan(self.exact), self.split(), torch.minimum(self.exact, self.split()))


def _curvature_bounds_of(head: nn.Module) -> _CurvatureBounds:
    # writes through .data change no key: inside a certification scope the bounds are recomputed once
    cached, scope = _CURVATURE_CACHE.get(head), current_cache_scope()
    if cached is None or cached.key != _CurvatureBounds.key_of(head) or (scope is not None and cached.scope != scope):
        cached = _CurvatureBounds(head)
        _CURVATURE_CACHE[head] = cached
    return cached


@torch.no_grad()
def mlp_curvature_bounds(head: nn.Module, classes: Iterable[int] | None = None) -> torch.Tensor:
    """Proven bounds ``K[t, j] >= -lambda_min(Hessian of z_t - z_j)`` (float64, (C, C), diagonal 0).

    ``K[t, j] = beta/4 * lambda_max(A)`` with ``A = W1^T diag(a) W1``, ``a = relu(w2_j - w2_t)``, computed by
    :func:`lambda_max_upper` on the cheaper of ``A`` (d x d) and ``S W1 W1^T S`` restricted to the ``k`` hidden
    units where ``a > 0`` (k x k, ``S = diag(sqrt a)``; same non-zero spectrum), plus
    ``(gamma_max(d,k) + 4u) trace(A)`` for the rounding errors in forming that matrix in float64. Rows not in
    ``classes`` are NaN. Cached per head until its parameters change. (The certifier computes only the pairs
    that decide a radius; see :func:`mlp_radii`.)
    """
    bounds = _curvature_bounds_of(head)
    c = bounds.w2.shape[0]
    wanted = range(c) if classes is None else sorted({int(k) for k in classes})
    out = torch.full((c, c), float("nan"), dtype=torch.float64)
    for t in wanted:
        out[t] = torch.tensor([bounds.pair(t, j) for j in range(c)], dtype=torch.float64)
    return out.to(head.fc1.weight.device)


@torch.no_grad()
def mlp_radii(gaps: torch.Tensor, grad_norms: torch.Tensor, pred: torch.Tensor, head: nn.Module) -> torch.Tensor:
    """``min_{j != pred}`` curvature radius per sample (float64, CPU inputs (N, C)), equal to the radius with
    every exact pair bound, computing only the pairs that decide a minimum.

    The split bound (:class:`_CurvatureBounds`) is >= the exact one, so the radius it gives for a pair is <= the
    exact radius. Pairs are refined exactly until every sample's minimum is attained at an exactly bounded pair;
    then no other pair can go below it.
    """
    bounds = _curvature_bounds_of(head)
    while True:
        rad = pair_radii(gaps, grad_norms, bounds.best_known(), pred)
        jmin = rad.argmin(dim=1)
        todo = {(int(t), int(j)) for t, j in zip(pred.tolist(), jmin.tolist())
                if math.isnan(float(bounds.exact[t, j]))}
        if not todo:
            return rad.gather(1, jmin[:, None]).squeeze(1)
        for t, j in sorted(todo):
            bounds.pair(t, j)


_CURVATURE_CACHE: "weakref.WeakKeyDictionary[nn.Module, _CurvatureBounds]" = weakref.WeakKeyDictionary()


def mlp_curvature_estimate(head: nn.Module, iters: int = 5) -> torch.Tensor:
    """Differentiable estimate of ``K`` (C, C) (see :func:`mlp_curvature_bounds`) for training losses.

    Power iteration without autograd (warm-started from the previous call on the same head), then a
    Rayleigh quotient with autograd, whose gradient is the eigenvalue's at convergence. A lower estimate of the
    bound, not a certificate.
    """
    p = MLPParams.of(head)
    with autocast_off(p.w1.device):
        w1, w2 = promoted(p.w1), promoted(p.w2)
        c, d = w2.shape[0], w1.shape[1]
        a = (w2[None, :, :] - w2[:, None, :]).clamp_min(0)  # (t, j, h): relu(w2_j - w2_t)
        with torch.no_grad():
            vecs = _POWER_VECTORS.get(head)
            if vecs is None or vecs.shape != (c, c, d) or vecs.device != w1.device or vecs.dtype != w1.dtype:
                vecs = torch.randn(c, c, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(w1)
            a_d, w1_d = a.detach(), w1.detach()
            restart = torch.full((d,), d ** -0.5, dtype=w1.dtype, device=w1.device)
            for _ in range(iters):
                vecs = (a_d * (vecs @ w1_d.T)) @ w1_d
                norm = vecs.norm(dim=2, keepdim=True)
                # a pair whose a vanished restarts (so that it can recover later in training)
                vecs = torch.where(norm > 1e-30, vecs / norm.clamp_min(1e-30), restart)
            _POWER_VECTORS[head] = vecs
        rq = (a * (vecs @ w1.T) ** 2).sum(dim=2)
        return (p.beta / 4.0) * rq * (1 - torch.eye(c, dtype=rq.dtype, device=rq.device))


_POWER_VECTORS: "weakref.WeakKeyDictionary[nn.Module, torch.Tensor]" = weakref.WeakKeyDictionary()


def mlp_margins(features: torch.Tensor, labels: torch.Tensor, head: nn.Module,
                curvature: torch.Tensor | None = None) -> torch.Tensor:
    """``min_{j != y}`` of the curvature radius of class ``y`` in the MLP head's input space (divide by ``L_body``).

    ``curvature`` (C, C) defaults to :func:`mlp_curvature_estimate` (differentiable, for training); the
    certifier passes :func:`mlp_curvature_bounds`. Negative when ``y`` is not the top class. No rounding slack.
    """
    p = MLPParams.of(head, features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32)
    if curvature is None:
        curvature = mlp_curvature_estimate(head)
    gaps, gnorm, _ = mlp_gaps_and_grads(features, labels, p)
    return pair_radii(gaps, gnorm, curvature, labels).min(dim=1).values


def curvature_penalty(head: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """``mean_n mean_{j != y_n} K[y_n, j]`` with the differentiable curvature estimate (the improved-techniques
    curvature regulariser)."""
    k = mlp_curvature_estimate(head)
    c = k.shape[0]
    return (k[labels].sum(dim=1) / max(c - 1, 1)).mean()
