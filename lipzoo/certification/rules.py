"""One :class:`HeadRule` per head rule: everything the certifier, training, the audit and the model cards need.

The certifier knows head rules, never families. A model names its rule in ``model.head_rule`` (derived from its
head: :func:`lipzoo.layers.heads.head_rule_of`); :func:`head_rule` looks the rule up. Each rule states

* its **certified map** (:meth:`HeadRule.certified_output`): ``x -> logits`` when the model's proven bound
  ``L = model.lipschitz_bound()`` covers the whole network (``"lipschitz"``), ``x -> forward_features(x)`` when the
  head is certified from its own weights (``"lln"``, ``"mlp_curvature"``);
* its **margin kernel** (:meth:`HeadRule.margins`): the radius of a given class for ``L = 1``, differentiable (the
  training signal, on the labels), and :meth:`HeadRule.radii`, the certified radius of the prediction computed by
  the *same* kernel in float64 with the rounding slack subtracted from every gap, clamped at 0;
* its **rounding slack** (:meth:`HeadRule.slack`, :func:`~lipzoo.certification.margins.rounding_slack`);
* its radius formula as card prose (:attr:`HeadRule.card_text`).

Radius of the prediction ``t = argmax z`` (divide by ``L``):

* ``"lipschitz"``: ``(z_t - z_2nd) / sqrt(2)``;
* ``"lln"``: ``min_{j != t} (z_t - z_j) / ||w_t - w_j||`` over **all** classes, ``w`` the normalised weight the
  forward uses (``head.normalized_weight()``);
* ``"mlp_curvature"``: the curvature radius of :mod:`lipzoo.certification.mlp`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from ..layers.heads import bound_covers_head
from .margins import lipschitz_margins, lln_margins, lln_pair_distances, rounding_slack
from .mlp import MLPParams, curvature_penalty, mlp_gaps_and_grads, mlp_margins, mlp_radii

__all__ = ["HeadRule", "HEAD_RULES", "head_rule", "rule_of"]


class HeadRule:
    """A head rule (stateless; one instance per rule in :data:`HEAD_RULES`)."""

    name: ClassVar[str]
    card_text: ClassVar[str]
    # the training margin needs the head's input (``features``), not only the logits
    needs_features: ClassVar[bool] = False

    @property
    def covers_head(self) -> bool:
        """True when ``model.lipschitz_bound()`` is the whole network's (the head is part of the certified map)."""
        return bound_covers_head(self.name)

    @property
    def certified_map_name(self) -> str:
        return "logits" if self.covers_head else "features"

    def logits_and_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, the head's input or ``None`` when the rule does not use it) of one forward."""
        f = model.forward_features(x)
        return model.forward_head(f), f

    def certified_output(self, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map whose Lipschitz constant ``model.lipschitz_bound()`` bounds, flattened per sample."""
        if self.covers_head:
            return lambda x: model(x).flatten(1)
        return lambda x: model.forward_features(x).flatten(1)

    def slack(self, logits: torch.Tensor, features: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample rounding slack (float64) subtracted from every gap the certifier computes."""
        return rounding_slack(logits, features, dtype=dtype)

    def margins(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover - per rule
        """Differentiable radius of class ``labels`` for ``L = 1`` (<= 0 when it is not the top class); no slack."""
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> Any:
        """The constants of the rule for one certify call (float64, CPU), computed once."""
        return None

    def radii(self, state: Any, logits: torch.Tensor, features: torch.Tensor | None, pred: torch.Tensor,
              slack: torch.Tensor) -> torch.Tensor:  # pragma: no cover - per rule
        """Certified radius of ``pred`` for ``L = 1`` from float64 CPU ``logits``/``features``: the margin kernel
        with ``slack`` subtracted from every gap, clamped at 0."""
        raise NotImplementedError

    def penalty(self, model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
        """A training regulariser of the rule (0 unless the rule defines one)."""
        return torch.zeros((), device=labels.device)


class LipschitzRule(HeadRule):
    """The whole network is ``L``-Lipschitz: radius ``(z_t - z_2nd) / (sqrt(2) L)``."""

    name = "lipschitz"
    card_text = "1-Lipschitz head: (z_top - z_second) / (sqrt(2) L)"

    def logits_and_features(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model(x), None

    def margins(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        return lipschitz_margins(logits, labels)

    def radii(self, state: Any, logits: torch.Tensor, features: torch.Tensor | None, pred: torch.Tensor,
              slack: torch.Tensor) -> torch.Tensor:
        return lipschitz_margins(logits, pred, slack).clamp_min(0)


class LLNRule(HeadRule):
    """Row-normalised last layer on an ``L_body``-Lipschitz body: the pairwise rule over all classes."""

    name = "lln"
    card_text = "LLN head: min over all classes j != top of (z_top - z_j) / (||w_top - w_j|| L)"

    @staticmethod
    def normalized_weight(model: nn.Module) -> torch.Tensor:
        head = model.get_classifier()
        fn = getattr(head, "normalized_weight", None)
        if not callable(fn):
            raise TypeError(f"the 'lln' rule needs a head with normalized_weight(), got {type(head).__name__}")
        return fn()

    def margins(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        w = self.normalized_weight(model)
        return lln_margins(logits, labels, w, lln_pair_distances(w.to(logits.dtype)))

    def prepare(self, model: nn.Module) -> torch.Tensor:
        """Exact pair distances ``||w_t - w_j||`` (C, C) of the weight the forward uses, cast exactly to float64."""
        with torch.no_grad():
            w = self.normalized_weight(model).detach().double().cpu()
        return torch.stack([(w[t] - w).norm(dim=1) for t in range(w.shape[0])])

    def radii(self, state: torch.Tensor, logits: torch.Tensor, features: torch.Tensor | None, pred: torch.Tensor,
              slack: torch.Tensor) -> torch.Tensor:
        return lln_margins(logits, pred, None, distances=state, slack=slack).clamp_min(0)


class MLPCurvatureRule(HeadRule):
    """Curvature-bounded MLP head (Singla et al., NeurIPS'22): see :mod:`lipzoo.certification.mlp`."""

    name = "mlp_curvature"
    card_text = "curvature-bounded MLP head (Singla et al., NeurIPS 2022), divided by L"
    needs_features = True

    def margins(self, model: nn.Module, logits: torch.Tensor, labels: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            raise ValueError("the 'mlp_curvature' head rule needs the head's input: label_radii(..., features=f)")
        return mlp_margins(features, labels, model.get_classifier())

    def prepare(self, model: nn.Module) -> tuple[nn.Module, MLPParams, torch.Tensor]:
        """(head, its parameters in float64 on the CPU, ``||w2_t - w2_j||_1`` (C, C) for the threshold term)."""
        head = model.get_classifier()
        p = MLPParams.of(head, torch.float64)
        p = MLPParams(p.w1.cpu(), p.b1.cpu(), p.w2.cpu(), p.b2.cpu(), p.beta, p.threshold)
        u1 = torch.stack([(p.w2[t] - p.w2).abs().sum(dim=1) for t in range(p.w2.shape[0])])
        return head, p, u1

    def radii(self, state: tuple[nn.Module, MLPParams, torch.Tensor], logits: torch.Tensor,
              features: torch.Tensor | None, pred: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
        head, p, u1 = state
        gaps, gnorm, _ = mlp_gaps_and_grads(features, pred, p)
        # gaps of the smooth softplus; the head's thresholded one differs by <= log1p(exp(-thr))/beta per unit
        thr = _threshold_error(p)
        gaps = gaps - slack[:, None] - 2 * thr * u1[pred]
        return mlp_radii(gaps, gnorm, pred, head).clamp_min(0)

    def penalty(self, model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
        return curvature_penalty(model.get_classifier(), labels)


def _threshold_error(p: MLPParams) -> float:
    """Per unit of ``||w2_t - w2_j||_1``, the largest difference of the thresholded and the smooth softplus."""
    return math.log1p(math.exp(-p.threshold)) / p.beta


HEAD_RULES: dict[str, HeadRule] = {r.name: r for r in (LipschitzRule(), LLNRule(), MLPCurvatureRule())}


def head_rule(name: str) -> HeadRule:
    """The :class:`HeadRule` called ``name``; ``ValueError`` for an unknown name."""
    try:
        return HEAD_RULES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown head rule {name!r}; expected one of {tuple(HEAD_RULES)}") from None


def rule_of(model: nn.Module) -> HeadRule:
    """The rule of ``model`` (``model.head_rule``, ``"lipschitz"`` when it names none)."""
    return head_rule(getattr(model, "head_rule", "lipschitz"))
