"""The shared certifier on hand-built models whose radii are known analytically, for every head rule."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipzoo import certification as C
from lipzoo.certification import mlp as M
from lipzoo.certification.margins import own_class_mask
from lipzoo.layers.activations import MaxMin
from lipzoo.layers.base import LipschitzModule
from lipzoo.layers.heads import LLN, MLPHead
from lipzoo.models._base import LipschitzClassifier

torch.set_num_threads(1)
SQRT2 = math.sqrt(2.0)


# ------------------------------------------------------------------------------------------------- toys
def orthogonal(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q


class ScaledOrthogonal(LipschitzModule):
    """``x -> scale * Q (flatten(x) - center)``: exactly ``scale``-Lipschitz."""

    def __init__(self, q: torch.Tensor, scale: float = 1.0, center: float = 0.0):
        super().__init__()
        self.register_buffer("q", q.float())
        self.scale, self.center = scale, center

    def forward(self, x):
        return self.scale * F.linear(x.flatten(1) - self.center, self.q.to(x.dtype))

    def lipschitz_bound(self):
        return self.scale


class OrthoRows(LipschitzModule):
    """Linear head with orthonormal rows (the first C rows of the identity): 1-Lipschitz."""

    def __init__(self, d: int, c: int):
        super().__init__()
        self.register_buffer("w", torch.eye(d)[:c].clone())

    def forward(self, x):
        return F.linear(x.flatten(1), self.w.to(x.dtype))

    def lipschitz_bound(self):
        return 1.0


class ToyLipschitz(LipschitzClassifier):
    head_rule = "lipschitz"
    input_range = None  # toy maps of real vectors, not images

    def __init__(self, body: nn.Module, head: nn.Module, num_classes: int):
        super().__init__()
        self.normalize, self.features, self.head = nn.Identity(), nn.Sequential(body), head
        self.num_classes = num_classes


class ToyLLN(ToyLipschitz):
    head_rule = "lln"


class ToyMLP(ToyLipschitz):
    head_rule = "mlp_curvature"


def img(v, shape=None) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=torch.float32)
    return v.view(1, len(v), 1, 1) if shape is None else v.view(1, *shape)


# ------------------------------------------------------------------------------------------ eps labels
def test_eps_labels():
    assert C.eps_label(36 / 255) == "36/255"
    assert C.eps_label(1.0) == "255/255"
    assert C.eps_label(0.5) == "0.5"
    assert C.parse_eps("108/255") == 108 / 255
    assert C.parse_eps("0.5") == 0.5
    for e in C.DEFAULT_EPS:
        assert C.parse_eps(C.eps_label(e)) == pytest.approx(e, abs=1e-15)


# ------------------------------------------------------------------------------------- 'lipschitz' rule
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_lipschitz_rule_is_exact_for_orthogonal_rows(scale):
    d, c = 4, 3
    q = orthogonal(d)
    model = ToyLipschitz(ScaledOrthogonal(q, scale), OrthoRows(d, c), c)
    v = torch.tensor([0.9, 0.5, 0.2, 0.1], dtype=torch.float64)
    x = img((q.T @ v).float())  # Q x = v, logits = scale * v[:3] = scale * (0.9, 0.5, 0.2)
    expected = 0.4 * scale / (SQRT2 * scale)  # (z_top - z_2nd) / (sqrt2 L), L = scale
    assert model.lipschitz_bound() == scale
    r64 = C.certified_radius(model, x, dtype=torch.float64)
    assert r64.item() == pytest.approx(expected, rel=1e-6)  # x itself is float32
    r32 = C.certified_radius(model, x)
    assert expected * (1 - 1e-3) < r32.item() <= expected  # float32: reduced by the stated slack only
    # the boundary z_0 = z_1 is exactly at this distance: (q0 - q1)/sqrt2 direction in input space
    direction = (q.T @ torch.tensor([-1.0, 1.0, 0, 0], dtype=torch.float64) / SQRT2).float().view_as(x)
    with torch.no_grad():
        assert model(x + expected * 0.999 * direction).argmax().item() == 0
        assert model(x + expected * 1.001 * direction).argmax().item() == 1


def test_lipschitz_margins_function():
    z = torch.tensor([[3.0, 1.0, 2.5], [0.0, 1.0, -1.0]])
    y = torch.tensor([0, 0])
    m = C.lipschitz_margins(z, y)
    assert torch.allclose(m, torch.tensor([0.5 / SQRT2, -1.0 / SQRT2]))


# -------------------------------------------------------------------------------------------- 'lln' rule
def test_lln_rule_with_piecewise_linear_body():
    """MaxMin after an orthogonal map, LLN head: radius = min_j (z_t - z_j) / ||w_t - w_j|| by hand."""
    d = 4
    q = orthogonal(d, seed=1)
    body = nn.Sequential(ScaledOrthogonal(q), nn.Unflatten(1, (d, 1, 1)), MaxMin("halves"), nn.Flatten())
    body.lipschitz_bound = lambda: 1.0
    head = LLN(d, 3, bias=True)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0, 0, 0], [0, 3.0, 0, 0], [1.0, 0, 1.0, 0]]))
        head.bias.zero_()
    model = ToyLLN(body, head, 3)
    v = torch.tensor([0.8, 0.1, 0.3, 0.6], dtype=torch.float64)  # MaxMin pairs (0,2), (1,3) -> (.8, .6, .3, .1)
    x = img((q.T @ v).float())
    # normalised rows: e0, e1, (e0 + e2)/sqrt2 -> z = (0.8, 0.6, 1.1/sqrt2 = 0.7778)
    z = torch.tensor([0.8, 0.6, 1.1 / SQRT2])
    w = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1 / SQRT2, 0, 1 / SQRT2, 0]])
    with torch.no_grad():
        assert torch.allclose(model(x)[0], z, atol=1e-6)
    expected = min((z[0] - z[1]) / (w[0] - w[1]).norm(), (z[0] - z[2]) / (w[0] - w[2]).norm()).item()
    r = C.certified_radius(model, x, dtype=torch.float64)
    assert r.item() == pytest.approx(expected, rel=1e-6)
    scale = max(1.0, z.norm().item(), v.norm().item())  # the stated rule: max(1, ||z||, ||f||)
    slack = C.SLACK_ULPS * torch.finfo(torch.float32).eps * scale / (w[0] - w[2]).norm().item()
    assert expected - slack - 1e-6 < C.certified_radius(model, x).item() <= expected


def _cifar100_trap() -> tuple[ToyLLN, torch.Tensor, int, torch.Tensor]:
    """100 classes where the binding class is ranked 99th by logit: a top-9 certificate is 4x too large."""
    d, c, t, far = 108, 100, 0, 99
    rows = [torch.zeros(d) for _ in range(c)]
    rows[t][0] = 1.0
    rows[far][0] = -1.0
    k = 0
    for j in range(1, c - 1):  # 98 "near" classes: e0 + 0.05 (+-e_i), ||w_t - w_j|| ~ 0.05
        rows[j][0] = 1.0
        rows[j][1 + k // 2] = 0.05 * (1 if k % 2 == 0 else -1)
        k += 1
    weight = torch.stack(rows)
    bias = torch.full((c,), 0.85)
    bias[t], bias[far] = 1.0, 0.0
    bias[1:10] = 0.9  # the 9 highest other logits: gap 0.1, distance ~0.05 -> ratio ~2
    head = LLN(d, c, bias=True)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    model = ToyLLN(ScaledOrthogonal(torch.eye(d, dtype=torch.float64), center=0.6), head, c)
    x = torch.full((1, 3, 6, 6), 0.6)  # features 0 -> logits = bias
    return model, x, far, head.normalized_weight().detach()


def test_lln_uses_all_classes_cifar100():
    model, x, far, w = _cifar100_trap()
    z = model(x).detach()[0]
    assert z.argmax().item() == 0
    true_radius = (1.0 - 0.0) / 2.0  # the far class: gap 1, ||w_t - w_far|| = 2 (a hyperplane: exact distance)
    r = C.certified_radius(model, x, dtype=torch.float64).item()
    assert r == pytest.approx(true_radius, rel=1e-6)  # the image is float32
    # a top-9 certificate (improved_l2_robustness's num_other=9) would claim ~2.0: unsound here
    others = z.clone()
    others[0] = -math.inf
    top9 = others.topk(9).indices
    top9_radius = min(((z[0] - z[j]) / (w[0] - w[j]).norm()).item() for j in top9)
    assert top9_radius > 3.5 * true_radius
    # and the prediction really changes just beyond the true radius, towards the far class
    direction = torch.zeros_like(x).flatten()
    direction[0] = -1.0
    with torch.no_grad():
        assert model(x + 0.499 * direction.view_as(x)).argmax().item() == 0
        assert model(x + 0.501 * direction.view_as(x)).argmax().item() == far


def test_lln_margins_and_distances():
    g = torch.Generator().manual_seed(0)
    w = F.normalize(torch.randn(7, 5, generator=g, dtype=torch.float64), dim=1)
    direct = (w[:, None] - w[None]).norm(dim=2)
    assert torch.allclose(C.lln_pair_distances(w), direct, atol=1e-7)
    z = torch.randn(6, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (6,), generator=g)
    expected = torch.tensor([min((z[i, y[i]] - z[i, j]) / direct[y[i], j] for j in range(7) if j != y[i])
                             for i in range(6)], dtype=torch.float64)
    assert torch.allclose(C.lln_margins(z, y, w), expected, atol=1e-7)


# -------------------------------------------------------------------------------- 'mlp_curvature' rule
def _mlp_toy(d: int, h: int, c: int, seed: int = 0, scale: float = 1.0) -> ToyMLP:
    torch.manual_seed(seed)
    head = MLPHead(d, c, num_hidden=h, init_iters=0)
    return ToyMLP(ScaledOrthogonal(orthogonal(d, seed), scale), head, c)


def test_mlp_rule_closed_form():
    """W1 = I, b1 = 0, w2 = I, b2 = (0.5, 0) at f = 0: D = 0.5, G = ||(1, -1)/2||, K = 1/4."""
    model = _mlp_toy(2, 2, 2)
    with torch.no_grad():
        model.head.fc1.weight.copy_(torch.eye(2))
        model.head.fc1.bias.zero_()
        model.head.fc2.weight.copy_(torch.eye(2))
        model.head.fc2.bias.copy_(torch.tensor([0.5, 0.0]))
    model.features[0].q.copy_(torch.eye(2))
    gap, grad, curv = 0.5, math.sqrt(0.5), 0.25
    expected = (math.sqrt(grad ** 2 + 2 * curv * gap) - grad) / curv  # 0.6357
    k = C.mlp_curvature_bounds(model.head)
    assert k[0, 1].item() == pytest.approx(0.25, rel=1e-9)
    x = img([0.0, 0.0])
    r = C.certified_radius(model, x, dtype=torch.float64).item()
    assert r == pytest.approx(expected, rel=1e-7)
    # not absurdly loose: sp(-a) - sp(a) = -a, so f = (-a, a) reaches the boundary at a = 0.5
    true_upper = 0.5 * SQRT2
    with torch.no_grad():
        assert model(img([-0.501, 0.501])).argmax().item() == 1
    assert expected <= true_upper and expected > 0.85 * true_upper
    # with a body of Lipschitz constant 2 the input-space radius halves
    model.features[0].scale = 2.0
    assert C.certified_radius(model, x, dtype=torch.float64).item() == pytest.approx(expected / 2, rel=1e-7)


def test_mlp_curvature_bound_dominates_hessian():
    model = _mlp_toy(5, 7, 4, seed=3)
    head = model.head.double()
    k = C.mlp_curvature_bounds(head)
    w1, b1, w2 = head.fc1.weight.detach(), head.fc1.bias.detach(), head.fc2.weight.detach()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        f = 3 * torch.randn(5, generator=g, dtype=torch.float64)
        s2 = torch.sigmoid(w1 @ f + b1) * (1 - torch.sigmoid(w1 @ f + b1))  # beta = 1
        for t in range(4):
            for j in range(4):
                if t != j:
                    hess = w1.T @ torch.diag((w2[t] - w2[j]) * s2) @ w1
                    lam_min = torch.linalg.eigvalsh(hess)[0].item()
                    assert -lam_min <= k[t, j].item() + 1e-12
    # never above the NeurIPS'22 |u| bound
    for t in range(4):
        for j in range(4):
            if t != j:
                a = (w2[t] - w2[j]).abs()
                assert k[t, j] <= 0.25 * torch.linalg.eigvalsh(w1.T @ torch.diag(a) @ w1)[-1] * (1 + 1e-9)


@pytest.mark.parametrize("n, clustered", [(200, False), (300, True)])
def test_lambda_max_upper_is_a_tight_upper_bound(n, clustered):
    g = torch.Generator().manual_seed(n)
    q = orthogonal(n, seed=n)
    spectrum = torch.rand(n, generator=g, dtype=torch.float64)
    spectrum[0] = 2.0
    if clustered:
        spectrum[1] = 2.0 - 1e-7  # a nearly double top eigenvalue: Lanczos converges slowly
    a = q @ torch.diag(spectrum) @ q.T
    a = (a + a.T) / 2
    ub = C.lambda_max_upper(a)
    assert 2.0 <= ub <= 2.0 * (1 + 1e-6)


def _pgd_feature_space(model: ToyMLP, x: torch.Tensor, radius: torch.Tensor, pred: torch.Tensor,
                       steps: int = 200, restarts: int = 3) -> torch.Tensor:
    """True where PGD-l2 within ``radius`` (per sample) changes the prediction."""
    flipped = torch.zeros(len(x), dtype=torch.bool)
    g = torch.Generator().manual_seed(0)
    r = radius.view(-1, 1).to(x.dtype)
    for restart in range(restarts):
        delta = torch.randn(x.shape, generator=g, dtype=x.dtype).flatten(1)
        delta = delta / delta.norm(dim=1, keepdim=True) * r * (0 if restart == 0 else torch.rand(len(x), 1, generator=g, dtype=x.dtype))
        for _ in range(steps):
            delta.requires_grad_(True)
            z = model(x + delta.view_as(x))
            flipped |= (z.argmax(1) != pred).detach()
            other = z.masked_fill(F.one_hot(pred, z.shape[1]).bool(), -1e9).max(1).values
            loss = (other - z.gather(1, pred[:, None]).squeeze(1)).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = delta + 2.5 * r / steps * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
                delta = delta * torch.clamp(r * (1 - 1e-6) / delta.norm(dim=1, keepdim=True).clamp_min(1e-30), max=1.0)
        with torch.no_grad():
            flipped |= model(x + delta.view_as(x)).argmax(1) != pred
    return flipped


def test_mlp_pgd_never_crosses_within_certified_radius():
    model = _mlp_toy(6, 16, 5, seed=1).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 6, 1, 1, generator=g, dtype=torch.float64)
    r, pred = C.certified_radius(model, x, dtype=torch.float64, return_predictions=True)
    keep = r > 1e-3
    assert keep.sum() >= 20
    flipped = _pgd_feature_space(model, x[keep], r[keep], pred[keep])
    assert not flipped.any()
    # and the certificate is not absurdly loose: flips exist at 3x the radius for most points
    flipped3 = _pgd_feature_space(model, x[keep], 3 * r[keep], pred[keep], steps=100, restarts=1)
    assert flipped3.float().mean() > 0.5


def test_mlp_estimate_converges_to_bound_and_label_radii():
    model = _mlp_toy(6, 10, 4, seed=2)
    exact = C.mlp_curvature_bounds(model.head)
    est = C.mlp_curvature_estimate(model.head, iters=300).detach().double()
    assert torch.allclose(est, exact, rtol=1e-4, atol=1e-8)
    x = torch.randn(16, 6, 1, 1)
    with torch.no_grad():
        f = model.forward_features(x)
        logits = model.forward_head(f)
    pred = logits.argmax(1)
    lr = C.label_radii(model, logits, pred, features=f)
    cr = C.certified_radius(model, x, dtype=torch.float64)  # (nearly) no slack, like label_radii
    assert torch.allclose(lr.double(), cr, rtol=1e-4, atol=1e-5)
    assert (C.certified_radius(model, x) <= cr).all()
    wrong = (pred + 1) % 4
    assert (C.label_radii(model, logits, wrong, features=f) <= 0).all()
    with pytest.raises(ValueError):
        C.label_radii(model, logits, pred)
    pen = C.mlp_curvature_penalty(model, pred)
    assert pen.requires_grad and pen.item() > 0


# ------------------------------------------------------------------------------------------- the result
def test_certify_accuracies_and_claims_record():
    d, c = 4, 3
    model = ToyLipschitz(ScaledOrthogonal(torch.eye(d, dtype=torch.float64)), OrthoRows(d, c), c)
    # gaps 0.1, 0.5, 2.0 -> radii gap/sqrt2 = 0.0707, 0.3536, 1.414 ; the last sample is misclassified
    x = torch.tensor([[0.2, 0.1, 0.0, 0], [0.5, 0.0, 0.0, 0], [2.0, 0.0, 0.0, 0], [0.0, 1.0, 0.0, 0]]).view(4, 4, 1, 1)
    y = torch.tensor([0, 0, 0, 0])
    model.train()
    res = C.certify(model, x, y, dtype=torch.float64)
    assert model.training  # mode restored
    assert res.n == 4 and res.clean_accuracy == 0.75
    assert torch.allclose(res.radii, torch.tensor([0.1, 0.5, 2.0, 0.0], dtype=torch.float64) / SQRT2)
    assert res.certified_accuracy == {36 / 255: 0.5, 72 / 255: 0.5, 108 / 255: 0.25, 1.0: 0.25}
    claims = res.to_claims(dataset="cifar10", split="test", subset="full")
    assert list(claims) == ["dataset", "split", "subset", "n", "clean_accuracy", "certified_accuracy", "eps",
                            "lipschitz_bound", "head_rule", "dtype", "certifier_version"]
    assert claims["certified_accuracy"] == {"36/255": 0.5, "72/255": 0.5, "108/255": 0.25, "255/255": 0.25}
    assert claims["eps"]["36/255"] == 36 / 255 and claims["dtype"] == "float64"
    assert claims["head_rule"] == "lipschitz" and claims["certifier_version"] == C.CERTIFIER_VERSION
    json.loads(res.to_json())
    # strict inequality: radius exactly eps is not certified
    res_eq = C.certify(model, x[1:2], y[1:2], eps=(0.5 / SQRT2,), dtype=torch.float64)
    assert res_eq.radii[0].item() <= 0.5 / SQRT2 and res_eq.certified_accuracy_at(0.5 / SQRT2) == 0.0


def test_certify_uint8_and_batches_match():
    d, c = 48, 10
    torch.manual_seed(0)
    head = LLN(d, c)
    model = ToyLLN(ScaledOrthogonal(orthogonal(d), center=0.5), head, c)
    x8 = torch.randint(0, 256, (37, 4, 4, 3), dtype=torch.uint8)
    y = torch.randint(0, c, (37,))
    a = C.certify(model, x8, y, batch_size=5)
    b = C.certify(model, x8.permute(0, 3, 1, 2).float() / 255, y, batch_size=100)
    assert torch.equal(a.predictions, b.predictions)
    assert torch.allclose(a.radii, b.radii, rtol=1e-5, atol=1e-7)
    c2 = C.certify_dataset(model, torch.utils.data.TensorDataset(x8.permute(0, 3, 1, 2).float() / 255, y),
                           batch_size=8, progress=False)
    assert torch.allclose(c2.radii, b.radii, rtol=1e-5, atol=1e-7)


def test_plot_certified_accuracy(tmp_path):
    radii = torch.tensor([0.0, 0.1, 0.5, 1.2])
    out = C.plot_certified_accuracy({"a": radii, "b": radii / 2}, tmp_path / "curve.png", title="toy")
    assert out.exists() and out.stat().st_size > 1000


# --------------------------------------------------------------------------------------------- real data
def test_certify_sll_xs_float32_close_to_float64():
    import lipzoo
    from lipzoo.data import CIFAR

    x, y = CIFAR("cifar10", "test").tensors(torch.arange(48).numpy())
    model = lipzoo.create_model("sll_xs")
    r32 = C.certify(model, x, y)
    r64 = C.certify(model, x, y, dtype=torch.float64)
    assert r32.head_rule == "lln" and 1.0 <= r32.lipschitz_bound < 1.0001
    assert next(model.parameters()).dtype == torch.float32  # the float64 run used a copy
    assert torch.equal(r32.predictions, r64.predictions)
    assert (r32.radii <= r64.radii + 1e-6).all()  # float32 pays the slack
    assert torch.allclose(r32.radii, r64.radii, atol=2e-3)


@pytest.mark.slow
def test_certify_full_cifar10_test_set():
    import lipzoo
    from lipzoo.data import CIFAR

    torch.set_num_threads(2)
    ds = CIFAR("cifar10", "test")
    model = lipzoo.create_model("sll_xs")
    start = time.perf_counter()
    res = C.certify_dataset(model, ds, progress=False)
    seconds = time.perf_counter() - start
    print(f"certified 10000 CIFAR-10 test images with sll_xs in {seconds:.1f} s")
    assert res.n == 10000
    acc = list(res.certified_accuracy.values())
    assert all(a >= b for a, b in zip(acc, acc[1:])) and res.clean_accuracy >= acc[0]


def test_package_level_functions_are_callable():
    import lipzoo

    model = ToyLipschitz(ScaledOrthogonal(torch.eye(4, dtype=torch.float64)), OrthoRows(4, 3), 3)
    x, y = torch.eye(4)[:3].view(3, 4, 1, 1), torch.tensor([0, 1, 2])
    for _ in range(2):  # first access goes through lipzoo.__getattr__, later ones find the submodule
        res = lipzoo.certify(model, x, y, dtype=torch.float64)
        assert res.clean_accuracy == 1.0 and res.radii[0].item() == pytest.approx(1 / SQRT2)
    assert callable(lipzoo.certification.label_radii) and callable(lipzoo.audit) and callable(lipzoo.verify)


def test_mlp_lazy_pairs_equal_all_pairs_on_a_100_class_head():
    """The certifier refines only the pairs that decide a minimum: same radii as with every exact pair bound,
    from far fewer eigenvalue problems; the cheap split bound dominates every exact pair bound."""
    torch.manual_seed(0)
    c, d, h = 100, 24, 40
    head = MLPHead(d, c, num_hidden=h, init_iters=0).double()
    feats = 2 * torch.randn(300, d, dtype=torch.float64)
    with torch.no_grad():
        pred = head(feats).argmax(1)
    p = M.MLPParams.of(head, torch.float64)
    gaps, gnorm, _ = M.mlp_gaps_and_grads(feats, pred, p)
    lazy = C.mlp_radii(gaps, gnorm, pred, head)
    bounds = M._curvature_bounds_of(head)
    n_exact = int((~torch.isnan(bounds.exact)).sum()) - c  # off-diagonal pairs computed
    assert 0 < n_exact < c * (c - 1) // 4
    full = C.mlp_curvature_bounds(head)  # every pair
    assert (bounds.split() >= full - 1e-12).all()
    rad = M._curvature_radius(gaps, gnorm, full[pred]).masked_fill(own_class_mask(pred, c), float("inf"))
    assert torch.equal(lazy, rad.min(dim=1).values)
    # the split bound alone is sound but looser: it never gives a larger radius
    split_rad = M._curvature_radius(gaps, gnorm, bounds.split()[pred]).masked_fill(own_class_mask(pred, c), float("inf"))
    assert (split_rad.min(dim=1).values <= lazy + 1e-15).all()
