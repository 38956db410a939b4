"""The margin kernels of the Lipschitz and LLN head rules, and the rounding slack of every computed gap.

Each kernel maps logits ``z`` and a class ``y`` per sample to the radius of ``y`` for a body with bound ``L = 1``
(divide by ``L``). Training calls it on the labels without slack (differentiable); the certifier calls the *same*
kernel on the predictions in float64 with the slack subtracted from every gap, and clamps at 0.

**Numerical rule.** We do not prove a forward-error bound of the network. Every computed gap is reduced by
``SLACK_ULPS * finfo(dtype).eps * max(1, ||z||_2, ||f||_2)`` (``dtype`` the lowest precision of the forward, ``z``
the logits, ``f`` the head's input when the rule uses one): about ``1.2e-4`` times the activations' scale in float32
and ``2.3e-13`` in float64. ``lipzoo.audit`` measures the float32-vs-float64 logit error of a model against it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["SLACK_ULPS", "rounding_slack", "lipschitz_margins", "lln_pair_distances", "lln_margins"]

SLACK_ULPS = 1024.0
_SQRT2 = math.sqrt(2.0)


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


def lowest_precision(*dtypes: torch.dtype) -> torch.dtype:
    """The floating dtype of largest machine epsilon among ``dtypes`` (the one whose slack applies)."""
    return max((d for d in dtypes if d.is_floating_point), key=lambda d: torch.finfo(d).eps)


def own_class_mask(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, C) True at ``(n, labels[n])``: the entry excluded from a min/max over the other classes."""
    return F.one_hot(labels, num_classes).bool()


def safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``; where ``den == 0``: +inf if ``num > 0`` else -inf (a constant gap)."""
    zero = den <= 0
    safe = num / torch.where(zero, torch.ones_like(den), den)
    inf = torch.full_like(safe, float("inf"))
    return torch.where(zero, torch.where(num > 0, inf, -inf), safe)


def lipschitz_margins(logits: torch.Tensor, labels: torch.Tensor, slack: torch.Tensor | None = None) -> torch.Tensor:
    """``(z_y - max_{j != y} z_j - slack) / sqrt(2)`` per sample: the radius of class ``y`` for a 1-Lipschitz
    network (divide by ``L`` for an ``L``-Lipschitz one): each gap is ``sqrt(2)``-Lipschitz in the logits, as
    ``|a_y - a_j| <= sqrt(2) ||a||``. Negative when ``y`` is not the top class. Differentiable; ``slack``
    (N,) defaults to none."""
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(own_class_mask(labels, logits.shape[1]), float("-inf"))
    gap = z_y - others.max(dim=1).values
    if slack is not None:
        gap = gap - slack
    return gap / _SQRT2


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
                distances: torch.Tensor | None = None, slack: torch.Tensor | None = None) -> torch.Tensor:
    """``min_{j != y} (z_y - z_j - slack) / ||w_y - w_j||`` per sample, over **all** classes: the radius of
    class ``y`` in the LLN head's input space (divide by ``L_body``); the gap is affine in the features with
    gradient ``w_y - w_j``. Negative when ``y`` is not the top class.

    ``normalized_weight`` is the (C, d) weight the forward uses; ``distances`` (C, C) may be given to reuse
    :func:`lln_pair_distances` (the certifier passes exact float64 row differences). A pair with ``w_y == w_j``
    has a constant gap: +inf if positive, else -inf. Differentiable; ``slack`` (N,) defaults to none.
    """
    if distances is None:
        distances = lln_pair_distances(normalized_weight.to(logits.dtype))
    z_y = logits.gather(1, labels[:, None])
    dist = distances.to(logits.dtype)[labels]  # (N, C)
    gap = z_y - logits
    if slack is not None:
        gap = gap - slack[:, None]
    ratio = safe_ratio(gap, dist)
    ratio = ratio.masked_fill(own_class_mask(labels, logits.shape[1]), float("inf"))
    return ratio.min(dim=1).values
