"""BCOP family: the stated bound is the exact norm of the realised circular convolution (never assumed 1), kernel
construction, caches, models."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lipzoo
from lipzoo.layers.bcop import BCOPConv2d, BjorckLinear, bjorck_orthonormalize
from lipzoo.models.bcop import BCOPKWLarge
from _orthoconv import check_certifies_random_images, dense_operator, jacobian_norm_estimate, perturb

# (c_in, c_out, kernel, stride, H, W)
CONV_CASES = [
    (6, 6, 3, 1, 6, 6), (3, 8, 3, 1, 5, 5), (8, 4, 3, 1, 5, 7), (2, 8, 3, 2, 6, 6), (4, 4, 5, 1, 7, 7),
    (6, 4, 1, 1, 4, 4),
]


def _conv(case, iters, seed=0, dtype=torch.float64, scale=0.5):
    c_in, c_out, k, s, h, w = case
    torch.manual_seed(seed)
    layer = BCOPConv2d(c_in, c_out, k, s, bjorck_iters=iters).to(dtype)
    perturb(layer, seed, scale)
    return layer.eval(), (c_in, h, w)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("iters", [1, 3])
def test_bound_equals_exact_norm_of_the_realised_conv(case, iters):
    """Few Bjorck iterations: the realised conv is not orthogonal; the bound is its exact norm (dense matrix built
    from basis vectors, float64 SVD), up to the stated slack, and never below it."""
    layer, shape = _conv(case, iters)
    exact = float(torch.linalg.matrix_norm(dense_operator(layer, shape), ord=2))
    bound = layer.lipschitz_bound(shape[1:])
    assert exact <= bound <= exact * (1 + 1e-9) + 1e-12


def test_bound_is_not_assumed_one():
    """Without Bjorck steps the matrices are only scaled by a (lower) power-iteration estimate of their norm: the
    realised conv has norm > 1, and the stated bound follows it."""
    layer, shape = _conv((6, 6, 3, 1, 6, 6), iters=0, scale=0.5)
    exact = float(torch.linalg.matrix_norm(dense_operator(layer, shape), ord=2))
    assert exact > 1 + 1e-6
    assert exact <= layer.lipschitz_bound(shape[1:]) <= exact * (1 + 1e-9)


@pytest.mark.parametrize("case", CONV_CASES)
def test_converged_bjorck_gives_an_orthogonal_circular_conv(case):
    layer, shape = _conv(case, iters=60)
    c_in, c_out, _, s = case[:4]
    sv = torch.linalg.svdvals(dense_operator(layer, shape))
    n_nonzero = min(c_in * s * s, c_out) * (shape[1] // s) * (shape[2] // s)
    assert torch.allclose(sv[:n_nonzero], torch.ones(n_nonzero, dtype=torch.float64), atol=1e-9)
    if c_out >= c_in * s * s:  # isometry: ||Wx|| = ||x||
        x = torch.randn(8, *shape, dtype=torch.float64)
        with torch.no_grad():
            y = layer(x) - layer.bias.view(1, -1, 1, 1)
        assert torch.allclose(y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1), rtol=1e-9)


def test_circular_convention_and_1x1_kernel():
    layer, shape = _conv((4, 4, 3, 1, 6, 6), iters=5)
    x = torch.randn(2, *shape, dtype=torch.float64)
    w = layer.realised_weight()
    with torch.no_grad():
        ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w, layer.bias)
        assert torch.allclose(layer(x), ref, atol=1e-12)
    # stride 2 is space-to-depth then a stride-1 BCOP with kernel 3 // 2 = 1
    strided, _ = _conv((2, 8, 3, 2, 6, 6), iters=5)
    assert strided.realised_weight().shape == (8, 8, 1, 1)
    x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = F.conv2d(F.pixel_unshuffle(x, 2), strided.realised_weight(), strided.bias)
        assert torch.allclose(strided(x), ref, atol=1e-12)
    # k = 1: the kernel is H^T with H the top-left c_in x c_out block of the first orthonormalised matrix
    one, _ = _conv((6, 4, 1, 1, 4, 4), iters=4)
    ortho = bjorck_orthonormalize(one.param_matrices, 4)
    assert torch.allclose(one.realised_weight()[:, :, 0, 0], ortho[0, :6, :4].T, atol=1e-12)
    # a 1x1 kernel is the same matrix at every frequency: its bound needs no input size
    exact = float(torch.linalg.matrix_norm(one.realised_weight()[:, :, 0, 0], ord=2))
    assert exact <= one.lipschitz_bound() <= exact * (1 + 1e-9)


@pytest.mark.parametrize("case", CONV_CASES[:4])
def test_bound_dominates_jacobian_power_iteration(case):
    layer, shape = _conv(case, iters=2, seed=3)
    x = torch.randn(1, *shape, dtype=torch.float64)
    est = jacobian_norm_estimate(layer, x, iters=20)
    bound = layer.lipschitz_bound(shape[1:])
    assert est <= bound
    assert est >= 0.9 * bound  # a linear map: power iteration gets close to the exact norm


def test_bjorck_linear_bound_is_the_exact_spectral_norm():
    torch.manual_seed(0)
    for n_in, n_out, iters in ((12, 5, 1), (5, 12, 2), (7, 7, 30)):
        layer = BjorckLinear(n_in, n_out, bjorck_iters=iters).double().eval()
        perturb(layer, 4, scale=1.0)
        exact = float(torch.linalg.matrix_norm(layer.matrix(), ord=2))
        bound = layer.lipschitz_bound()
        assert exact <= bound <= exact * (1 + 1e-9)
        x = torch.randn(1, n_in, dtype=torch.float64)
        assert jacobian_norm_estimate(layer, x, iters=10) <= bound
    assert bound == pytest.approx(1.0, abs=1e-9)  # converged Bjorck is orthogonal


def test_eval_iterations_and_float32_parametrisation_under_autocast():
    torch.manual_seed(0)
    layer = BCOPConv2d(4, 4, 3, bjorck_iters=2, eval_bjorck_iters=25)
    perturb(layer, 1)
    x = torch.rand(2, 4, 8, 8).to(memory_format=torch.channels_last)
    train_bound = layer.train().lipschitz_bound((8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        assert layer._compute_weight().dtype == torch.float32
    out.float().sum().backward()
    assert layer.param_matrices.grad is not None
    layer.eval()
    assert layer.lipschitz_bound((8, 8)) == pytest.approx(1.0, abs=1e-5)  # 25 iterations: orthogonal
    assert train_bound != layer.lipschitz_bound((8, 8))  # the bound follows the mode's iterations


def _small(**kw):
    return BCOPKWLarge(channels=(8, 16), dense=(32, 16), input_size=8, layer_kwargs=dict(bjorck_iters=3), **kw)


def test_eval_cache_invalidated_by_data_writes_inside_certify():
    torch.manual_seed(0)
    model = _small().eval()
    x = torch.rand(16, 3, 8, 8)
    y = torch.randint(0, 10, (16,))
    before = lipzoo.certify(model, x, y)
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data.mul_(3)  # bumps no version counter (Bjorck's scaling makes this alone nearly invisible ...)
        p.data.add_(0.2 * torch.randn(p.shape, generator=g) * p.data.abs().mean())  # (... so change direction too)
    after = lipzoo.certify(model, x, y)
    fresh = _small()
    fresh.load_state_dict(model.state_dict())
    expected = lipzoo.certify(fresh.eval(), x, y)
    assert not torch.allclose(before.radii, after.radii)
    assert after.lipschitz_bound != before.lipschitz_bound
    assert torch.equal(after.predictions, expected.predictions)
    assert torch.allclose(after.radii, expected.radii, rtol=1e-5, atol=1e-6)
    assert after.lipschitz_bound == pytest.approx(expected.lipschitz_bound, rel=1e-9)


def test_model_bound_is_product_of_exact_norms_and_float64_certifies():
    torch.manual_seed(0)
    model = _small().double().eval()
    perturb(model, 6)
    bound = model.lipschitz_bound()
    layer_product = 1.0
    for m in list(model.features) + [model.head]:
        if isinstance(m, BCOPConv2d):
            c = m.in_channels
            side = m._sizes(None)[0]
            layer_product *= float(torch.linalg.matrix_norm(dense_operator(m, (c, *side)), ord=2))
        elif isinstance(m, BjorckLinear):
            layer_product *= float(torch.linalg.matrix_norm(m.matrix(), ord=2))
    assert layer_product <= bound <= layer_product * (1 + 1e-8)
    for seed in range(2):
        x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        assert jacobian_norm_estimate(model, x, iters=10) <= bound
    images = torch.rand(8, 3, 8, 8, dtype=torch.float64)
    res = lipzoo.certify(model, images, torch.randint(0, 10, (8,)), dtype=torch.float64)
    with torch.no_grad():
        logits = model(images)
    top2 = logits.topk(2, dim=1).values
    radius = (top2[:, 0] - top2[:, 1]) / (2 ** 0.5 * bound)
    assert res.lipschitz_bound == pytest.approx(bound, rel=1e-12)
    assert torch.equal(res.predictions, logits.argmax(1))
    assert torch.allclose(res.radii[res.correct], radius[res.correct], rtol=1e-9)


def test_create_model_certifies_random_images():
    check_certifies_random_images("bcop_xs", 16, min_bound=0.5)


@pytest.mark.parametrize("name", ["bcop_xs", "bcop_kwlarge"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_registered_variants_build(name, num_classes):
    model = lipzoo.create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert name in lipzoo.list_models()
