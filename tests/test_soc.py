"""SOC family: reference fixtures, proven bounds, gradient-norm preservation, caches, registry, autocast.

Fixtures were recorded from the authors' unmodified code (shared/fixtures/reference/{soc,improved}); every
expected value below comes from them, from the papers' math, or from an independent computation (SVD, autograd).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import lipzoo  # noqa: F401  (registers the models in timm)
from lipzoo.convert import from_reference, load_checkpoint
from lipzoo.convert._soc import convert_state_dict
from lipzoo.layers.activations import HouseHolder, HouseHolder2, LipPool, MaxMin, PairMaxPool
from lipzoo.layers.heads import MLPHead, thresholded_softplus
from lipzoo.layers.soc import SOCConv2d, SOCHead, conv_exp, fantastic_four_norm_bound, skew_kernel
from lipzoo.models.soc import SOCLipConvNet

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
CASES = sorted(p for fam in ("soc", "improved") for p in (FIXTURES / fam).glob("*.json")) if FIXTURES.exists() else []
SLACK = 1 + 1e-6


def _case(path: Path):
    spec = json.loads(path.read_text())
    t = load_file(str(path.with_suffix(".safetensors")))
    state = {k[len("state."):]: v for k, v in t.items() if k.startswith("state.")}
    return spec, state, t


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ (a) fixtures
def test_fixture_cases_present():
    assert len([p for p in CASES if p.parent.name == "soc"]) == 11
    assert len([p for p in CASES if p.parent.name == "improved"]) == 12


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_fixture_eval(path: Path):
    spec, state, t = _case(path)
    module = from_reference(spec, state)  # float32-stored whole-model states are cast to spec['dtype']
    assert not module.training
    with torch.no_grad():
        out = module(t["input"])
    assert out.dtype == torch.float64 and out.shape == t["output_eval"].shape
    err = (out - t["output_eval"]).abs().max().item()
    assert err <= spec["suggested_tolerance"]["output_eval"]["float64_atol"], err


TRAIN_CASES = [p for p in CASES if "output_train" in load_file(str(p.with_suffix(".safetensors")))]


@pytest.mark.parametrize("path", TRAIN_CASES, ids=[f"{p.parent.name}/{p.stem}" for p in TRAIN_CASES])
def test_fixture_first_train_step(path: Path):
    spec, state, t = _case(path)
    tol = spec["suggested_tolerance"]
    module = from_reference(spec, state).train()
    with torch.no_grad():
        out = module(t["input"])
    err = (out - t["output_train"]).abs().max().item()
    assert err <= tol["output_train"]["float64_atol"], err
    # the recorded buffers after the step, mapped by the converter into a second module
    after = {k[len("state_after_train."):]: v for k, v in t.items() if k.startswith("state_after_train.")}
    assert after, "train fixtures record the updated power-iteration vectors"
    expected = from_reference(spec, {**state, **after}).state_dict()
    got, before = module.state_dict(), from_reference(spec, state).state_dict()
    changed = [k for k in expected if not torch.equal(expected[k], before[k])]
    assert changed, "the recorded step must change some buffers"
    err = max((got[k] - expected[k]).abs().max().item() for k in expected)
    assert err <= tol["state_after_train"]["float64_atol"], err


def _raw_image(t: dict, spec: dict) -> torch.Tensor:
    """Undo the SOC repo's data-pipeline normalisation of a fixture input (float64 mean/std)."""
    mean = torch.tensor((0.4914, 0.4822, 0.4465), dtype=torch.float64).view(1, 3, 1, 1)
    return t["input"] * 0.2507 + mean


@pytest.mark.parametrize("case,fmt,kwargs", [
    ("soc/lipconvnet5_maxmin_soc", "soc", dict(init_channels=4, activation="maxmin", head="soc")),
    ("soc/lipconvnet5_hh1_lln", "soc", dict(init_channels=2, activation="hh1", head="lln")),
    ("improved/lipconvnet5_maxmin_max_ortho", "soc-improved",
     dict(init_channels=4, version="improved", activation="maxmin", pooling="max", head="soc")),
    ("improved/lipconvnet5_maxmin_lip1_crcfull", "soc-improved",
     dict(init_channels=2, version="improved", activation="maxmin", pooling="lip1", head="mlp", num_hidden=64)),
])
def test_checkpoint_format_roundtrip(tmp_path, case, fmt, kwargs):
    """A DataParallel checkpoint of the authors' LipConvNet loads into a lipzoo model fed [0, 1] images."""
    spec, state, t = _case(FIXTURES / f"{case}.json")
    path = tmp_path / "ckpt.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    model = SOCLipConvNet(block_size=1, num_classes=10, **kwargs).double()
    load_checkpoint(model, path, checkpoint_format=fmt)
    x = _raw_image(t, spec) if fmt == "soc" else t["input"]
    with torch.no_grad():
        out = model.eval()(x)
    # the lipzoo normaliser holds float32(mean/std) where the repo's pipeline used decimals: ~1e-7 apart
    atol = 1e-9 if fmt == "soc-improved" else 1e-5
    assert (out - t["output_eval"]).abs().max().item() <= atol


def test_convert_state_dict_rejects_unknown_keys():
    model = SOCLipConvNet(block_size=1, init_channels=2)
    with pytest.raises(ValueError):
        convert_state_dict({"module.layer9.0.conv.bogus": torch.zeros(1)}, "soc", model)


# ------------------------------------------------------------------------------------------- (b) bounds
def _ratio(f, x, y):
    return ((f(x) - f(y)).norm() / (x - y).norm()).item()


def _ascent_ratio(f, shape, seed, steps=40):
    g = _gen(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    d = (0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    opt = torch.optim.Adam([x, d], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        (-(f(x + d) - f(x)).norm() / d.norm()).backward()
        opt.step()
    with torch.no_grad():
        return _ratio(f, x + d, x)


def _jacobian_norm(f, x, iters=30, seed=0):
    """Power iteration on J^T J at x with forward- and reverse-mode products (a lower estimate of ||J||)."""
    v = torch.randn(x.shape, generator=_gen(seed), dtype=x.dtype)
    v = v / v.norm()
    s = 0.0
    for _ in range(iters):
        _, jv = torch.func.jvp(f, (x,), (v,))
        _, vjp = torch.func.vjp(f, x)
        (w,) = vjp(jv)
        s = w.norm().sqrt().item()
        v = w / w.norm()
    return s


SOC_SHAPES = [
    # (c_in, c_out, k, stride, H, W, version, extra)
    (4, 4, 3, 1, 8, 8, "icml21", {}),
    (3, 16, 3, 2, 8, 6, "icml21", {}),  # unshuffle 12 -> pad 16
    (8, 6, 3, 2, 6, 6, "improved", {}),  # unshuffle 32 -> first 6
    (6, 6, 1, 1, 3, 3, "improved", {}),
    (4, 16, 1, 2, 4, 4, "improved", {}),
    (5, 5, 3, 1, 7, 5, "improved", dict(eval_order=3, correction=2.0)),  # far from orthogonal: bound > 1
    (4, 8, 5, 1, 6, 6, "icml21", dict(eval_order=4, correction=1.5)),
]


def _soc(c_in, c_out, k, s, version, extra, seed):
    torch.manual_seed(seed)
    m = SOCConv2d(c_in, c_out, k, s, version=version, **extra).double()
    with torch.no_grad():  # move away from init, keeping the stored vectors slightly stale (like a checkpoint)
        m.weight.add_(0.3 * torch.randn_like(m.weight) / math.sqrt(m.channels))
        m.bias.uniform_(-1, 1)
    return m.eval()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", SOC_SHAPES, ids=[f"{s[0]}-{s[1]}-k{s[2]}-s{s[3]}-{s[6]}-{i}"
                                                 for i, s in enumerate(SOC_SHAPES)])
def test_soc_lipschitz_bound_holds(shape, seed):
    c_in, c_out, k, s, h, w, version, extra = shape
    m = _soc(c_in, c_out, k, s, version, extra, seed)
    bound = m.lipschitz_bound()
    assert math.isfinite(bound) and bound >= 1.0
    g = _gen(100 + seed)
    for _ in range(4):
        x = torch.randn(3, c_in, h, w, generator=g, dtype=torch.float64)
        y = x + 0.01 * torch.randn(x.shape, generator=g, dtype=torch.float64)
        assert _ratio(m, x, y) <= bound * SLACK
    assert _ascent_ratio(m, (1, c_in, h, w), seed) <= bound * SLACK
    jn = _jacobian_norm(m, torch.randn(1, c_in, h, w, generator=g, dtype=torch.float64), seed=seed)
    assert jn <= bound * SLACK
    if not extra:  # the paper's settings: orthogonal up to the Taylor error
        assert bound < 1 + 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_skew_norm_bound_dominates_exact_operator_norm(seed):
    """The Fantastic-Four bound >= the exact norm of the zero-padded conv (dense matrix, SVD) on a small grid."""
    torch.manual_seed(seed)
    c, k, n = 3, 3, 5
    kernel = skew_kernel(torch.randn(c, c, k, k, dtype=torch.float64))
    eye = torch.eye(c * n * n, dtype=torch.float64).view(-1, c, n, n)
    dense = F.conv2d(eye, kernel, padding=k // 2).reshape(c * n * n, -1)
    exact = torch.linalg.matrix_norm(dense, ord=2).item()
    assert torch.allclose(dense, -dense.T)  # zero 'same' padding keeps the skew kernel skew-symmetric
    assert fantastic_four_norm_bound(kernel) >= exact
    # and a non-skew kernel (no shortcut): still an upper bound
    general = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    eye2 = torch.eye(2 * n * n, dtype=torch.float64).view(-1, 2, n, n)
    dense2 = F.conv2d(eye2, general, padding=1).reshape(2 * n * n, -1)
    assert fantastic_four_norm_bound(general) >= torch.linalg.matrix_norm(dense2, ord=2).item()


def test_taylor_remainder_bound_is_tight_enough_to_fail():
    """With K = 1 the truncated exponential I + S has norm sqrt(1 + ||S||^2) > 1: the bound must exceed it."""
    m = _soc(4, 4, 3, 1, "icml21", dict(eval_order=1, correction=1.0), 0)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    jn = _jacobian_norm(m, x, iters=60)
    assert jn > 1.05  # the map is genuinely expansive ...
    assert jn <= m.lipschitz_bound() * SLACK  # ... and the proven bound covers it


@pytest.mark.parametrize("act", ["maxmin", "hh1", "hh2", "lip1", "max"])
def test_pairwise_activations_are_1_lipschitz(act):
    torch.manual_seed(0)
    m = {"maxmin": MaxMin(), "hh1": HouseHolder(8), "hh2": HouseHolder2(8), "lip1": LipPool(8),
         "max": PairMaxPool()}[act].double()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 7.0)  # exercises the clamps
    assert m.lipschitz_bound() == 1.0
    g = _gen(1)
    for _ in range(20):
        x = torch.randn(4, 8, 3, 3, generator=g, dtype=torch.float64)
        y = x + torch.randn(x.shape, generator=g, dtype=torch.float64) * torch.rand(1, generator=g, dtype=torch.float64)
        assert _ratio(m, x, y) <= SLACK
    assert _ascent_ratio(m, (1, 8, 2, 2), 3) <= SLACK


@pytest.mark.parametrize("head", ["soc", "lln", "mlp"])
@pytest.mark.parametrize("version", ["icml21", "improved"])
def test_model_lipschitz_bound_holds(head, version):
    torch.manual_seed(0)
    m = SOCLipConvNet(block_size=1, init_channels=2, activation="hh1", head=head, version=version,
                      pooling="lip1", num_hidden=16).double().eval()
    bound = m.lipschitz_bound()
    assert bound >= 1 / 0.2507 * (1 - 1e-6)  # the normaliser's factor is included
    f = m if head == "soc" else m.forward_features  # lln/mlp: the bound covers x -> features
    g = _gen(5)
    x = torch.rand(2, 3, 32, 32, generator=g, dtype=torch.float64)
    y = (x + 0.02 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert _ratio(f, x, y) <= bound * SLACK
    assert _jacobian_norm(f, x[:1], iters=8) <= bound * SLACK


# ------------------------------------------------------------------------------------- (c) gradient norms
def _vjp_norm_ratio(f, x, seed=0):
    out, vjp = torch.func.vjp(f, x)
    g = torch.randn(out.shape, generator=_gen(seed), dtype=out.dtype)
    (gx,) = vjp(g)
    return (gx.norm() / g.norm()).item()


@pytest.mark.parametrize("c_in,c_out,stride", [(6, 6, 1), (3, 12, 2)])
def test_soc_preserves_gradient_norm(c_in, c_out, stride):
    """exp(S) is orthogonal and unshuffle a permutation: with enough terms ||J^T g|| = ||g|| (SOC paper, Sec. 4)."""
    m = _soc(c_in, c_out, 3, stride, "improved", dict(eval_order=30), 0)
    x = torch.randn(2, c_in, 8, 8, dtype=torch.float64)
    assert abs(_vjp_norm_ratio(m, x) - 1) < 1e-10
    short = _soc(c_in, c_out, 3, stride, "improved", dict(eval_order=2), 0)
    assert abs(_vjp_norm_ratio(short, x) - 1) > 1e-6  # the check can fail


@pytest.mark.parametrize("act", ["maxmin", "hh1", "hh2", "lip1", "max"])
def test_activations_preserve_gradient_norm(act):
    """MaxMin/HH1/HH2 are piecewise orthogonal; LipPool/MaxPool have disjoint unit-norm Jacobian rows (J J^T = I)."""
    torch.manual_seed(1)
    m = {"maxmin": MaxMin(), "hh1": HouseHolder(8), "hh2": HouseHolder2(8), "lip1": LipPool(8),
         "max": PairMaxPool()}[act].double()
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(0.1, 3.0)
    x = torch.randn(3, 8, 4, 4, generator=_gen(2), dtype=torch.float64)
    assert abs(_vjp_norm_ratio(m, x) - 1) < 1e-12


def test_lippool_gradient_is_finite_at_origin():
    m = LipPool(4).double()
    x = torch.zeros(1, 4, 2, 2, dtype=torch.float64, requires_grad=True)
    m(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_householder_matches_reflection_definition():
    m = HouseHolder(2).double()
    with torch.no_grad():
        m.theta.fill_(math.pi / 3)
    t = math.pi / 3
    pts = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # one on each side of the line
    out = m(pts.view(2, 2, 1, 1)).view(2, 2)
    x, y = pts[0]
    assert torch.allclose(out[0], torch.tensor([x * math.cos(t) + y * math.sin(t), x * math.sin(t) - y * math.cos(t)],
                                               dtype=torch.float64))
    assert torch.equal(out[1], pts[1])  # x sin(t/2) - y cos(t/2) < 0: identity


# --------------------------------------------------------------------------------------------- (d) caches
def _fresh_like(m: SOCConv2d) -> SOCConv2d:
    f = SOCConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, version=m.version).to(m.weight.dtype)
    f.load_state_dict(m.state_dict())
    return f.eval()


def test_eval_cache_never_goes_stale():
    m = _soc(4, 8, 3, 2, "icml21", {}, 0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        first = m(x)
        assert torch.equal(m(x), first)
        m.weight.add_(0.05)  # in-place parameter change
        assert torch.equal(m(x), _fresh_like(m)(x))
        assert not torch.equal(m(x), first)
        other = _soc(4, 8, 3, 2, "icml21", {}, 7)
        m.load_state_dict(other.state_dict())
        assert torch.equal(m(x), other(x))
        x2 = torch.randn(1, 4, 6, 10, dtype=torch.float64)  # new input size
        assert torch.equal(m(x2), _fresh_like(m)(x2))
        m.update_sigma(3)  # vectors refreshed in eval mode
        assert torch.equal(m(x), _fresh_like(m)(x))
    m.train()
    m(x)  # a training step moves the vectors
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), _fresh_like(m)(x))
        m32 = m.float()
        assert torch.equal(m32(x.float()), _fresh_like(m32)(x.float()))


def test_eval_uses_stored_vectors_and_train_updates_them():
    m = _soc(4, 4, 3, 1, "improved", {}, 0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    m.train()
    with torch.no_grad():
        m(torch.randn(1, 4, 5, 5, dtype=torch.float64))
    assert not torch.equal(before["u1"], m.u1)


def test_icml21_power_iteration_schedule(monkeypatch):
    m = SOCConv2d(2, 2, 1, version="icml21").train()
    calls = []
    monkeypatch.setattr(m, "power_iteration", lambda n: calls.append(n))
    with torch.no_grad():
        for _ in range(202):
            m(torch.randn(1, 2, 1, 1))
    assert calls[0] == 50 and calls[200] == 50 and set(calls[1:200]) == {1} and calls[201] == 1
    imp = SOCConv2d(2, 2, 1, version="improved").train()
    calls.clear()
    monkeypatch.setattr(imp, "power_iteration", lambda n: calls.append(n))
    with torch.no_grad():
        imp(torch.randn(1, 2, 1, 1))
    assert calls == [1]


def test_soc_head_keeps_the_first_classes():
    torch.manual_seed(0)
    head = SOCHead(16, 5, version="improved").double().eval()
    f = torch.randn(3, 16, dtype=torch.float64)
    out = head(f)
    assert out.shape == (3, 5) and torch.equal(out, head(f.view(3, 16, 1, 1)))
    k = head.conv.normalized_kernel()
    assert k.shape == (16, 16, 1, 1)  # square 16 x 16 exponential, then the first 5 outputs
    full = torch.linalg.matrix_exp(k[:, :, 0, 0]) @ f.T
    assert torch.allclose(out, full.T[:, :5] + head.conv.bias, atol=1e-9)
    assert head.lipschitz_bound() == head.conv.lipschitz_bound()


def test_horner_equals_running_sum():
    k = skew_kernel(torch.randn(5, 5, 3, 3, dtype=torch.float64)) * 0.1
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    assert torch.allclose(conv_exp(x, k, 9, horner=True), conv_exp(x, k, 9, horner=False), atol=1e-13)


# ----------------------------------------------------------------------------------------------- MLP head
def test_thresholded_softplus_and_mlp_head():
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    ref = torch.where(x.abs() < 20, F.softplus(x), F.relu(x))
    assert torch.allclose(thresholded_softplus(x), ref, atol=1e-15)
    torch.manual_seed(0)
    head = MLPHead(12, 5, num_hidden=20).double()
    assert head.head_rule == "mlp_curvature" and head.beta == 1.0
    u_svd = torch.linalg.svd(head.fc1.weight)[2][0]
    assert abs(torch.dot(head._u, u_svd).item()) > 0.99  # 50 iterations at construction
    f = torch.randn(3, 12, 1, 1, dtype=torch.float64)
    ref_logits = head.fc2(F.softplus(head.fc1(f.flatten(1))))
    assert torch.allclose(head.eval()(f), ref_logits, atol=1e-12)
    u0 = head._u.clone()
    head.train()(f)
    assert not torch.equal(u0, head._u)  # one iteration per training forward
    assert torch.allclose(head(f), ref_logits, atol=1e-12)  # ... that never affects the logits


# -------------------------------------------------------------------------------------------- (e) registry
_CODE_COUNTS_C10 = {5: 17.67, 10: 20.92, 15: 24.07, 20: 27.21, 25: 30.35, 30: 33.50, 35: 36.64, 40: 39.78}
_CODE_COUNTS_C100_LLN = {5: 16.72, 10: 19.98, 15: 23.12, 20: 26.26, 25: 29.41, 30: 32.55, 35: 35.69, 40: 38.84}


@pytest.mark.parametrize("depth", sorted(_CODE_COUNTS_C10))
def test_registered_lipconvnets_match_the_authors_counts(depth):
    """Shape-only builds (meta device): parameter counts computed from the authors' code (notes §2.3)."""
    import timm

    with torch.device("meta"):
        m10 = timm.create_model(f"soc_lipconvnet{depth}", num_classes=10)
        m100 = timm.create_model(f"soc_lipconvnet{depth}", num_classes=100, head="lln")
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    assert round(count(m10), 2) == _CODE_COUNTS_C10[depth]
    assert round(count(m100), 2) == _CODE_COUNTS_C100_LLN[depth]
    assert m10.num_features == 1024 and m10.head_rule == "lipschitz" and m100.head_rule == "lln"
    info = lipzoo.models.ARCHS[f"soc_lipconvnet{depth}"]
    assert info.family == "soc" and info.paper_params_note


_IMPROVED_COUNTS = {  # notes §2.3, computed from the improved repo's code (CIFAR-10)
    ("lln", 5): 16.75, ("lln", 10): 21.73, ("lln", 40): 51.61,
    ("mlp", 5): 25.17, ("mlp", 10): 30.16, ("mlp", 40): 60.04,
}


@pytest.mark.parametrize("head,depth", sorted(_IMPROVED_COUNTS))
def test_improved_structure_matches_the_authors_counts(head, depth):
    with torch.device("meta"):
        m = SOCLipConvNet(block_size=depth // 5, version="improved", head=head, pooling="max")  # CLI defaults
    assert round(sum(p.numel() for p in m.parameters()) / 1e6, 2) == _IMPROVED_COUNTS[(head, depth)]
    assert m.num_features == (2048 if head == "mlp" else 1024)


@pytest.mark.parametrize("name", ["soc_lipconvnet5", "soc_xs"])
def test_small_registered_models_forward(name):
    import timm

    x = torch.rand(2, 3, 32, 32)
    m = timm.create_model(name, num_classes=100).eval()  # built once: the body does not depend on the classes
    for nc in (100, 10):
        if nc != 100:
            m.reset_classifier(nc, allow_uncertified=True)
        with torch.no_grad():
            out = m.eval()(x)
        assert out.shape == (2, nc) and torch.isfinite(out).all()
    if name == "soc_xs":
        bound = m.lipschitz_bound()
        assert 1 / 0.2507 <= bound < 1 / 0.2507 * 1.001


def test_soc_xs_is_compact():
    import timm

    m = timm.create_model("soc_xs")
    assert sum(p.numel() for p in m.parameters()) <= 3_000_000
    assert lipzoo.models.ARCHS["soc_xs"].compact


@pytest.mark.parametrize("kwargs", [dict(version="improved", head="mlp", activation="hh2", pooling="lip1"),
                                    dict(version="icml21", head="lln", activation="hh1"),
                                    dict(version="improved", head="soc", block_size=2, pooling="max")])
def test_model_options(kwargs):
    m = SOCLipConvNet(init_channels=2, num_classes=100, **{"block_size": 1, **kwargs}).eval()
    with torch.no_grad():
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    names = m.no_weight_decay()
    assert all(n.endswith(("theta", "theta0", "theta1", "theta2")) for n in names)
    assert (len(names) > 0) == (kwargs.get("activation") in ("hh1", "hh2") or kwargs.get("pooling") == "lip1")


# ------------------------------------------------------------------------------- (f) autocast, channels_last
def test_bf16_autocast_channels_last():
    torch.manual_seed(0)
    m = SOCLipConvNet(block_size=1, init_channels=4, version="improved", pooling="lip1", head="lln")
    m = m.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv = m.features[1][0].conv
        assert conv.normalized_kernel().dtype == torch.float32  # parametrisation stays float32
        assert conv(torch.rand(2, 4, 32, 32, dtype=torch.bfloat16)).dtype == torch.float32  # so do the SOC convs
        loss = F.cross_entropy(m.train()(x), y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad():
        ref = m(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() <= 0.05 * ref.abs().max() + 0.05


def test_autocast_convs_lowers_training_convs_only():
    """``autocast_convs``: training under bf16 autocast runs the Taylor convolutions in bf16 (close to, not
    equal to, float32; gradients flow); eval, the certified map, stays float32 and is unchanged."""
    torch.manual_seed(0)
    fp32, low = (SOCConv2d(8, 8, 3, version="improved", autocast_convs=flag) for flag in (False, True))
    low.load_state_dict(fp32.state_dict())
    for m in (fp32, low):
        m.update_freq = 0
        m.update_iters = 0  # same stored vectors, so both use the same kernel
    x = torch.randn(4, 8, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref, out = fp32.train()(x), low.train()(x)
    assert ref.dtype == out.dtype == torch.float32  # the Taylor sum accumulates in float32
    err = float((out - ref).detach().norm() / ref.detach().norm())
    assert 1e-5 < err < 1e-2, err  # bf16 terms: visibly rounded, still close
    out.square().sum().backward()
    assert low.weight.grad is not None and torch.isfinite(low.weight.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(low.eval()(x), fp32.eval()(x))
