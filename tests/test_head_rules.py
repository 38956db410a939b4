"""One definition of each head rule (issue 21): the training margin and the certified radius come from the same
kernel, a model's rule is named by its head, and ``lipzoo.certify``/``audit``/``verify`` are plain functions."""
from __future__ import annotations

import inspect
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lipzoo
from lipzoo.certification import (HEAD_RULES, certified_radius, head_rule, label_radii, mlp_curvature_bounds,
                                  mlp_margins)
from lipzoo.layers.base import LipschitzModule
from lipzoo.layers.heads import LLN, MLPHead
from lipzoo.models._base import LipschitzClassifier

torch.set_num_threads(1)
U64 = torch.finfo(torch.float64).eps
SLACK_ULPS = 1024.0  # the certifier's documented rounding rule: 1024 ulps of the activations' scale


class Scaled(LipschitzModule):
    """``x -> scale * Q x`` with ``Q`` orthogonal: exactly ``scale``-Lipschitz."""

    def __init__(self, d: int, scale: float, seed: int = 0):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        self.register_buffer("q", q)
        self.scale = scale

    def forward(self, x):
        return self.scale * F.linear(x.flatten(1), self.q.to(x.dtype))

    def lipschitz_bound(self):
        return self.scale


class Rows(LipschitzModule):
    """The first ``c`` coordinates (orthonormal rows): 1-Lipschitz, no rule of its own."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x.flatten(1)[:, : self.c]

    def lipschitz_bound(self):
        return 1.0


class Net(LipschitzClassifier):
    """A body of known bound ``scale`` and any head; no ``head_rule`` of its own (it is derived from the head)."""

    input_range = None

    def __init__(self, head: nn.Module, d: int = 6, scale: float = 1.5, num_classes: int = 4):
        super().__init__()
        self.normalize, self.features, self.head = nn.Identity(), nn.Sequential(Scaled(d, scale)), head
        self.num_classes = num_classes


def _heads(d: int = 6, c: int = 4) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"lipschitz": Rows(c), "lln": LLN(d, c), "mlp_curvature": MLPHead(d, c, num_hidden=8, init_iters=0)}


def _batch(d: int = 6, n: int = 32) -> torch.Tensor:
    return torch.randn(n, d, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# ------------------------------------------------------------------------ a model's rule is named by its head
@pytest.mark.parametrize("name", ["lipschitz", "lln", "mlp_curvature"])
def test_head_rule_is_derived_from_the_head(name):
    model = Net(_heads()[name])
    assert model.head_rule == name
    # the stated bound covers the head only when the head has no rule of its own
    assert model.lipschitz_bound() == pytest.approx(1.5)
    assert [n for n, _ in model.layer_bounds()][-1] == ("head" if name == "lipschitz" else "features.0")


def test_no_model_class_states_its_head_rule_by_hand():
    import lipzoo.models  # noqa: F401  (registers every family)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    stated = [c.__qualname__ for c in subclasses(LipschitzClassifier)
              if c.__module__.startswith("lipzoo.") and "head_rule" in vars(c)]
    assert not stated, f"derive head_rule from the head instead: {stated}"


def test_every_head_layer_names_a_known_rule_and_unknown_names_are_refused():
    assert set(HEAD_RULES) == {"lipschitz", "lln", "mlp_curvature"}
    assert head_rule(LLN.head_rule).name == "lln" and head_rule(MLPHead.head_rule).name == "mlp_curvature"
    with pytest.raises(ValueError, match="unknown head rule"):
        head_rule("lnl")


# ------------------------------------------------ training margin and certified radius: one kernel per rule
def _by_hand(name: str, model: Net, z: torch.Tensor, f: torch.Tensor, pred: torch.Tensor,
             slack: torch.Tensor) -> torch.Tensor:
    """The documented radius (L = 1) of each prediction, written out sample by sample."""
    out = []
    for n in range(len(z)):
        t = int(pred[n])
        gaps = [float(z[n, t] - z[n, j]) - float(slack[n]) for j in range(z.shape[1]) if j != t]
        if name == "lipschitz":
            out.append(max(min(gaps), 0.0) / math.sqrt(2.0))
        else:
            w = model.head.normalized_weight().detach().double()
            dist = [float((w[t] - w[j]).norm()) for j in range(z.shape[1]) if j != t]
            out.append(max(min(g / d for g, d in zip(gaps, dist)), 0.0))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("name", ["lipschitz", "lln"])
def test_certified_radius_times_bound_is_the_margin_less_the_slack(name):
    model = Net(_heads()[name]).double()
    x = _batch()
    with torch.no_grad():
        f = model.forward_features(x)
        z = model.forward_head(f)
    pred = z.argmax(1)
    scale = z.norm(dim=1).clamp_min(1.0)
    if name != "lipschitz":
        scale = torch.maximum(scale, f.flatten(1).norm(dim=1))
    slack = SLACK_ULPS * U64 * scale
    radius = certified_radius(model, x, dtype=torch.float64)
    bound = model.lipschitz_bound()
    torch.testing.assert_close(radius * bound, _by_hand(name, model, z, f, pred, slack), rtol=1e-12, atol=1e-15)
    # the training margin is the same kernel without slack: above the certified radius by at most the slack
    margin = label_radii(model, z, pred, features=f.flatten(1))
    norm_factor = math.sqrt(2.0) if name == "lipschitz" else 1.0
    assert (margin >= radius * bound - 1e-15).all()
    torch.testing.assert_close(margin, _by_hand(name, model, z, f, pred, torch.zeros_like(slack)), rtol=1e-9,
                               atol=1e-12)
    if name == "lipschitz":  # one gap: the difference is exactly the slack over the norm factor
        torch.testing.assert_close((margin - radius * bound) * norm_factor, slack, rtol=1e-2, atol=1e-15)


def test_mlp_rule_certifies_with_its_training_margin_at_the_proven_curvature():
    model = Net(_heads()["mlp_curvature"]).double()
    x = _batch()
    with torch.no_grad():
        f = model.forward_features(x).flatten(1)
    pred = model.forward_head(f).argmax(1)
    radius = certified_radius(model, x, dtype=torch.float64)
    margin = mlp_margins(f, pred, model.head, curvature=mlp_curvature_bounds(model.head))
    # the certifier subtracts a slack of ~1e-13 and the softplus threshold term (~4e-9 per unit of ||w2_t - w2_j||_1)
    assert (radius * model.lipschitz_bound() <= margin.clamp_min(0) + 1e-15).all()
    torch.testing.assert_close(radius * model.lipschitz_bound(), margin.clamp_min(0), rtol=0, atol=1e-6)
    assert (radius > 0).sum() >= len(x) // 2


@pytest.mark.parametrize("name", ["lipschitz", "lln", "mlp_curvature"])
def test_rule_radii_with_zero_slack_equal_the_training_margins(name):
    model = Net(_heads()[name]).double()
    rule = head_rule(name)
    with torch.no_grad():
        z, f = rule.logits_and_features(model, _batch())
    f = None if f is None else f.flatten(1)
    pred = z.argmax(1)
    state = rule.prepare(model)
    r0 = rule.radii(state, z, f, pred, torch.zeros(len(z), dtype=torch.float64))
    if name == "mlp_curvature":
        m = mlp_margins(f, pred, model.head, curvature=mlp_curvature_bounds(model.head))
        torch.testing.assert_close(r0, m.clamp_min(0), rtol=0, atol=1e-6)
    else:
        torch.testing.assert_close(r0, rule.margins(model, z, pred, f).clamp_min(0), rtol=1e-12, atol=1e-15)


# -------------------------------------------------------------------------------- plain functions, plain modules
def test_certify_audit_and_verify_are_plain_functions_in_plain_modules():
    for name, module in (("certify", "lipzoo.certification"), ("audit", "lipzoo.auditing"),
                         ("verify", "lipzoo.verification")):
        fn = getattr(lipzoo, name)
        assert inspect.isfunction(fn), name
        assert fn.__module__.startswith(module)
        assert type(sys.modules[module]) is types.ModuleType
        assert f"lipzoo.{name}" not in sys.modules
        assert inspect.isfunction(getattr(lipzoo, name))  # still the function once the module is imported
