"""AOL layers and models (Prach & Lampert, ECCV 2022): the rescaling makes every layer 1-Lipschitz, and the
stated bound, computed from the realised weights, is never below the true operator norm."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import lipzoo
from _orthoconv import add_noise, dense_matrix, jacobian_power_iteration, random_model
from lipzoo.layers.aol import AOLConv2d, AOLLinear, aol_conv_scaling, conv_autocorrelation

torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------- the layers
CONV_CASES = [  # (c_in, c_out, k, padding_mode, size)
    (4, 4, 3, "zeros", 5),
    (3, 6, 3, "circular", 4),
    (6, 3, 3, "zeros", 6),
    (5, 5, 1, "zeros", 3),
    (4, 4, 5, "circular", 5),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_rescaled_conv_operator_norm_is_at_most_one_exactly(case):
    """Theorem 2 by exact computation: the dense matrix of the rescaled conv on a tiny image (zero or circular
    padding), and for circular padding also its FFT block-diagonalisation, has spectral norm <= 1."""
    c_in, c_out, k, mode, n = case
    torch.manual_seed(0)
    layer = AOLConv2d(c_in, c_out, k, padding_mode=mode, bias=False, init="kaiming").double()
    with torch.no_grad():
        layer.weight.mul_(4.0)  # the rescaling is invariant to the kernel's scale (up to eps)
    w = layer.rescaled_weight().detach()
    p = k // 2

    def conv(x):
        if mode == "circular" and p:
            return F.conv2d(F.pad(x, (p, p, p, p), mode="circular"), w)
        return F.conv2d(x, w, padding=p)

    mat = dense_matrix(conv, (c_in, n, n))
    exact = float(torch.linalg.matrix_norm(mat, ord=2))
    assert exact <= 1.0 + 1e-12
    assert exact > 0.3  # a real operator, not a degenerate one
    assert exact <= layer.lipschitz_bound() * (1 + 1e-12)
    if mode == "circular" and n >= k:
        # circular correlation = block diagonal in the DFT basis: max over frequencies of ||W_hat(f)||
        wf = torch.fft.fft2(w, s=(n, n)).permute(2, 3, 0, 1)
        assert float(torch.linalg.matrix_norm(wf, ord=2).max()) == pytest.approx(exact, rel=1e-9)
    # the unscaled kernel is not 1-Lipschitz: the rescaling is doing the work
    raw = dense_matrix(lambda x: F.conv2d(x, layer.weight.detach(), padding=p), (c_in, n, n))
    assert float(torch.linalg.matrix_norm(raw, ord=2)) > 1.0 + 1e-3


def test_conv_autocorrelation_is_the_gram_operator():
    """``A(s)`` are the blocks of conv^T conv: (conv^T conv x) equals the correlation of x with A."""
    torch.manual_seed(1)
    k = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    # on the infinite grid: pad x enough that zero padding never cuts the 5x5 support
    xp = F.pad(x, (4, 4, 4, 4))
    gram_x = F.conv_transpose2d(F.conv2d(xp, k, padding=2), k, padding=2)
    a = conv_autocorrelation(k)  # (4, 4, 5, 5)
    # the Gram operator is symmetric: A_ij(s) = A_ji(-s)
    torch.testing.assert_close(a, a.transpose(0, 1).flip(2, 3))
    via_a = F.conv2d(xp, a.flip(2, 3), padding=2)
    torch.testing.assert_close(gram_x[..., 4:-4, 4:-4], via_a[..., 4:-4, 4:-4])


@pytest.mark.parametrize("shape", [(7, 5), (5, 9), (12, 12)])
def test_rescaled_dense_norm_at_most_one(shape):
    torch.manual_seed(2)
    layer = AOLLinear(shape[1], shape[0], init="kaiming").double()
    w = layer.rescaled_weight()
    exact = float(torch.linalg.matrix_norm(w, ord=2))
    assert 0.3 < exact <= 1.0 + 1e-12
    bound = layer.lipschitz_bound()
    assert exact <= bound <= 1.0 + 1e-9
    # d_i = (sum_j |P^T P|_ij + eps)^(-1/2), computed here independently
    p = layer.weight.detach()
    d = torch.tensor([1.0 / math.sqrt(sum(abs(float(p[:, i] @ p[:, j])) for j in range(shape[1])) + 1e-6)
                      for i in range(shape[1])], dtype=torch.float64)
    torch.testing.assert_close(w, p * d)


def test_realised_bound_sees_a_wrong_rescaling():
    """The bound is computed from the realised kernel: if the forward's kernel were not the AOL one (here: the
    cache is made to return twice the rescaled kernel), the stated bound reports it."""
    torch.manual_seed(3)
    layer = AOLConv2d(4, 4, 3, init="kaiming").double().eval()
    honest = layer.lipschitz_bound()
    layer._cache.get(layer.rescaled_weight)
    layer._cache._value = 2.0 * layer._cache._value
    assert layer._realised_bound() == pytest.approx(2.0 * honest, rel=1e-9)
    assert honest <= 1.0 + 1e-9


@pytest.mark.parametrize("case", CONV_CASES[:3])
def test_bound_is_abovejacobian_power_iteration(case):
    c_in, c_out, k, mode, n = case
    torch.manual_seed(4)
    layer = add_noise(AOLConv2d(c_in, c_out, k, padding_mode=mode, init="kaiming").double(), 0.1, 4)
    x = torch.randn(1, c_in, n, n, dtype=torch.float64)
    sigma = jacobian_power_iteration(layer, x, 50, seed=5)
    bound = layer.lipschitz_bound()
    assert 0.3 < sigma <= bound * (1 + 1e-9)
    assert bound <= 1.0 + 1e-9


def test_float32_bound_is_one_up_to_float_error():
    torch.manual_seed(5)
    conv = add_noise(AOLConv2d(8, 8, 3), 0.3, 6)
    dense = add_noise(AOLLinear(20, 20), 0.3, 7)
    for layer in (conv, dense):
        b = layer.lipschitz_bound()
        assert 0.5 < b <= 1.0 + 1e-5


def test_eval_cache_reused_and_invalidated_by_in_place_updates():
    layer = AOLConv2d(4, 4, 3, init="kaiming").eval()
    x = torch.randn(2, 4, 6, 6)
    y1 = layer(x)
    w1 = layer._cache._value
    layer(x)
    assert layer._cache._value is w1  # reused
    with torch.no_grad():
        layer.weight.mul_(2.0).add_(0.1)  # bumps the version counter
    y2 = layer(x)
    assert layer._cache._value is not w1
    fresh = AOLConv2d(4, 4, 3, init="kaiming").eval()
    fresh.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y2, fresh(x))
    assert not torch.allclose(y1, y2)


def test_training_gradients_and_bf16_autocast_channels_last():
    torch.manual_seed(6)
    layer = add_noise(AOLConv2d(8, 8, 3), 0.1, 8).train()
    x = torch.rand(4, 8, 8, 8).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        # the parametrisation stays in float32 under autocast
        assert layer.rescaled_weight().dtype == torch.float32
    y.float().square().sum().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0
    ref = F.conv2d(x, layer.rescaled_weight().detach(), layer.bias.detach(), padding=1)
    torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.05)


def test_dirac_init_is_the_identity_map():
    layer = AOLConv2d(6, 6, 3).eval()
    x = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(layer(x), x / math.sqrt(1 + 1e-6))
    dense = AOLLinear(10, 10).eval()
    v = torch.randn(3, 10)
    torch.testing.assert_close(dense(v), v / math.sqrt(1 + 1e-6))
    assert aol_conv_scaling(layer.weight).shape == (6,)


# --------------------------------------------------------------------------------------------- the models
def _random_model(arch: str, seed: int = 0, dtype=torch.float32, **kwargs):
    return random_model(arch, 0.05, seed, dtype, **kwargs)


def test_registry_and_sizes():
    names = set(lipzoo.list_models("aol*"))
    assert {"aol_xs", "aol_s", "aol_m", "aol_l"} <= names
    xs = lipzoo.create_model("aol_xs")
    n = sum(p.numel() for p in xs.parameters())
    assert 1e6 <= n <= 3e6
    assert xs.head_rule == "lipschitz"
    # AOL-Small: 48->192 1x1, 12 x 3x3 192->192, 192->192 1x1, 14 dense 1024x1024 (biases included)
    expected_s = (48 * 192 + 192) + 12 * (192 * 192 * 9 + 192) + (192 * 192 + 192) + 14 * (1024 * 1024 + 1024)
    torch.manual_seed(0)
    s = lipzoo.create_model("aol_s")
    assert sum(p.numel() for p in s.parameters()) == expected_s


@pytest.mark.parametrize("num_classes", [10, 100])
def test_xs_builds_for_10_and_100_classes(num_classes):
    m = lipzoo.create_model("aol_xs", num_classes=num_classes).eval()
    out = m(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, num_classes)


def test_model_bound_abovejacobian_power_iteration():
    m = _random_model("aol_xs", seed=1, dtype=torch.float64)
    bound = m.lipschitz_bound()
    assert 0.99 < bound <= 1.0 + 1e-6
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    sigma = jacobian_power_iteration(m, x, 15, seed=2)
    assert 0 < sigma <= bound * (1 + 1e-9)


def test_create_model_certifies_random_images():
    m = _random_model("aol_xs", seed=2)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = m(x).argmax(dim=1)
    res = lipzoo.certify(m, x, y)
    assert res.lipschitz_bound <= 1.0 + 1e-5
    assert bool((res.radii > 0).all())
    assert torch.equal(res.predictions, y)
    # float64: the radius is the 1-Lipschitz-head rule applied to the logits of a float64 copy
    res64 = lipzoo.certify(m, x, y, dtype=torch.float64)
    with torch.no_grad():
        logits = copy.deepcopy(m).double()(x.double())
    top2 = logits.topk(2, dim=1).values
    expected = (top2[:, 0] - top2[:, 1]) / (math.sqrt(2) * res64.lipschitz_bound)
    torch.testing.assert_close(res64.radii.double(), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.radii.double(), expected, rtol=1e-2, atol=1e-4)


def test_data_write_is_seen_by_certify():
    """``.data.mul_(3)`` bumps no version counter; the certificate must still use the new weights."""
    m = _random_model("aol_xs", seed=3)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y0 = m(x).argmax(1)
    before = lipzoo.certify(m, x, y0)  # fills every cache
    for p in m.parameters():
        p.data.mul_(3)
        if p.dim() >= 2:  # AOL is invariant to a global scale of a kernel: also change one output row
            p.data[0].mul_(3)
    fresh = lipzoo.create_model("aol_xs").eval()
    fresh.load_state_dict(m.state_dict())
    with torch.no_grad():
        y = fresh(x).argmax(1)
    after, ref = lipzoo.certify(m, x, y), lipzoo.certify(fresh, x, y)
    assert ref.radii.max() > 0
    assert after.lipschitz_bound == pytest.approx(ref.lipschitz_bound, rel=1e-12)
    torch.testing.assert_close(after.radii, ref.radii, rtol=1e-9, atol=1e-12)
    assert torch.equal(after.predictions, ref.predictions)
    stale = lipzoo.certify(m, x, y0)
    assert not torch.allclose(stale.radii, before.radii)  # the write changed the certified map


def test_float64_model():
    m = _random_model("aol_xs", seed=4, dtype=torch.float64)
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    out = m(x)
    assert out.dtype == torch.float64
    res = lipzoo.certify(m, x.float(), out.argmax(1), dtype=torch.float64)
    assert res.lipschitz_bound <= 1.0 + 1e-9
    assert bool((res.radii > 0).all())
