"""Cayley family: orthogonality of the realised circular convolution, proven bounds, caches, models."""
from __future__ import annotations

import pytest
import torch

import lipzoo
from lipzoo.layers.cayley import CayleyConv2d, CayleyLinear
from lipzoo.models.cayley import CayleyKWLarge
from _orthoconv import check_certifies_random_images, dense_operator, jacobian_norm_estimate, perturb

# (c_in, c_out, kernel, stride, H, W): tall, square, wide, strided, 1x1, 5x5, odd and rectangular grids
CONV_CASES = [
    (3, 8, 3, 1, 8, 8), (6, 6, 3, 1, 7, 7), (8, 4, 3, 1, 6, 6), (4, 8, 3, 2, 8, 8), (3, 16, 3, 2, 6, 6),
    (6, 6, 1, 1, 5, 5), (4, 10, 5, 1, 9, 6),
]


def _conv(case, dtype, seed=0):
    c_in, c_out, k, s, h, w = case
    torch.manual_seed(seed)
    layer = CayleyConv2d(c_in, c_out, k, s).to(dtype)
    perturb(layer, seed)
    return layer, (c_in, h, w)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_conv_is_orthogonal(case, dtype, tol):
    layer, shape = _conv(case, dtype)
    layer.bias.data.zero_()
    c_in, c_out, k, s = case[:4]
    x = torch.randn(16, *shape, dtype=dtype)
    if c_out >= c_in * s * s:  # orthonormal columns per frequency: an isometry, ||Wx|| = ||x||
        with torch.no_grad():
            ratio = layer(x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
        assert (ratio - 1).abs().max().item() <= tol
    else:  # orthonormal rows: the adjoint is an isometry, ||W^T y|| = ||y||
        y = torch.randn(16, c_out, shape[1] // s, shape[2] // s, dtype=dtype)
        xr = x.clone().requires_grad_(True)
        out = layer(xr)
        (g,) = torch.autograd.grad(out, xr, grad_outputs=y)  # W^T y
        ratio = g.flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)
        assert (ratio - 1).abs().max().item() <= tol


@pytest.mark.parametrize("case", CONV_CASES)
def test_bound_equals_dense_operator_norm(case):
    layer, shape = _conv(case, torch.float64, seed=1)
    layer.eval()
    M = dense_operator(layer, shape)
    exact = float(torch.linalg.matrix_norm(M, ord=2))
    bound = layer.lipschitz_bound(shape[1:])
    assert bound >= exact
    assert bound <= exact * (1 + 1e-12)
    assert abs(exact - 1.0) < 1e-10  # orthogonal by construction: every singular value is 1


def test_float32_bound_covers_the_realised_float32_operator():
    layer, shape = _conv((6, 6, 3, 1, 7, 7), torch.float32, seed=2)
    layer.eval()
    bound = layer.lipschitz_bound(shape[1:])
    # the realised float32 matrices, applied in float64 to basis vectors
    Q = layer.effective_operators(shape[1:]).to(torch.complex128)
    exact = float(torch.linalg.matrix_norm(Q, ord=2).max())
    assert exact <= bound <= 1 + 1e-5
    x = torch.randn(64, *shape)
    with torch.no_grad():
        ratio = (layer(x) - layer(torch.zeros(1, *shape))).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert ratio.max().item() <= bound * (1 + 1e-5)


@pytest.mark.parametrize("case", CONV_CASES[:5])
def test_bound_dominates_jacobian_power_iteration(case):
    layer, shape = _conv(case, torch.float64, seed=3)
    x = torch.randn(1, *shape, dtype=torch.float64)
    est = jacobian_norm_estimate(layer, x, iters=8)  # every nonzero singular value is 1: converges at once
    assert est <= layer.lipschitz_bound(shape[1:])
    assert est > 0.99  # the estimate is not vacuous: the operator has norm 1


def test_linear_layer_orthonormal_and_bound():
    torch.manual_seed(0)
    for n_in, n_out in ((12, 5), (5, 12), (7, 7)):
        layer = CayleyLinear(n_in, n_out).double()
        perturb(layer, 4)
        Q = layer.matrix()
        gram = Q @ Q.T if n_out < n_in else Q.T @ Q
        assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=torch.float64), atol=1e-12)
        x = torch.randn(1, n_in, dtype=torch.float64)
        est = jacobian_norm_estimate(layer, x)
        assert est <= layer.lipschitz_bound() <= 1 + 1e-12


def test_bound_follows_input_size_and_1x1_depends_on_grid():
    torch.manual_seed(0)
    layer = CayleyConv2d(4, 6, 3).double().eval()
    perturb(layer, 5)
    for size in ((6, 6), (9, 5)):
        M = dense_operator(layer, (4, *size))
        assert layer.lipschitz_bound(size) >= float(torch.linalg.matrix_norm(M, ord=2))
    with pytest.raises(ValueError):
        CayleyConv2d(4, 6, 3).lipschitz_bound()  # no size known yet
    one = CayleyConv2d(4, 6, 1).double().eval()
    x8 = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # the authors' 1x1 parametrisation divides by sqrt(#frequencies): it depends on the grid
        a, b = one(x8)[0, :, 0, 0], one(x8[..., :4, :4].contiguous())[0, :, 0, 0]
    assert not torch.allclose(a, b)
    assert one.lipschitz_bound((8, 8)) <= 1 + 1e-12 and one.lipschitz_bound((4, 4)) <= 1 + 1e-12


def test_parametrisation_float32_under_autocast_channels_last_and_gradients():
    torch.manual_seed(0)
    model = lipzoo.create_model("cayley_xs").train().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        conv = model.features[0]
        assert conv._compute_params((32, 32))["Q"].dtype == torch.complex64
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_eval_cache_invalidated_by_data_writes_inside_certify():
    torch.manual_seed(0)
    make = lambda: CayleyKWLarge(channels=(8, 16), dense=(32, 16))  # noqa: E731  (small: fast)
    model = make().eval()
    x = torch.rand(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    before = lipzoo.certify(model, x, y)
    for p in model.parameters():
        p.data.mul_(3)  # bumps no version counter
    after = lipzoo.certify(model, x, y)
    fresh = make()
    fresh.load_state_dict(model.state_dict())
    expected = lipzoo.certify(fresh.eval(), x, y)
    assert not torch.equal(before.radii, after.radii)  # the write did change the function
    assert torch.equal(after.predictions, expected.predictions)
    assert torch.allclose(after.radii, expected.radii, rtol=1e-5, atol=1e-6)
    assert after.lipschitz_bound == pytest.approx(expected.lipschitz_bound, rel=1e-9)


def test_model_bound_dominates_jacobian_and_float64_certifies():
    torch.manual_seed(0)
    model = CayleyKWLarge(channels=(8, 16), dense=(32, 16), num_classes=10, input_size=16).double().eval()
    perturb(model, 6)
    bound = model.lipschitz_bound()
    assert 1.0 <= bound <= 1 + 1e-10  # mean-only normalisation; orthogonal layers
    for seed in range(2):
        x = torch.rand(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        assert 0.1 < jacobian_norm_estimate(model, x, iters=10) <= bound
    images = torch.rand(8, 3, 16, 16, dtype=torch.float64)
    res = lipzoo.certify(model, images, torch.randint(0, 10, (8,)), dtype=torch.float64)
    with torch.no_grad():
        logits = model(images)
    top2 = logits.topk(2, dim=1).values
    radius = (top2[:, 0] - top2[:, 1]) / (2 ** 0.5 * bound)
    assert torch.equal(res.predictions, logits.argmax(1))
    assert torch.allclose(res.radii[res.correct], radius[res.correct], rtol=1e-9)


def test_create_model_certifies_random_images():
    check_certifies_random_images("cayley_xs", 32, min_bound=1.0)


@pytest.mark.parametrize("name", ["cayley_xs", "cayley_kwlarge"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_registered_variants_build(name, num_classes):
    model = lipzoo.create_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert name in lipzoo.list_models()


def test_resnet9_convex_residual_bound_and_jacobian():
    from lipzoo.models.cayley import CayleyResNet9, ConvexCombination

    torch.manual_seed(0)
    model = CayleyResNet9(widths=(8, 8, 16, 16), dense=16).double().eval()
    perturb(model, 7)
    combos = [m for m in model.modules() if isinstance(m, ConvexCombination)]
    assert len(combos) == 2
    for c in combos:  # s + (1 - s) L_body with L_body ~ 1: the stated bound of the block is ~1 whatever s is
        s = float(torch.sigmoid(c.alpha.detach().double()))
        assert c.lipschitz_bound() == pytest.approx(s + (1 - s) * c.body[0].lipschitz_bound(), rel=1e-12)
    bound = model.lipschitz_bound()
    assert 1.0 <= bound <= 1 + 1e-10
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    assert 0.1 < jacobian_norm_estimate(model, x, iters=8) <= bound
    assert "cayley_resnet9" in lipzoo.list_models()
