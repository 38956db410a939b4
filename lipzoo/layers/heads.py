"""Classification heads certified from their own weights, each naming its head rule as a class attribute.

A head layer that the certifier treats by a rule of its own carries ``head_rule`` (:class:`LLN`: ``"lln"``,
:class:`MLPHead`: ``"mlp_curvature"``); the model's proven bound then covers only the body (``x ->
forward_features``). Any other head is part of the 1-Lipschitz network (rule ``"lipschitz"``, the bound covers the
whole network). The rules themselves (margins, radii, slack) live in :mod:`lipzoo.certification.rules`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._numerics import autocast_off, promoted
from .base import LipschitzModule

__all__ = ["LLN", "LIPSCHITZ_RULE", "head_rule_of", "bound_covers_head"]

LIPSCHITZ_RULE = "lipschitz"


def head_rule_of(head: nn.Module | None) -> str:
    """The head rule of a head layer: its ``head_rule`` class attribute, else ``"lipschitz"`` (the head is part of
    the network's proven bound)."""
    return getattr(head, "head_rule", LIPSCHITZ_RULE)


def bound_covers_head(rule: str) -> bool:
    """Whether a model's proven Lipschitz bound includes its head under ``rule``: only a head without a rule of its
    own is bounded as part of the network; the other rules certify the head from its weights."""
    return rule == LIPSCHITZ_RULE


class LLN(nn.Module):
    """Last-layer normalisation: ``y = W_hat x + b`` with ``W_hat_i = W_i / max(||W_i||, eps)``.

    ``eps=0`` is the SOC repo's ``NormalizedLinear`` (plain division), ``eps=1e-12`` SLL's/LBDN's
    ``LinearNormalized``. Inputs of shape (N, C, 1, 1) or (N, ...) are flattened. This layer is *not* a
    1-Lipschitz map by itself (||W_hat||_2 can reach sqrt(classes)); the certifier uses the pairwise rule.
    """

    head_rule = "lln"

    def __init__(self, in_features: int, num_classes: int, bias: bool = True, eps: float = 1e-12):
        super().__init__()
        self.in_features, self.num_classes, self.eps = in_features, num_classes, eps
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            bound = 1 / self.in_features ** 0.5
            nn.init.uniform_(self.bias, -bound, bound)

    def normalized_weight(self) -> torch.Tensor:
        norms = self.weight.norm(dim=1, keepdim=True)
        if self.eps > 0:
            norms = norms.clamp_min(self.eps)
        return self.weight / norms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return F.linear(x, self.normalized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, eps={self.eps}"


__all__ += ["MLPHead", "thresholded_softplus"]


def thresholded_softplus(x: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """The improved repo's softplus: with ``z = beta x``, ``(relu(z) + log1p(exp(-|z|)) [|z| < threshold]) / beta``.

    Equals ``log(1 + exp(z)) / beta`` up to ``exp(-threshold) / beta`` (~2e-9) where ``|z| >= threshold``;
    ``sigmoid(z)`` is its derivative wherever ``|z| != threshold`` and ``beta / 4`` bounds its second derivative.
    """
    z = beta * x
    a = z.abs()
    tail = torch.where(a < threshold, torch.log1p(torch.exp(-a)), torch.zeros_like(a))
    return (F.relu(z) + tail) / beta


class MLPHead(nn.Module):
    """One-hidden-layer MLP logits layer (the improved repo's ``CRC_Full``; Singla et al., NeurIPS'22):
    ``logits = fc2(softplus_beta(fc1(flatten(f))))`` with :func:`thresholded_softplus`.

    Not Lipschitz-certified by itself: the certifier applies the curvature rule (``head_rule = "mlp_curvature"``)
    using ``fc1``, ``fc2``, ``beta`` and the body's Lipschitz bound. The buffers ``_u`` (in_features,) and
    ``_v`` (num_hidden,) are power-iteration estimates of the top singular vectors of ``fc1.weight``
    (``v = W1 u / ||W1 u||``, ``u = W1^T v / ||W1^T v||``): ``init_iters`` (50) iterations at construction,
    ``update_iters`` (1) per training forward. They never affect the logits.
    """

    head_rule = "mlp_curvature"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_hidden: int | None = None,
        beta: float = 1.0,
        threshold: float = 20.0,
        init_iters: int = 50,
        update_iters: int = 1,
    ):
        super().__init__()
        num_hidden = in_features if num_hidden is None else num_hidden
        self.in_features, self.num_hidden, self.num_classes = in_features, num_hidden, num_classes
        self.beta, self.threshold = float(beta), float(threshold)
        self.init_iters, self.update_iters = init_iters, update_iters
        self.fc1 = nn.Linear(in_features, num_hidden)
        self.fc2 = nn.Linear(num_hidden, num_classes)
        self.register_buffer("_u", F.normalize(torch.randn(in_features), dim=0))
        self.register_buffer("_v", F.normalize(torch.randn(num_hidden), dim=0))
        self.power_iteration(init_iters)

    @torch.no_grad()
    def power_iteration(self, iters: int) -> None:
        """``iters`` alternating power-method steps on ``fc1.weight`` (in place on ``_u``/``_v``)."""
        if self.fc1.weight.is_meta:
            return
        with autocast_off(self.fc1.weight.device):
            w = self.fc1.weight
            w = promoted(w)
            for _ in range(iters):
                self._v.copy_(F.normalize(torch.mv(w, self._u.to(w.dtype)), dim=0))
                self._u.copy_(F.normalize(torch.mv(w.T, self._v.to(w.dtype)), dim=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.power_iteration(self.update_iters)
        return self.fc2(thresholded_softplus(self.fc1(x.flatten(1)), self.beta, self.threshold))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_hidden={self.num_hidden}, num_classes={self.num_classes}, "
                f"beta={self.beta}, threshold={self.threshold}")
