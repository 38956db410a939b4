"""The shared certifier: certified l2 radii, certified accuracy and the claims record.

The certifier knows *head rules*, never families: one :class:`~lipzoo.certification.rules.HeadRule` per rule
(``"lipschitz"``, ``"lln"``, ``"mlp_curvature"``; :func:`head_rule` looks one up) states the certified map, the
differentiable margin used in training, the radius computed from the same margin kernel, and the rounding slack.
It reads ``model.head_rule`` (derived from the model's head), ``model.lipschitz_bound()`` (a proven l2 bound: of
the whole network for ``"lipschitz"``, of ``x -> forward_features(x)`` otherwise) and, for the other rules,
``model.get_classifier()``.

Modules: :mod:`~.rules` (the head rules), :mod:`~.margins` (Lipschitz and LLN kernels, rounding slack),
:mod:`~.mlp` (the curvature rule), :mod:`~.driver` (``certify``, ``certified_radius``, ``label_radii`` ...),
:mod:`~.inputs` (what is accepted), :mod:`~.result` (``CertificationResult``), :mod:`~.eps`, :mod:`~.plots`.
``lipzoo.certify`` is :func:`certify`.
"""
from __future__ import annotations

from .driver import certified_radius, certify, certify_dataset, label_radii, mlp_curvature_penalty
from .eps import DEFAULT_EPS, eps_label, parse_eps
from .inputs import IMAGE_RANGE_TOLERANCE, check_images
from .margins import SLACK_ULPS, lipschitz_margins, lln_margins, lln_pair_distances, rounding_slack
from .mlp import lambda_max_upper, mlp_curvature_bounds, mlp_curvature_estimate, mlp_margins, mlp_radii
from .plots import plot_certified_accuracy
from .result import CERTIFIER_VERSION, CertificationResult
from .rules import HEAD_RULES, HeadRule, head_rule, rule_of

__all__ = [
    "CERTIFIER_VERSION", "DEFAULT_EPS", "SLACK_ULPS", "IMAGE_RANGE_TOLERANCE", "CertificationResult", "HeadRule",
    "HEAD_RULES", "head_rule", "rule_of", "certify", "certify_dataset", "certified_radius", "check_images",
    "eps_label", "parse_eps", "rounding_slack", "lipschitz_margins", "lln_margins", "lln_pair_distances",
    "mlp_margins", "mlp_curvature_bounds", "mlp_radii", "lambda_max_upper", "mlp_curvature_estimate", "label_radii",
    "mlp_curvature_penalty", "plot_certified_accuracy",
]
