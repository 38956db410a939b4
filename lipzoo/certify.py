"""The shared certifier: certified l2 radii, certified accuracy and the claims record.

The certifier knows *head rules*, never families. It reads ``model.head_rule`` (``"lipschitz"``, ``"lln"`` or
``"mlp_curvature"``), ``model.lipschitz_bound()`` (a proven l2 bound: of the whole network for ``"lipschitz"``,
of ``x -> forward_features(x)`` otherwise) and, for the last two rules, ``model.get_classifier()``.

Radius of the prediction ``t = argmax z`` at an image ``x`` in [0, 1] pixel space (``L`` = the model's bound):

* ``"lipschitz"``: ``(z_t - z_2nd) / (sqrt(2) L)``. Each logit gap ``z_t - z_j`` is ``sqrt(2) L``-Lipschitz
  because ``|a_t - a_j| <= sqrt(2) ||a||`` for a change ``a`` of the logit vector.
* ``"lln"``: ``min_{j != t} (z_t - z_j) / (||w_t - w_j|| L)`` over **all** classes, with ``w`` the normalised
  weight the forward uses (``head.normalized_weight()``): the gap is affine in the features with gradient
  ``w_t - w_j``.
* ``"mlp_curvature"`` (Singla et al., NeurIPS'22, arXiv 2211.08453, Sec. 4): head
  ``z = W2 softplus_beta(W1 f + b1) + b2`` on features ``f``. For the gap ``g_j = z_t - z_j`` with
  ``u = w2_t - w2_j`` the Hessian is ``W1^T diag(u * s'') W1`` with ``0 <= s'' <= beta/4``, so its smallest
  eigenvalue is ``>= -K_tj``, ``K_tj = beta/4 * lambda_max(W1^T diag(relu(-u)) W1)`` (computed exactly with
  ``eigvalsh`` in float64, plus a backward-error margin; the NeurIPS'22 bound uses ``|u|``, which is never
  smaller). Taylor's theorem gives ``g_j(f + d) >= D - G ||d|| - K ||d||^2 / 2`` (``D`` the gap,
  ``G = ||grad g_j(f)||``), positive for ``||d|| < (sqrt(G^2 + 2 K D) - G) / K = 2 D / (sqrt(G^2 + 2 K D) + G)``.
  The radius is the min over ``j`` of that, divided by ``L``. ``K_tj`` is computed only for the pairs that
  decide a minimum (:func:`mlp_radii`): the others use the cheaper upper bound ``K_tj <= beta/4 (lambda_max(W1^T
  diag(relu(w2_j)) W1) + lambda_max(W1^T diag(relu(-w2_t)) W1))`` (2C eigenproblems), which only lowers their
  radii; the result equals the all-pairs one (C(C-1) eigenproblems, 9900 for CIFAR-100).

A sample is certified at ``eps`` iff the prediction is correct and ``radius > eps`` (strict). Misclassified
samples get radius 0.

**Numerical rule.** We do not prove a forward-error bound of the network. Every computed gap is reduced by
``SLACK_ULPS * finfo(dtype).eps * max(1, ||z||_2, ||f||_2)`` (``dtype`` the model's forward dtype, ``z`` the
logits, ``f`` the head's input when the rule uses one): about ``1.2e-4`` times the activations' scale in float32
and ``2.3e-13`` in float64. ``lipzoo.audit`` measures the float32-vs-float64 logit error of a model against this
slack. For the MLP rule the head's quantities are recomputed in float64 from ``f``, the threshold of the
softplus (it is linear where ``beta x > threshold``, off by ``<= exp(-threshold)/beta`` per unit) is added to
the slack, and the curvature bound includes the float64 eigensolver's backward error. Certify in float64 with
``dtype=torch.float64`` (the model is copied and cast) for the tightest numbers.
"""
from __future__ import annotations

import copy
import json
import math
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._numerics import certification_context, current_cache_scope, float_rounding_slack

__all__ = [
    "CERTIFIER_VERSION", "DEFAULT_EPS", "SLACK_ULPS", "CertificationResult", "certify", "certify_dataset",
    "certified_radius", "eps_label", "parse_eps", "rounding_slack", "lipschitz_margins", "lln_margins",
    "lln_pair_distances", "mlp_margins", "mlp_curvature_bounds", "mlp_radii", "lambda_max_upper", "mlp_curvature_estimate", "label_radii",
    "mlp_curvature_penalty", "plot_certified_accuracy",
]

CERTIFIER_VERSION = "1.0"
DEFAULT_EPS: tuple[float, ...] = (36 / 255, 72 / 255, 108 / 255, 1.0)
SLACK_ULPS = 1024.0
_SQRT2 = math.sqrt(2.0)
_HEAD_RULES = ("lipschitz", "lln", "mlp_curvature")


# ---------------------------------------------------------------------------------------------- eps labels
def eps_label(eps: float) -> str:
    """``'36/255'`` when ``eps * 255`` is an integer (``1.0 -> '255/255'``), else ``repr(float(eps))``."""
    k = float(eps) * 255.0
    if abs(k - round(k)) < 1e-9:
        return f"{int(round(k))}/255"
    return repr(float(eps))


def parse_eps(text: str | float) -> float:
    """Inverse of :func:`eps_label`: ``'36/255' -> 0.1411...``, ``'0.5' -> 0.5``."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    if "/" in s:
        num, den = s.split("/", 1)
        return float(num) / float(den)
    return float(s)


# ------------------------------------------------------------------------------------------ margin rules
def rounding_slack(logits: torch.Tensor, features: torch.Tensor | None = None,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-sample slack subtracted from every computed gap (see the module docstring).

    ``SLACK_ULPS * finfo(dtype).eps * max(1, ||z||_2, ||f||_2)``, with ``dtype`` the forward's dtype
    (default ``logits.dtype``). Returned in float64.
    """
    dtype = dtype or logits.dtype
    scale = logits.detach().double().flatten(1).norm(dim=1).clamp_min(1.0)
    if features is not None:
        scale = torch.maximum(scale, features.detach().double().flatten(1).norm(dim=1))
    return SLACK_ULPS * torch.finfo(dtype).eps * scale


def _other_mask(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels, num_classes).bool()


def lipschitz_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``(z_y - max_{j != y} z_j) / sqrt(2)`` per sample: the radius of class ``y`` for a 1-Lipschitz
    network (divide by ``L`` for an ``L``-Lipschitz one). Negative when ``y`` is not the top class.
    Differentiable; no rounding slack."""
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(_other_mask(labels, logits.shape[1]), float("-inf"))
    return (z_y - others.max(dim=1).values) / _SQRT2


def lln_pair_distances(normalized_weight: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = ||w_i - w_j||_2`` (C, C) for the rows of the (already normalised) LLN weight.

    Computed from the Gram matrix so that it is cheap and differentiable (the diagonal, 0, has a zero
    gradient). The certifier uses the exact row differences in float64 instead.
    """
    w = normalized_weight
    gram = w @ w.T
    sq = gram.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)
    eye = torch.eye(w.shape[0], dtype=torch.bool, device=w.device)
    return torch.where(eye, torch.zeros_like(d2), d2.masked_fill(eye, 1.0).sqrt())


def lln_margins(logits: torch.Tensor, labels: torch.Tensor, normalized_weight: torch.Tensor,
                distances: torch.Tensor | None = None) -> torch.Tensor:
    """``min_{j != y} (z_y - z_j) / ||w_y - w_j||`` per sample, over **all** classes: the radius of class ``y``
    in the LLN head's input space (divide by ``L_body``). Negative when ``y`` is not the top class.

    ``normalized_weight`` is the (C, d) weight the forward uses; ``distances`` (C, C) may be given to reuse
    :func:`lln_pair_distances`. A pair with ``w_y == w_j`` has a constant gap: +inf if positive, else -inf.
    Differentiable; no rounding slack.
    """
    if distances is None:
        distances = lln_pair_distances(normalized_weight.to(logits.dtype))
    z_y = logits.gather(1, labels[:, None])
    dist = distances.to(logits.dtype)[labels]  # (N, C)
    gap = z_y - logits
    ratio = _safe_ratio(gap, dist)
    ratio = ratio.masked_fill(_other_mask(labels, logits.shape[1]), float("inf"))
    return ratio.min(dim=1).values


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``; where ``den == 0``: +inf if ``num > 0`` else -inf (a constant gap)."""
    zero = den <= 0
    safe = num / torch.where(zero, torch.ones_like(den), den)
    inf = torch.full_like(safe, float("inf"))
    return torch.where(zero, torch.where(num > 0, inf, -inf), safe)


# ---------------------------------------------------------------------------------------------- MLP head
@dataclass
class _MLPParams:
    w1: torch.Tensor  # (h, d)
    b1: torch.Tensor  # (h,)
    w2: torch.Tensor  # (C, h)
    b2: torch.Tensor  # (C,)
    beta: float
    threshold: float

    @classmethod
    def of(cls, head: nn.Module, dtype: torch.dtype | None = None) -> "_MLPParams":
        fc1, fc2 = getattr(head, "fc1", None), getattr(head, "fc2", None)
        if not isinstance(fc1, nn.Linear) or not isinstance(fc2, nn.Linear):
            raise TypeError(f"the 'mlp_curvature' rule needs a head with nn.Linear fc1 and fc2, got {type(head).__name__}")

        def cast(t: torch.Tensor | None, n: int) -> torch.Tensor:
            if t is None:
                return torch.zeros(n, dtype=dtype or fc1.weight.dtype, device=fc1.weight.device)
            return t if dtype is None else t.to(dtype)

        return cls(cast(fc1.weight, 0), cast(fc1.bias, fc1.out_features), cast(fc2.weight, 0),
                   cast(fc2.bias, fc2.out_features), float(getattr(head, "beta", 1.0)),
                   float(getattr(head, "threshold", 20.0)))


def _mlp_gaps_and_grads(features: torch.Tensor, labels: torch.Tensor, p: _MLPParams,
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
    r_pos = _safe_ratio(2 * d_pos, den)
    r_neg = _safe_ratio(gap, grad_norm)
    return torch.where(pos, r_pos, torch.where(gap == 0, torch.zeros_like(gap), r_neg))


def _gamma(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` for float64 (u = 2^-53)."""
    return float_rounding_slack(n, torch.float64)


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
        c = _gamma(n + 1) * n * float(b.diagonal().max())
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
        p = _MLPParams.of(head, torch.float64)
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
        p = _MLPParams.of(head)
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
        form_err = (_gamma(max(d, k)) + 4 * 2.0 ** -53) * float((a[idx] * self._row_sq[idx]).sum()) * (1 + 1e-9)
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
    mask = _other_mask(pred, gaps.shape[1])
    while True:
        k_use = bounds.best_known()
        rad = _curvature_radius(gaps, grad_norms, k_use[pred]).masked_fill(mask, float("inf"))
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
    p = _MLPParams.of(head)
    with torch.autocast(device_type=p.w1.device.type, enabled=False):
        w1, w2 = p.w1, p.w2
        if w1.dtype in (torch.float16, torch.bfloat16):
            w1, w2 = w1.float(), w2.float()
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
    p = _MLPParams.of(head, features.dtype if features.dtype in (torch.float32, torch.float64) else torch.float32)
    if curvature is None:
        curvature = mlp_curvature_estimate(head)
    gaps, gnorm, _ = _mlp_gaps_and_grads(features, labels, p)
    r = _curvature_radius(gaps, gnorm, curvature.to(gaps.dtype)[labels])
    return r.masked_fill(_other_mask(labels, gaps.shape[1]), float("inf")).min(dim=1).values


def _model_head_rule(model: nn.Module) -> str:
    rule = getattr(model, "head_rule", "lipschitz")
    if rule not in _HEAD_RULES:
        raise ValueError(f"unknown head rule {rule!r}; expected one of {_HEAD_RULES}")
    return rule


def label_radii(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None,
                lipschitz: float = 1.0) -> torch.Tensor:
    """Differentiable certified radius of the *label* class under the model's head rule, divided by
    ``lipschitz`` (the body's bound, or the whole network's for ``"lipschitz"``). ``<= 0`` when the label is not
    the prediction. The MLP rule needs ``features`` and uses the curvature *estimate* (a training signal, not a
    certificate). No rounding slack: use :func:`certify` for certificates."""
    rule = _model_head_rule(model)
    if rule == "lipschitz":
        m = lipschitz_margins(logits, labels)
    elif rule == "lln":
        w = _normalized_weight(model)
        m = lln_margins(logits, labels, w, lln_pair_distances(w.to(logits.dtype)))
    else:
        if features is None:
            raise ValueError("the 'mlp_curvature' head rule needs the head's input: label_radii(..., features=f)")
        m = mlp_margins(features, labels, model.get_classifier())
    return m / lipschitz


def mlp_curvature_penalty(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """``mean_n mean_{j != y_n} K[y_n, j]`` with the differentiable curvature estimate (the improved-techniques
    curvature regulariser); 0 for models whose head rule is not ``"mlp_curvature"``."""
    if _model_head_rule(model) != "mlp_curvature":
        return torch.zeros((), device=labels.device)
    k = mlp_curvature_estimate(model.get_classifier())
    c = k.shape[0]
    return (k[labels].sum(dim=1) / max(c - 1, 1)).mean()


def _normalized_weight(model: nn.Module) -> torch.Tensor:
    head = model.get_classifier()
    fn = getattr(head, "normalized_weight", None)
    if not callable(fn):
        raise TypeError(f"the 'lln' rule needs a head with normalized_weight(), got {type(head).__name__}")
    return fn()


# ------------------------------------------------------------------------------------------ the certifier
class _Rule:
    """Radii of the predictions of one model (one certify call): the constant parts of the rule, computed once.

    :meth:`radii` returns radii for a 1-Lipschitz body (``L = 1``); the caller divides by the bound of the map
    actually evaluated. Everything the rule keeps lives on the CPU in float64, whatever the model's device.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.model, self.dtype = model, dtype
        self.rule = _model_head_rule(model)
        self.head = model.get_classifier() if self.rule != "lipschitz" else None
        self._dist: torch.Tensor | None = None
        self._mlp: _MLPParams | None = None
        if self.rule == "lln":
            with torch.no_grad():
                w = _normalized_weight(model).detach().double().cpu()  # the weight the forward uses, cast exactly
            self._dist = torch.stack([(w[t] - w).norm(dim=1) for t in range(w.shape[0])])
        elif self.rule == "mlp_curvature":
            p = _MLPParams.of(self.head, torch.float64)
            self._mlp = _MLPParams(p.w1.cpu(), p.b1.cpu(), p.w2.cpu(), p.b2.cpu(), p.beta, p.threshold)
            # ||w2_t - w2_j||_1, for the softplus-threshold term of the slack
            self._u1 = torch.stack([(self._mlp.w2[t] - self._mlp.w2).abs().sum(dim=1) for t in range(p.w2.shape[0])])

    def num_classes(self) -> int:
        """The model's class count (``num_classes``, else the logits' width seen by :meth:`radii`)."""
        return int(getattr(self.model, "num_classes", 0) or self._width)

    def logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.rule == "lipschitz":
            return self.model(x), None
        f = self.model.forward_features(x)
        return self.model.forward_head(f), f

    def radii(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(radius of the prediction for ``L = 1`` (float64, CPU), prediction, finite) for a batch.

        ``finite`` is False for samples with a non-finite logit or head input: their radius is 0.
        """
        logits, feats = self.logits_and_features(x)
        self._width = int(logits.shape[1])
        z = logits.detach().double().cpu()
        f = None if feats is None else feats.detach().flatten(1).double().cpu()
        finite = torch.isfinite(z).all(dim=1)
        if f is not None:
            finite &= torch.isfinite(f).all(dim=1)
        z = torch.where(finite[:, None], z, torch.zeros_like(z))
        if f is not None:
            f = torch.where(finite[:, None], f, torch.zeros_like(f))
        pred_c = z.argmax(dim=1)
        # the slack of the lowest precision the forward used (a model that computes in bf16 gets bf16's slack)
        slack = rounding_slack(z, f, dtype=_lowest_precision(self.dtype, logits.dtype))
        if self.rule == "lipschitz":
            top2 = z.topk(2, dim=1).values if z.shape[1] > 1 else torch.cat([z, z.new_full(z.shape, -math.inf)], 1)
            margin = (top2[:, 0] - top2[:, 1] - slack).clamp_min(0)
            r = margin / _SQRT2
        elif self.rule == "lln":
            gap = z.gather(1, pred_c[:, None]) - z - slack[:, None]
            ratio = _safe_ratio(gap, self._dist[pred_c])
            ratio = ratio.masked_fill(_other_mask(pred_c, z.shape[1]), float("inf"))
            r = ratio.min(dim=1).values.clamp_min(0)
        else:
            p = self._mlp
            gaps, gnorm, _ = _mlp_gaps_and_grads(f, pred_c, p)
            # gaps of the smooth softplus; the head's thresholded one differs by <= log1p(exp(-thr))/beta per unit
            thr = math.log1p(math.exp(-p.threshold)) / p.beta
            gaps = gaps - slack[:, None] - 2 * thr * self._u1[pred_c]
            r = mlp_radii(gaps, gnorm, pred_c, self.head).clamp_min(0)
        r = torch.where(finite & ~torch.isnan(r), r, torch.zeros_like(r))
        return r, pred_c, finite


def _lowest_precision(*dtypes: torch.dtype) -> torch.dtype:
    return max((d for d in dtypes if d.is_floating_point), key=lambda d: torch.finfo(d).eps)


def _divide_by_bound(radii: torch.Tensor, bound: float) -> torch.Tensor:
    """Radii for ``L = 1`` divided by the proven bound; all 0 when the bound is not a positive finite number."""
    if not math.isfinite(bound) or bound <= 0:
        return torch.zeros_like(radii)
    return radii / bound


@dataclass
class CertificationResult:
    """Per-sample certified radii of the predictions and the derived accuracies.

    ``radii[i]`` is the certified l2 radius (pixel space, [0, 1] images) of the prediction, 0 when misclassified;
    a sample is certified at ``eps`` iff ``correct[i] and radii[i] > eps``.
    """

    radii: torch.Tensor  # float64 (N,)
    correct: torch.Tensor  # bool (N,)
    predictions: torch.Tensor  # int64 (N,)
    labels: torch.Tensor  # int64 (N,)
    eps: tuple[float, ...]
    lipschitz_bound: float
    head_rule: str
    dtype: str
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.radii.numel())

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.double().mean()) if self.n else float("nan")

    def certified_accuracy_at(self, eps: float) -> float:
        """Fraction of samples that are correct with ``radius > eps``."""
        if not self.n:
            return float("nan")
        return float((self.correct & (self.radii > eps)).double().mean())

    @property
    def certified_accuracy(self) -> dict[float, float]:
        return {float(e): self.certified_accuracy_at(e) for e in self.eps}

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": {eps_label(e): a for e, a in self.certified_accuracy.items()},
            "eps": {eps_label(e): float(e) for e in self.eps},
            "lipschitz_bound": self.lipschitz_bound,
            "head_rule": self.head_rule,
            "dtype": self.dtype,
            "certifier_version": CERTIFIER_VERSION,
            "seconds": self.seconds,
        }
        if samples:
            out["radii"] = self.radii.tolist()
            out["correct"] = self.correct.tolist()
            out["predictions"] = self.predictions.tolist()
        return out

    def to_json(self, path: str | Path | None = None, samples: bool = False) -> str:
        text = json.dumps(self.to_dict(samples=samples), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_claims(self, dataset: str = "cifar10", split: str = "test", subset: str = "full") -> dict[str, Any]:
        """The claims record (results.json, model cards, ``lipzoo.verify``)."""
        return {
            "dataset": dataset,
            "split": split,
            "subset": subset,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": {eps_label(e): a for e, a in self.certified_accuracy.items()},
            "eps": {eps_label(e): float(e) for e in self.eps},
            "lipschitz_bound": float(self.lipschitz_bound),
            "head_rule": self.head_rule,
            "dtype": self.dtype,
            "certifier_version": CERTIFIER_VERSION,
        }

    def summary(self) -> str:
        lines = [f"n={self.n}  head_rule={self.head_rule}  L={self.lipschitz_bound:.7g}  dtype={self.dtype}  "
                 f"({self.seconds:.1f} s)",
                 f"{'eps':>10}  {'certified':>9}", f"{'clean':>10}  {100 * self.clean_accuracy:8.2f}%"]
        lines += [f"{eps_label(e):>10}  {100 * a:8.2f}%" for e, a in self.certified_accuracy.items()]
        return "\n".join(lines)


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"certify in float32 or float64, never {dtype}")
    return dtype


class _Prepared:
    """The model in eval mode and in the certifying dtype (a cast copy when needed); restores train mode."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.orig, self.dtype = model, dtype
        params = [p for p in model.parameters() if p.is_floating_point()]
        if params and any(p.dtype != dtype for p in params):
            self.model = copy.deepcopy(model).to(dtype)
        else:
            self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        if self.model is self.orig and self.was_training:
            self.orig.train()

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")


IMAGE_RANGE_TOLERANCE = 1e-6


def _as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise TypeError(f"expected images as a tensor or numpy array, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.dim() == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)
        images = images.float().div(255)
    if not torch.is_floating_point(images):
        raise TypeError(f"expected float images in [0, 1] (or uint8 in [0, 255]), got {images.dtype}")
    return images


def check_images(images: torch.Tensor, input_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """Refuse what cannot be certified: a single image without its batch dimension, non-finite values, and values
    outside ``input_range`` (beyond :data:`IMAGE_RANGE_TOLERANCE`; a lipzoo model's ``input_range`` is [0, 1]:
    certificates are radii in [0, 1] pixel space and the model normalises its input itself; ``None`` accepts
    every finite input)."""
    if images.dim() == 3:
        raise ValueError(f"expected a batch of images (N, C, H, W), got one tensor of shape {tuple(images.shape)}; "
                         "pass images[None] to certify a single image")
    if images.dim() < 2:
        raise ValueError(f"expected a batch of inputs (N, ...), got shape {tuple(images.shape)}")
    if images.numel() == 0:
        return
    if not bool(torch.isfinite(images).all()):
        raise ValueError("the images contain NaN or inf values; certify finite images in [0, 1]")
    if input_range is None:
        return
    lo, hi = float(images.min()), float(images.max())
    if lo < input_range[0] - IMAGE_RANGE_TOLERANCE or hi > input_range[1] + IMAGE_RANGE_TOLERANCE:
        raise ValueError(
            f"images must be in [{input_range[0]:g}, {input_range[1]:g}], got values in [{lo:.4g}, {hi:.4g}]; divide "
            "0-255 images by 255 and do not normalise them (lipzoo models normalise their input themselves)")


def _input_range(model: nn.Module) -> tuple[float, float] | None:
    return getattr(model, "input_range", (0.0, 1.0))


def _as_labels(labels: Any, n: int) -> torch.Tensor:
    t = labels if torch.is_tensor(labels) else torch.as_tensor(np.asarray(labels))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {t.dtype}")
    t = t.long().cpu()
    if t.dim() != 1 or len(t) != n:
        raise ValueError(f"expected {n} labels (one per image, shape ({n},)), got shape {tuple(t.shape)}")
    return t


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes - 1}] for this {num_classes}-class model, "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")


def _batches_from_tensors(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(labels), batch_size):
        yield images[i:i + batch_size], labels[i:i + batch_size]


def _to_model(x: torch.Tensor, model: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One batch, validated on its own device, then moved to the model's device and dtype (channels-last)."""
    x = _as_images(x)
    check_images(x, _input_range(model))
    x = x.to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _run(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int | None,
         eps: Sequence[float], dtype: torch.dtype, progress: bool, lipschitz_bound: float | None) -> CertificationResult:
    dtype = _check_dtype(dtype)
    eps = tuple(float(e) for e in eps)
    start = time.perf_counter()
    prep = _Prepared(model, dtype)
    radii, preds, labs, finite = [], [], [], []
    # the bound is computed after the forwards, in the same scope: it is the bound of the map evaluated (the
    # input size and precision of the forward enter some layers' bounds, e.g. LOT's)
    with certification_context(), prep as m, torch.no_grad():
        rule = _Rule(m, dtype)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="certify", unit="img")
        for x, y in batches:
            x = _to_model(x, m, prep.device, dtype)
            y = _as_labels(y, len(x))
            r, p, ok = rule.radii(x)
            _check_labels(y, rule.num_classes())
            radii.append(r)
            preds.append(p)
            labs.append(y)
            finite.append(ok)
            if bar is not None:
                bar.update(len(p))
        if bar is not None:
            bar.close()
        bound = float(m.lipschitz_bound()) if lipschitz_bound is None else float(lipschitz_bound)
    if not math.isfinite(bound) or bound <= 0:
        warnings.warn(f"the model's Lipschitz bound is {bound}: nothing can be certified", RuntimeWarning, stacklevel=3)
    radii_t = _divide_by_bound(torch.cat(radii), bound) if radii else torch.zeros(0, dtype=torch.float64)
    preds_t = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)
    labs_t = torch.cat(labs) if labs else torch.zeros(0, dtype=torch.long)
    finite_t = torch.cat(finite) if finite else torch.zeros(0, dtype=torch.bool)
    correct = (preds_t == labs_t) & finite_t  # a non-finite logit is never a correct prediction
    radii_t = torch.where(correct, radii_t, torch.zeros_like(radii_t))
    return CertificationResult(radii=radii_t, correct=correct, predictions=preds_t, labels=labs_t, eps=eps,
                               lipschitz_bound=bound, head_rule=rule.rule, dtype=str(dtype).replace("torch.", ""),
                               seconds=time.perf_counter() - start, extra={"non_finite": int((~finite_t).sum())})


def certify(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    eps: Sequence[float] = DEFAULT_EPS,
    batch_size: int = 500,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    lipschitz_bound: float | None = None,
) -> CertificationResult:
    """Certify ``model`` on ``images`` (N, C, H, W) in [0, 1] (uint8 is divided by 255) with ``labels``.

    Runs in eval mode without autograd, channels-last, in ``dtype`` (float32 or float64; a cast copy of the
    model is used when its parameters have another dtype), on the model's device (batches are moved there), in
    :func:`lipzoo._numerics.certification_context`: autocast off, IEEE float32 matmuls and convolutions (no
    TF32), the caller's settings restored, every parametrisation and bound recomputed from the current
    parameters. ``lipschitz_bound`` overrides ``model.lipschitz_bound()`` (only for models that do not state
    one). The model's train/eval mode is restored.

    Raises ``ValueError`` for images outside [0, 1], non-finite images, a single image without a batch
    dimension, and labels that are not class indices of the model. A sample whose logits are not finite is
    never counted correct or certified (``result.extra["non_finite"]`` counts them).
    """
    images = _as_images(images)
    check_images(images, _input_range(model))
    labels = _as_labels(labels, len(images))
    return _run(model, _batches_from_tensors(images, labels, batch_size), len(labels), eps, dtype, progress,
                lipschitz_bound)


def certify_dataset(
    model: nn.Module,
    dataset_or_loader: Any,
    eps: Sequence[float] = DEFAULT_EPS,
    batch_size: int = 500,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    indices: np.ndarray | Sequence[int] | None = None,
) -> CertificationResult:
    """Certify on a dataset: a :class:`lipzoo.data.CIFAR` (uses ``.tensors(indices)``), any map-style dataset of
    ``(image, label)``, a ``DataLoader`` yielding ``(images, labels)`` batches, or an ``(images, labels)`` tuple."""
    obj = dataset_or_loader
    if isinstance(obj, tuple) and len(obj) == 2:
        images, labels = obj
        if indices is not None:
            images, labels = images[indices], labels[indices]
        return certify(model, images, labels, eps, batch_size, dtype, progress)
    if callable(getattr(obj, "tensors", None)):
        images, labels = obj.tensors(None if indices is None else np.asarray(indices))
        return certify(model, images, labels, eps, batch_size, dtype, progress)
    if isinstance(obj, torch.utils.data.DataLoader):
        if indices is not None:
            raise ValueError("indices cannot be combined with a DataLoader; subset the dataset instead")
        total = len(obj.dataset) if hasattr(obj.dataset, "__len__") else None
        return _run(model, iter(obj), total, eps, dtype, progress, None)
    if indices is not None:
        obj = torch.utils.data.Subset(obj, list(indices))
    loader = torch.utils.data.DataLoader(obj, batch_size=batch_size, shuffle=False)
    return _run(model, iter(loader), len(obj), eps, dtype, progress, None)


def certified_radius(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None,
                     return_predictions: bool = False, lipschitz_bound: float | None = None,
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Certified l2 radius (float64, pixel space, CPU) of the model's *prediction* for each image of ``x`` (no
    labels needed; misclassification is not known here). ``dtype`` defaults to float32; ``lipschitz_bound``
    defaults to ``model.lipschitz_bound()`` (pass it to avoid recomputing an expensive bound). Same context and
    input checks as :func:`certify`; a sample with non-finite logits gets radius 0."""
    dtype = _check_dtype(dtype or torch.float32)
    prep = _Prepared(model, dtype)
    with certification_context(), prep as m, torch.no_grad():
        rule = _Rule(m, dtype)
        r, p, _ = rule.radii(_to_model(x, m, prep.device, dtype))
        bound = float(m.lipschitz_bound()) if lipschitz_bound is None else float(lipschitz_bound)
    r = _divide_by_bound(r, bound)
    return (r, p) if return_predictions else r


# ------------------------------------------------------------------------------------------------ plots
def _radii_and_n(obj: Any) -> tuple[np.ndarray, float | None]:
    if isinstance(obj, CertificationResult):
        return obj.radii.numpy(), obj.clean_accuracy
    r = obj.detach().cpu().numpy() if torch.is_tensor(obj) else np.asarray(obj, dtype=np.float64)
    return r.astype(np.float64), None


def plot_certified_accuracy(
    result_or_radii: CertificationResult | torch.Tensor | np.ndarray | Mapping[str, Any],
    path: str | Path,
    title: str | None = None,
    eps_max: float = 1.5,
    marks: Sequence[float] = DEFAULT_EPS,
) -> Path:
    """Plot the fraction of samples certified (correct and radius > eps) against eps in [0, eps_max].

    ``result_or_radii``: a :class:`CertificationResult`, per-sample radii (0 for misclassified), or a mapping
    ``label -> either`` for several curves. The default eps are marked. Writes ``path`` (PNG/SVG/PDF).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    curves = dict(result_or_radii) if isinstance(result_or_radii, Mapping) else {None: result_or_radii}
    grid = np.linspace(0.0, eps_max, 301)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, obj in curves.items():
        radii, clean = _radii_and_n(obj)
        n = max(len(radii), 1)
        frac = (radii[None, :] > grid[:, None]).sum(axis=1) / n
        line, = ax.plot(grid, 100 * frac, label=label)
        ms = [e for e in marks if e <= eps_max]
        ax.plot(ms, [100 * float((radii > e).sum()) / n for e in ms], "o", color=line.get_color(), ms=4)
        if clean is not None:
            ax.plot([0.0], [100 * clean], "s", color=line.get_color(), ms=4)
    for e in marks:
        if e <= eps_max:
            ax.axvline(e, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, eps_max)
    ax.set_ylim(0, 100)
    ax.set_xlabel("l2 radius eps (pixel space, [0, 1] images)")
    ax.set_ylabel("certified accuracy (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if any(k is not None for k in curves):
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ callable module
def _make_module_callable(module_name: str, fn: Any) -> None:
    """Let ``lipzoo.<module>(...)`` call ``fn``: the package exposes ``lipzoo.certify``/``audit``/``verify`` as
    functions, but once the submodule is imported the package attribute *is* the module."""
    import sys
    import types

    class _CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule


_make_module_callable(__name__, certify)
