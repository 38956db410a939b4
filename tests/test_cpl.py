"""CPL layers and models (Meunier et al., ICML 2022): the step size comes from a PROVEN upper bound of ||W||_2,
never from a power-iteration estimate (which converges from below and can make the layer expansive)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import lipzoo
from _orthoconv import add_noise, dense_matrix, jacobian_power_iteration, random_model
from lipzoo.layers.cpl import CPLConv2d, CPLLinear, conv_norm_upper, power_iteration_norm

torch.set_num_threads(1)


def _jacobian(f, x: torch.Tensor) -> torch.Tensor:
    j = torch.autograd.functional.jacobian(f, x)
    return j.reshape(x.numel(), x.numel())


# ------------------------------------------------------------------------------------- proven norm bounds
@pytest.mark.parametrize("case", [(3, 4, 3, 5), (6, 2, 3, (4, 7)), (4, 4, 1, 3), (2, 5, 5, 6)])
def test_conv_norm_upper_bounds_the_explicit_zero_padded_matrix(case):
    """The FFT bound on the (H + r, W + r) grid is >= the exact norm of the zero-padded conv matrix (SVD of the
    matrix built column by column), and equals the exact norm of the circular conv on that grid."""
    c_out, c_in, k, size = case
    h, w = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)
    kernel = torch.randn(c_out, c_in, k, k, dtype=torch.float64)
    zero_padded = dense_matrix(lambda x: F.conv2d(x, kernel, padding=k // 2), (c_in, h, w))
    exact = float(torch.linalg.matrix_norm(zero_padded, ord=2))
    bound = conv_norm_upper(kernel, (h, w))
    assert exact <= bound
    r = k // 2
    circ = dense_matrix(lambda x: F.conv2d(F.pad(x, (r, r, r, r), mode="circular") if r else x, kernel),
                         (c_in, h + r, w + r))
    assert bound == pytest.approx(float(torch.linalg.matrix_norm(circ, ord=2)), rel=1e-9)
    if k == 1:  # no padding at all: the bound is the exact norm
        assert bound == pytest.approx(exact, rel=1e-9)


def _hard_matrix(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 6 x 6 matrix with singular values (3, 2.9, 1, ...) and a start vector almost orthogonal to the top right
    singular vector: a few power iterations stay near 2.9."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    s = torch.tensor([3.0, 2.9, 1.0, 0.8, 0.5, 0.2], dtype=torch.float64)
    w = u @ torch.diag(s) @ v.T
    x0 = v[:, 1] + 1e-4 * v[:, 0]
    return w, x0


def test_power_iteration_underestimates_but_the_layer_stays_1_lipschitz():
    w, x0 = _hard_matrix()
    true_norm = float(torch.linalg.matrix_norm(w, ord=2))
    assert true_norm == pytest.approx(3.0, rel=1e-12)
    estimate = power_iteration_norm(lambda x: w @ x, lambda y: w.T @ y, x0, iters=3)
    assert estimate < 0.975 * true_norm  # the paper's estimate is too low here

    # the paper's step from that estimate makes the layer expansive where ReLU is active everywhere
    h_paper = 2.0 / (estimate ** 2 + 1e-4)
    jac_paper = torch.eye(6, dtype=torch.float64) - h_paper * w.T @ w
    assert float(torch.linalg.matrix_norm(jac_paper, ord=2)) > 1.05

    layer = CPLLinear(6, 6).double().eval()
    with torch.no_grad():
        layer.weights.copy_(w)
        layer.bias.fill_(100.0)  # every unit active: the Jacobian is I - h W^T W
    x = torch.randn(1, 6, dtype=torch.float64)
    jac = _jacobian(layer, x)
    torch.testing.assert_close(jac, torch.eye(6, dtype=torch.float64) - float(layer._step(None, torch.float64)) * w.T @ w)
    assert float(torch.linalg.matrix_norm(jac, ord=2)) <= 1.0 + 1e-12
    assert float(layer._step(None, torch.float64)) <= 2.0 / true_norm ** 2
    assert layer.lipschitz_bound() == 1.0
    # and in training mode (float64 eigenvalue, differentiable) the step is no larger than 2 / ||W||^2 (+ rounding)
    layer.train()
    assert float(layer._step(None, torch.float64)) <= 2.0 / true_norm ** 2 * (1 + 1e-12)


def test_conv_power_iteration_underestimates_but_the_conv_layer_stays_1_lipschitz():
    """Conv version: a kernel whose operator has two close top singular values; 2 power iterations from a start
    near the second one underestimate; the layer's Jacobian (all units active), built explicitly, has norm <= 1."""
    torch.manual_seed(1)
    c, n = 3, 4
    layer = CPLConv2d(c, c, 3, input_size=n).double().eval()
    kernel = layer.kernel.detach()
    op = lambda x: F.conv2d(x.view(1, c, n, n), kernel, padding=1).flatten()  # noqa: E731
    adj = lambda y: F.conv_transpose2d(y.view(1, c, n, n), kernel, padding=1).flatten()  # noqa: E731
    a = dense_matrix(lambda x: F.conv2d(x, kernel, padding=1), (c, n, n))
    _, s, vh = torch.linalg.svd(a)
    assert float(s[1]) < 0.999 * float(s[0])
    x0 = vh[1] + 1e-6 * vh[0]  # start almost orthogonal to the top singular vector
    estimate = power_iteration_norm(op, adj, x0, iters=2)
    assert estimate < 0.999 * float(s[0])

    with torch.no_grad():
        layer.bias.fill_(1e3)
    x = torch.randn(1, c, n, n, dtype=torch.float64)
    jac = _jacobian(layer, x)
    h = float(layer._step((n, n), torch.float64))
    torch.testing.assert_close(jac, torch.eye(c * n * n, dtype=torch.float64) - h * a.T @ a)
    assert float(torch.linalg.matrix_norm(jac, ord=2)) <= 1.0 + 1e-12
    assert h <= 2.0 / float(s[0]) ** 2
    h_paper = 2.0 / (estimate ** 2 + 1e-4)
    assert float(torch.linalg.matrix_norm(torch.eye(c * n * n, dtype=torch.float64) - h_paper * a.T @ a, ord=2)) > 1.0


# ----------------------------------------------------------------------------------------------- the layers
@pytest.mark.parametrize("layer_fn,shape", [
    (lambda: CPLConv2d(4, 6, 3, input_size=6), (1, 4, 6, 6)),
    (lambda: CPLConv2d(5, 3, 3, input_size=(5, 7)), (1, 5, 5, 7)),
    (lambda: CPLLinear(12, 20), (1, 12)),
    (lambda: CPLLinear(15, 4), (1, 15)),
])
def test_bound_above_jacobian_power_iteration_on_random_inputs(layer_fn, shape):
    torch.manual_seed(2)
    layer = add_noise(layer_fn(), 0.2, 3).double().eval()
    bound = layer.lipschitz_bound()
    assert bound == 1.0
    for seed in range(3):
        x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        sigma = jacobian_power_iteration(layer, x, 40, seed=seed)
        assert 0.0 < sigma <= bound * (1 + 1e-9)
    # pairs: ||f(x) - f(y)|| <= ||x - y||
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn((64,) + shape[1:], generator=g, dtype=torch.float64), torch.randn((64,) + shape[1:], generator=g, dtype=torch.float64)
    with torch.no_grad():
        num = (layer(x) - layer(y)).flatten(1).norm(dim=1)
    assert bool((num <= (x - y).flatten(1).norm(dim=1) * (1 + 1e-9)).all())


def test_training_mode_bound_and_gradients():
    torch.manual_seed(4)
    conv = CPLConv2d(8, 8, 3, input_size=8).train()
    x = torch.randn(4, 8, 8, 8).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().square().sum().backward()
    assert float(conv.kernel.grad.abs().sum()) > 0 and float(conv.bias.grad.abs().sum()) > 0
    b = conv.lipschitz_bound()  # the float32 training-mode step: 1 up to float32 eigenvalue error
    assert 1.0 <= b <= 1.0 + 1e-4
    # the gradient of the step flows through the maximising frequency: equal to the full max's gradient
    conv.kernel.grad = None
    conv._sq_norm_train((8, 8)).backward()
    g1 = conv.kernel.grad.clone()
    conv.kernel.grad = None
    from lipzoo.layers.cpl import conv_frequency_sq_norms
    conv_frequency_sq_norms(conv.kernel, (9, 9)).max().backward()
    torch.testing.assert_close(g1, conv.kernel.grad, rtol=1e-4, atol=1e-5)


def test_bound_follows_the_input_size():
    torch.manual_seed(5)
    layer = CPLConv2d(3, 4, 3, input_size=4).double().eval()
    h4 = float(layer._step((4, 4), torch.float64))
    layer(torch.randn(1, 3, 12, 12, dtype=torch.float64))
    assert layer.input_size == (12, 12)
    h12 = float(layer._step((12, 12), torch.float64))
    assert h12 <= h4  # a larger grid: a larger (or equal) norm, a smaller step
    assert layer.lipschitz_bound() == 1.0
    # the step for 4x4 used on a 12x12 input would not be proven: the layer recomputes it per size
    assert h12 == pytest.approx(2.0 / conv_norm_upper(layer.kernel, 12) ** 2, rel=1e-12)


def test_eval_cache_is_invalidated_by_in_place_updates():
    layer = CPLLinear(10, 6).eval()
    x = torch.randn(3, 10)
    y1 = layer(x)
    with torch.no_grad():
        layer.weights.mul_(2.0)
    y2 = layer(x)
    fresh = CPLLinear(10, 6).eval()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y2, fresh(x))
    assert not torch.allclose(y1, y2)


# ----------------------------------------------------------------------------------------------- the models
def _random_model(arch: str, seed: int = 0, dtype=torch.float32, **kwargs):
    return random_model(arch, 0.02, seed, dtype, **kwargs)


def test_registry_and_sizes():
    names = set(lipzoo.list_models("cpl*"))
    assert {"cpl_xs", "cpl_s", "cpl_m", "cpl_l", "cpl_xl"} <= names
    xs = lipzoo.create_model("cpl_xs")
    n = sum(p.numel() for p in xs.parameters())
    assert 1e6 <= n <= 3e6
    assert xs.head_rule == "lln"
    trunc = lipzoo.create_model("cpl_xs", head="trunc")
    assert trunc.head_rule == "lipschitz"
    # cpl_xs: 8 convs (32 x 32 x 3 x 3 + 32), 4 dense (256 x 2048 + 256), LLN 10 x 2048 + 10
    assert n == 8 * (32 * 32 * 9 + 32) + 4 * (256 * 2048 + 256) + 10 * 2048 + 10


# The authors' layer shapes (MILES-PSL/Convex-Potential-Layer @ c6dc197a3bbcb332b4ef3a018ca5b96560d69ff7, model.py
# and layers.py): CPL conv kernel (conv_size, num_channels, 3, 3) + bias (conv_size,), conv_size 5 by main.py's
# default; CPL dense weights (n_features, 64 num_channels) + bias (n_features,) (their unused `alpha` and the
# power-iteration vectors are not lipzoo parameters); LinearNormalized head (num_classes, 64 num_channels) + bias.
# The sizes (conv depth, width, dense depth, n_features) are NOT in the authors' code: they are lipzoo's UNVERIFIED
# recollection of the paper's CPL-S/M/L/XL (lipzoo/models/cpl.py), pinned here so that a change is deliberate.
_CPL_PAPER_SIZES = {"cpl_s": (20, 45, 7, 2048), "cpl_m": (30, 60, 10, 2048), "cpl_l": (90, 60, 15, 4096),
                    "cpl_xl": (120, 70, 15, 4096)}


@pytest.mark.parametrize("arch", sorted(_CPL_PAPER_SIZES))
def test_paper_sizes_have_the_authors_layer_shapes(arch):
    depth, w, n_dense, n_features = _CPL_PAPER_SIZES[arch]
    with torch.device("meta"):
        m = lipzoo.create_model(arch)
    convs = [mod for mod in m.modules() if isinstance(mod, CPLConv2d)]
    dense = [mod for mod in m.modules() if isinstance(mod, CPLLinear)]
    assert len(convs) == depth and len(dense) == n_dense
    assert all(tuple(c.kernel.shape) == (5, w, 3, 3) and tuple(c.bias.shape) == (5,) for c in convs)
    assert all(tuple(d.weights.shape) == (n_features, 64 * w) and tuple(d.bias.shape) == (n_features,)
               for d in dense)
    assert tuple(m.head.weight.shape) == (10, 64 * w) and tuple(m.head.bias.shape) == (10,)
    # the authors' trainable tensors for these sizes
    authors = depth * (5 * w * 9 + 5) + n_dense * (n_features * 64 * w + n_features) + 10 * 64 * w + 10
    assert sum(p.numel() for p in m.parameters()) == authors


def test_cpl_xl_paper_count_is_the_secondary_quote():
    """1LLC Table 4 quotes 236M for CPL-XL; lipzoo's unverified CPL-XL counts 275.74M, its cpl_l 236.27M."""
    xl, large = lipzoo.model_info("cpl_xl"), lipzoo.model_info("cpl_l")
    assert xl["paper_params_millions"] == 236.0 and "1LLC" in xl["paper_params_note"]
    assert (xl["params"], large["params"]) == (275_736_050, 236_272_900)
    assert large["paper_params_millions"] is None


@pytest.mark.parametrize("num_classes", [10, 100])
def test_xs_builds_for_10_and_100_classes(num_classes):
    m = lipzoo.create_model("cpl_xs", num_classes=num_classes).eval()
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, num_classes)


def test_model_bound_abovejacobian_power_iteration():
    m = _random_model("cpl_xs", seed=1, dtype=torch.float64, head="trunc")
    bound = m.lipschitz_bound()
    assert bound == 1.0
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    sigma = jacobian_power_iteration(m, x, 10, seed=2)
    assert 0 < sigma <= bound * (1 + 1e-9)
    body = lambda v: m.forward_features(v)  # noqa: E731  (the LLN model's certified part)
    sigma_body = jacobian_power_iteration(body, x, 10, seed=3)
    assert 0 < sigma_body <= 1.0 + 1e-9


def test_create_model_certifies_random_images():
    m = _random_model("cpl_xs", seed=2)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = m(x).argmax(1)
    res = lipzoo.certify(m, x, y)
    assert res.lipschitz_bound == 1.0
    assert bool((res.radii > 0).all()) and torch.equal(res.predictions, y)
    # float64: the LLN rule applied to a float64 copy's logits, min over all other classes
    res64 = lipzoo.certify(m, x, y, dtype=torch.float64)
    m64 = copy.deepcopy(m).double()
    with torch.no_grad():
        logits = m64(x.double())
    w = m64.head.normalized_weight()
    expected = []
    for i in range(len(x)):
        t = int(y[i])
        expected.append(min(float((logits[i, t] - logits[i, j]) / (w[t] - w[j]).norm()) for j in range(10) if j != t))
    torch.testing.assert_close(res64.radii.double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_data_write_is_seen_by_certify():
    """``p.data.mul_(3)`` bumps no version counter: certify must recompute every step size (with a stale step the
    map would be ~9x expansive in the CPL directions)."""
    m = _random_model("cpl_xs", seed=3)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y0 = m(x).argmax(1)
    before = lipzoo.certify(m, x, y0)
    for p in m.parameters():
        p.data.mul_(3)
    fresh = lipzoo.create_model("cpl_xs").eval()
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        y = fresh(x).argmax(1)
    after, ref = lipzoo.certify(m, x, y), lipzoo.certify(fresh, x, y)
    assert ref.radii.max() > 0
    assert after.lipschitz_bound == pytest.approx(ref.lipschitz_bound, rel=1e-12)
    torch.testing.assert_close(after.radii, ref.radii, rtol=1e-9, atol=1e-12)
    assert torch.equal(after.predictions, ref.predictions)
    assert not torch.allclose(lipzoo.certify(m, x, y0).radii, before.radii)
    # the eval-mode step after the write is the one for the new weights
    conv = m.features[1]
    assert float(conv._step((32, 32), torch.float32)) == pytest.approx(
        2.0 / conv_norm_upper(conv.kernel, 32) ** 2, rel=1e-6)


def test_float64_model():
    m = _random_model("cpl_xs", seed=4, dtype=torch.float64)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    out = m(x)
    assert out.dtype == torch.float64
    res = lipzoo.certify(m, x.float(), out.argmax(1), dtype=torch.float64)
    assert res.lipschitz_bound == 1.0
    assert bool((res.radii > 0).all())
