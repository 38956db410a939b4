"""Training losses, built on the certifier's head rules (one definition of a margin: the rule's kernel).

* ``xent`` (SLL / LBDN): ``T * CE((z - offset * onehot(y)) / T, y)``.
* ``ce``: plain cross-entropy; ``multimargin``: ``nn.MultiMarginLoss(margin)``.
* certificate regularisation (CR, Singla et al. ICLR'22): ``- gamma * mean(relu(r_y))`` with ``r_y`` the certified
  radius of the *label* under the model's head rule (negative when misclassified, so relu drops it).
* curvature regulariser of the MLP head (improved techniques): ``beta * mean_j M_yj`` with ``M_yj`` the curvature
  bound of the (y, j) logit gap, as computed by the certifier.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..certification import label_radii, rule_of

__all__ = ["xent_loss", "label_radii", "TrainingLoss"]


def xent_loss(logits: torch.Tensor, labels: torch.Tensor, offset: float, temperature: float) -> torch.Tensor:
    onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy((logits - offset * onehot) / temperature, labels) * temperature


class TrainingLoss(nn.Module):
    """The loss of a recipe: base loss (xent / ce / multimargin) + optional CR and curvature terms."""

    def __init__(self, kind: str = "xent", offset: float = 2.1213203435596424, temperature: float = 0.25,
                 margin: float = 0.5, cr_gamma: float = 0.0, curvature_beta: float = 0.0):
        super().__init__()
        if kind not in ("xent", "ce", "multimargin"):
            raise ValueError(f"unknown loss {kind!r}; one of xent, ce, multimargin")
        self.kind, self.offset, self.temperature = kind, offset, temperature
        self.margin, self.cr_gamma, self.curvature_beta = margin, cr_gamma, curvature_beta

    def forward(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor,
                features: torch.Tensor | None = None, lipschitz: float = 1.0) -> torch.Tensor:
        logits = logits.float()
        if self.kind == "xent":
            loss = xent_loss(logits, labels, self.offset, self.temperature)
        elif self.kind == "ce":
            loss = F.cross_entropy(logits, labels)
        else:
            loss = F.multi_margin_loss(logits, labels, margin=self.margin)
        if self.cr_gamma:
            radii = label_radii(model, logits, labels, features=features, lipschitz=lipschitz)
            loss = loss - self.cr_gamma * F.relu(radii).mean()
        if self.curvature_beta:
            loss = loss + self.curvature_beta * rule_of(model).penalty(model, labels)
        return loss
