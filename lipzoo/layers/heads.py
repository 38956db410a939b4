"""Classification heads and the head rules the certifier applies to them.

Head rules (``model.head_rule``):

* ``"lipschitz"`` — the whole network (head included) is L-Lipschitz; radius ``(z_top - z_2nd) / (sqrt(2) L)``.
* ``"lln"`` — last layer is :class:`LLN` (rows of W normalised to unit l2 norm) on an L_body-Lipschitz body;
  radius ``min_{j != top} (z_top - z_j) / (||w_top - w_j|| L_body)`` over *all* classes.
* ``"mlp_curvature"`` — 1-hidden-layer MLP head ``W2 softplus(W1 f + b1) + b2`` on L_body-Lipschitz features
  (Singla et al., NeurIPS'22, arXiv 2211.08453); the certifier uses the curvature bound of the logit gaps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LipschitzModule

__all__ = ["LLN", "HEAD_RULES"]

HEAD_RULES = ("lipschitz", "lln", "mlp_curvature")


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
