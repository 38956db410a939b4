"""The independent audit: passes honest models, flags a layer whose declared bound is false."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lipzoo
from lipzoo.auditing import AuditWarning, audit, jacobian_norm
from lipzoo.layers.base import LipschitzModule

torch.set_num_threads(1)
SMALL = dict(n_probe=2, power_iters=8, pgd_steps=15, restarts=2, n_attack=8, pair_steps=5)


@pytest.fixture(scope="module")
def cifar_batch():
    from lipzoo.data import CIFAR

    return CIFAR("cifar10", "test").tensors(torch.arange(32).numpy())


class Amplify(LipschitzModule):
    """A deliberately broken layer: ``factor * inner(x)`` that still declares the inner layer's bound."""

    def __init__(self, inner: nn.Module, factor: float):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.factor * self.inner(x)

    def lipschitz_bound(self):
        return float(self.inner.lipschitz_bound())  # the lie


def test_jacobian_norm_of_a_linear_map_is_its_spectral_norm():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, 5, generator=g, dtype=torch.float64)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    est = jacobian_norm(lambda t: t @ a.T, x, iters=200)
    assert torch.allclose(est, torch.full((3,), torch.linalg.matrix_norm(a, 2).item(), dtype=torch.float64),
                          rtol=1e-6)


def test_audit_passes_sll_xs(cifar_batch):
    x, y = cifar_batch
    model = lipzoo.create_model("sll_xs")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p.requires_grad for p in model.parameters()]
    model.train()
    with warnings.catch_warnings():
        warnings.simplefilter("error", AuditWarning)
        report = audit(model, x, y, **SMALL)
    assert report.ok, report.summary()
    assert report.pgd["n_violations"] == 0
    assert all(c.ok for c in report.layers) and report.model_ok
    names = [c.name for c in report.layers]
    assert names[:2] == ["normalize", "features.0"] and len(names) >= len(model.layer_bounds())
    assert 0.5 < max(c.estimate for c in report.layers) <= 1 + 1e-4  # power iteration reaches ~1
    assert report.rounding["checked"] and report.rounding["worst_ratio"] < 1
    assert "AUDIT PASSED" in report.summary()
    assert report.to_dict()["ok"] is True
    # the model is untouched: same weights, still in train mode, still trainable
    assert model.training and [p.requires_grad for p in model.parameters()] == trainable
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_audit_flags_a_broken_layer(cifar_batch):
    x, y = cifar_batch
    model = lipzoo.create_model("sll_xs")
    model.features[3] = nn.Sequential(Amplify(model.features[3], 1.5))
    assert model.lipschitz_bound() < 1.001  # the declared bound did not notice
    with pytest.warns(AuditWarning, match="features.3"):
        report = audit(model, x, y, deep=True, **SMALL)
    assert not report.ok
    bad = {c.name for c in report.layers if not c.ok}
    assert bad == {"features.3", "features.3.0"}
    assert next(c for c in report.layers if c.name == "features.3").estimate > 1.3
    assert not report.model_ok and report.model_estimate > 1.0001
    assert "AUDIT FAILED" in report.summary() and "features.3" in report.summary()


def test_audit_flags_an_unsound_certificate():
    """A model that lies about its whole Lipschitz bound: PGD finds flips inside the 'certified' radius."""

    class Liar(LipschitzModule):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(12, 3)

        def forward(self, x):
            return 10 * self.lin(x.flatten(1))

        def lipschitz_bound(self):
            return 1e-3

    from lipzoo.models._base import LipschitzClassifier

    class Toy(LipschitzClassifier):
        head_rule = "lipschitz"

        def __init__(self):
            super().__init__()
            self.normalize, self.features, self.head = nn.Identity(), nn.Sequential(Liar()), nn.Identity()
            self.num_classes = 3

    torch.manual_seed(0)
    x = torch.rand(16, 3, 2, 2)
    with pytest.warns(AuditWarning):
        report = audit(Toy(), x, None, **SMALL)
    assert not report.ok and report.pgd["n_violations"] > 0


def test_audit_mlp_head_toy():
    """The curvature rule under attack: a 1-Lipschitz body (orthogonal map) and an MLP head."""
    from lipzoo.layers.heads import MLPHead
    from lipzoo.models._base import LipschitzClassifier

    class Orth(LipschitzModule):
        def __init__(self):
            super().__init__()
            q, _ = torch.linalg.qr(torch.randn(12, 12, generator=torch.Generator().manual_seed(0)))
            self.register_buffer("q", q)

        def forward(self, x):
            return 3 * (x.flatten(1) - 0.5) @ self.q.T

        def lipschitz_bound(self):
            return 3.0

    class Toy(LipschitzClassifier):
        head_rule = "mlp_curvature"

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.normalize, self.features = nn.Identity(), nn.Sequential(Orth())
            self.head, self.num_classes = MLPHead(12, 4, num_hidden=24), 4

    x = torch.rand(64, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", AuditWarning)
        report = audit(Toy(), x, None, n_probe=4, power_iters=30, pgd_steps=100, restarts=3, n_attack=32)
    assert report.ok and report.pgd["n_attacked"] >= 16 and report.pgd["n_violations"] == 0
    assert report.model_estimate == pytest.approx(3.0, rel=1e-3)  # the power iteration finds the exact constant
    assert report.pgd["closest_margin_ratio"] < 0.9  # the attack made progress
