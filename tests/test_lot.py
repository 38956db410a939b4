"""LOT family: reference fixtures, proven bounds, caches, registered models, autocast."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lipzoo  # noqa: F401  (registers the models)
from lipzoo.convert import from_reference, load_checkpoint
from lipzoo.convert._lot import convert_state_dict
from lipzoo.layers import activations
from lipzoo.layers.lot import LOTConv2d, LOTLinear, fft_shift, lot_orthogonalize
from lipzoo.models._registry import ARCHS
from lipzoo.models.lot import LOTLipConvNet
from _fixtures import load_reference_case
from _orthoconv import jacobian_power_iteration

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference" / "lot"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json")) if FIXTURES.is_dir() else []
SOC_STD = 0.2507


# ------------------------------------------------------------------------------------------ (a) fixtures
@pytest.mark.skipif(not CASES, reason="reference fixtures not available")
@pytest.mark.parametrize("case", CASES)
def test_reference_fixture_eval(case):
    spec, state, t = load_reference_case(FIXTURES / case)
    module = from_reference(spec, state).eval()
    with torch.no_grad():
        out = module(t["input"])
    ref = t["output_eval"]
    assert out.dtype == torch.float64 and out.shape == ref.shape
    tol = spec["suggested_tolerance"]["output_eval"]["float64_atol"]
    assert (out - ref).abs().max().item() <= tol
    # train and eval are the same computation in the authors' code (10 iterations each)
    assert spec["train_mode"]["train_output_equals_eval_output"]
    module.train()
    with torch.no_grad():
        assert (module(t["input"]) - ref).abs().max().item() <= tol


@pytest.mark.skipif(not CASES, reason="reference fixtures not available")
def test_reference_fixture_float32_within_float32_tolerance():
    spec, state, t = load_reference_case(FIXTURES / "lot_conv3x3_s2")
    module = from_reference(spec, state).float().eval()
    with torch.no_grad():
        out = module(t["input"].float())
    assert out.dtype == torch.float32
    tol = spec["suggested_tolerance"]["output_eval"]["float32_atol"]
    assert (out.double() - t["output_eval"]).abs().max().item() <= tol


# --------------------------------------------------------------------------- reference math, independently
def _dense_operator(layer: LOTConv2d, c_in: int, h: int, w: int) -> torch.Tensor:
    """The layer's linear part as a dense matrix (columns = responses to unit inputs, bias removed)."""
    n = c_in * h * w
    eye = torch.eye(n, dtype=torch.float64).view(n, c_in, h, w)
    with torch.no_grad():
        zero = layer(torch.zeros(1, c_in, h, w, dtype=torch.float64))
        return (layer(eye) - zero).reshape(n, -1).T


def test_square_layer_matches_zero_padded_conv_at_identity_init():
    layer = LOTConv2d(6, 6, 3).double()
    x = torch.randn(2, 6, 7, 7, dtype=torch.float64)
    # identity init: W = V / sqrt(1 + eps) up to Newton-Schulz error, and conv(x, identity) = x
    out = layer(x)
    assert torch.allclose(out, x / math.sqrt(1 + 1e-4), atol=1e-6)


def test_orthogonalize_against_eigendecomposition():
    torch.manual_seed(0)
    v = torch.randn(5, 4, 9, dtype=torch.complex128)
    s = v @ v.mH + 1e-4 * torch.eye(4, dtype=torch.complex128)
    evals, evecs = torch.linalg.eigh(s)
    expected = evecs @ torch.diag_embed(evals.rsqrt().to(v.dtype)) @ evecs.mH @ v
    assert torch.allclose(lot_orthogonalize(v, 40), expected, atol=1e-10)
    # rows orthonormal up to eps
    w = lot_orthogonalize(v, 40)
    assert torch.allclose(w @ w.mH, torch.eye(4, dtype=w.dtype).expand(5, 4, 4), atol=1e-3)


def test_circular_convolution_convention():
    """With V_f = conj(FFT V) * shift(-k//2) the padded-grid operator is conv2d with circular padding."""
    torch.manual_seed(1)
    k, c, n = 3, 2, 6
    v = torch.randn(c, c, k, k, dtype=torch.float64)
    x = torch.randn(1, c, n, n, dtype=torch.float64)
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), v)
    vf = torch.fft.rfft2(v, s=(n, n)).conj() * fft_shift(n, n, -(k // 2), torch.complex128)
    z = torch.einsum("oiuv,biuv->bouv", vf, torch.fft.rfft2(x))
    assert torch.allclose(torch.fft.irfft2(z, s=(n, n)), ref, atol=1e-12)


# --------------------------------------------------------------------------------- (b) proven bounds
LAYER_CASES = [
    # (c_in, c_out, k, stride, (H, W), perturb identity)
    (6, 6, 3, 1, (8, 8), True),
    (4, 8, 3, 2, (8, 8), False),
    (3, 8, 3, 1, (6, 6), False),      # c_out > c_in: columns orthonormal
    (8, 6, 3, 1, (5, 7), False),      # non-square input
    (4, 8, 1, 2, (4, 4), False),
    (16, 5, 1, 1, (1, 1), False),     # head-like
    (4, 4, 5, 1, (6, 6), True),
]


def _random_layer(c_in, c_out, k, stride, size, perturb, seed, iters=10):
    torch.manual_seed(seed)
    layer = LOTConv2d(c_in, c_out, k, stride, eval_iters=iters, train_iters=iters, input_size=size).double()
    with torch.no_grad():
        if perturb:
            layer.weight.add_(0.3 * torch.randn_like(layer.weight))
        layer.bias.uniform_(-0.5, 0.5)
    return layer.eval()


@pytest.mark.parametrize("case", LAYER_CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_bound_holds_for_random_and_optimised_pairs(case, seed):
    c_in, c_out, k, stride, size, perturb = case
    layer = _random_layer(*case, seed=seed)
    bound = layer.lipschitz_bound()
    assert 0.5 < bound <= 1.0 + 1e-9  # Newton-Schulz from below: singular values sigma/sqrt(sigma^2+eps) < 1
    g = torch.Generator().manual_seed(100 + seed)
    shape = (16, c_in, *size)
    x, y = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        num = (layer(x) - layer(y)).flatten(1).norm(dim=1)
    assert bool((num <= bound * (x - y).flatten(1).norm(dim=1) * (1 + 1e-6)).all())
    # gradient ascent on the ratio
    x = x[:4].clone().requires_grad_(True)
    y = y[:4].clone().requires_grad_(True)
    opt = torch.optim.Adam([x, y], lr=0.05)
    for _ in range(25):
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    with torch.no_grad():
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= bound * (1 + 1e-6)


@pytest.mark.parametrize("case", LAYER_CASES)
def test_jacobian_power_iteration_never_exceeds_bound(case):
    c_in, c_out, k, stride, size, perturb = case
    layer = _random_layer(*case, seed=3)
    bound = layer.lipschitz_bound()
    x = torch.randn(1, c_in, *size, dtype=torch.float64)
    sigma = jacobian_power_iteration(layer, x, 60, seed=4)
    assert sigma <= bound * (1 + 1e-6)
    if k == 1:  # no padding: the bound is the operator norm, the power iteration gets close to it
        assert sigma >= bound * (1 - 1e-3)


@pytest.mark.parametrize("case", [(3, 4, 3, 1, (5, 5), False), (4, 4, 3, 1, (4, 6), True), (2, 4, 3, 2, (6, 6), False),
                                  (4, 8, 1, 2, (4, 4), False), (5, 3, 1, 1, (3, 3), False)])
def test_bound_against_dense_operator_norm(case):
    """The layer's exact norm (SVD of its dense matrix) never exceeds the bound; for k = 1 (no pad/crop)
    they are equal, for k > 1 the crop can only lower the norm of the padded-grid operator."""
    layer = _random_layer(*case, seed=5)
    c_in, _, k, _, (h, w), _ = case
    bound = layer.lipschitz_bound()
    exact = float(torch.linalg.matrix_norm(_dense_operator(layer, c_in, h, w), ord=2))
    assert exact <= bound * (1 + 1e-9)
    assert exact >= (bound * (1 - 1e-9) if k == 1 else 0.5 * bound)


def test_bound_depends_on_input_size_and_follows_last_forward():
    layer = _random_layer(4, 4, 3, 1, (6, 6), True, seed=6)
    b6, b9 = layer.lipschitz_bound(6), layer.lipschitz_bound(9)
    assert layer.lipschitz_bound() == b6  # construction size
    layer(torch.randn(1, 4, 9, 9, dtype=torch.float64))
    assert layer.lipschitz_bound() == b9
    assert b6 != b9
    with pytest.raises(ValueError):
        LOTConv2d(4, 4, 3).lipschitz_bound()


def test_model_bound_includes_normalisation():
    torch.manual_seed(0)
    model = LOTLipConvNet(block_size=1, init_channels=2, num_classes=10).double().eval()
    bound = model.lipschitz_bound()
    prod = 1.0
    for m in model.modules():
        if isinstance(m, LOTConv2d):
            prod *= m.lipschitz_bound()
    assert model.normalize.lipschitz_bound() == pytest.approx(1 / SOC_STD, rel=1e-7)  # float32 std buffer
    assert bound == pytest.approx(prod * model.normalize.lipschitz_bound(), rel=1e-12)
    assert bound <= model.normalize.lipschitz_bound() * (1 + 1e-9)
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    y = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    with torch.no_grad():
        d_out = (model(x) - model(y)).norm(dim=1)
    assert bool((d_out <= bound * (x - y).flatten(1).norm(dim=1) * (1 + 1e-6)).all())


# -------------------------------------------------------------------------------------------- (c) GNP
def test_square_pointwise_lot_preserves_norms():
    torch.manual_seed(7)
    layer = LOTConv2d(12, 12, 1, eval_iters=30).double().eval()
    with torch.no_grad():
        layer.weight.add_(0.2 * torch.randn_like(layer.weight))
    # singular values sigma / sqrt(sigma^2 + eps): ~1 unless V is nearly singular
    assert float(torch.linalg.svdvals(layer.weight.detach()[:, :, 0, 0]).min()) > 0.1
    x, y = torch.randn(8, 12, 4, 4, dtype=torch.float64), torch.randn(8, 12, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert bool(((ratio > 1 - 1e-2) & (ratio <= 1 + 1e-9)).all())
    # gradient norm preservation: ||J^T g|| = ||g||
    xg = x.clone().requires_grad_(True)
    g = torch.randn(8, 12, 4, 4, dtype=torch.float64)
    (gx,) = torch.autograd.grad(layer(xg), xg, g)
    assert torch.allclose(gx.flatten(1).norm(dim=1), g.flatten(1).norm(dim=1), rtol=1e-2)


def test_square_lot_frequency_matrices_are_near_orthogonal():
    layer = _random_layer(6, 6, 3, 1, (8, 8), True, seed=8, iters=30)
    sv = torch.linalg.svdvals(layer.realised_weights())
    assert float(sv.max()) <= 1 + 1e-9
    # converged: singular values sigma / sqrt(sigma^2 + eps) of the unconstrained V_f (a phase does not
    # change singular values, so the shift is not needed here)
    vf = torch.fft.rfft2(layer.weight.detach(), s=(10, 10)).permute(2, 3, 0, 1).reshape(-1, 6, 6)
    sigma = torch.linalg.svdvals(vf)
    assert torch.allclose(sv, sigma / (sigma**2 + 1e-4).sqrt(), atol=1e-6)
    assert float(sv.median()) > 1 - 1e-3


# --------------------------------------------------------------------------------------- (d) caches
def _fresh_like(layer: LOTConv2d) -> LOTConv2d:
    fresh = LOTConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride).double()
    fresh.load_state_dict(layer.state_dict())
    return fresh.eval()


def test_cache_is_used_and_never_stale():
    layer = _random_layer(4, 8, 3, 2, (8, 8), False, seed=9)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out1 = layer(x)
        assert layer._cache._value is not None  # eval forward filled the cache
        assert torch.equal(layer(x), out1)
        # in-place weight change
        layer.weight.add_(0.1)
        assert torch.equal(layer(x), _fresh_like(layer)(x))
        # load another state
        other = _random_layer(4, 8, 3, 2, (8, 8), False, seed=10)
        layer.load_state_dict(other.state_dict())
        assert torch.equal(layer(x), other(x))
        # another input size
        x2 = torch.randn(2, 4, 12, 12, dtype=torch.float64)
        assert torch.equal(layer(x2), _fresh_like(layer)(x2))
        # train() / eval() round trip and .to()
        layer.train().eval()
        assert torch.equal(layer(x), other(x))
        out32 = layer.float()(x.float())
        fresh32 = _fresh_like(layer).float()
        assert torch.equal(out32, fresh32(x.float()))


def test_eval_cache_keeps_input_gradients():
    layer = _random_layer(4, 4, 3, 1, (6, 6), True, seed=11)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is None


def test_training_mode_gradients_reach_the_weights():
    layer = LOTConv2d(4, 8, 3, 2).train()
    layer(torch.randn(2, 4, 8, 8)).square().sum().backward()
    assert layer.weight.grad is not None and float(layer.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("k,stride", [(3, 2), (3, 1), (1, 2)])
def test_gradients_match_finite_differences(k, stride):
    """The hand-written backward / jvp of the frequency-domain product against finite differences."""
    torch.manual_seed(16)
    layer = LOTConv2d(1, 2, k, stride, train_iters=2).double().train()
    w0 = layer.weight.detach().clone().requires_grad_(True)
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)

    def f(x, w):
        return torch.func.functional_call(layer, {"weight": w, "bias": layer.bias.detach()}, (x,))

    assert torch.autograd.gradcheck(f, (x, w0), check_forward_ad=True)


def test_train_and_eval_iteration_counts_are_separate():
    torch.manual_seed(12)
    layer = LOTConv2d(6, 6, 3, train_iters=1, eval_iters=20, input_size=6).double()
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))
    x = torch.randn(1, 6, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        out_train = layer.train()(x)
        out_eval = layer.eval()(x)
    assert not torch.allclose(out_train, out_eval, atol=1e-6)


# ---------------------------------------------------------------------------------------- (e) models
LOT_ARCHS = sorted(a for a in ARCHS if ARCHS[a].family == "lot")


def test_registry_has_every_depth():
    for n in range(5, 45, 5):
        assert f"lot_lipconvnet{n}" in LOT_ARCHS and f"lot_lipresnet{n}" in LOT_ARCHS
    assert "lot_xs" in LOT_ARCHS and ARCHS["lot_xs"].compact
    assert ARCHS["lot_lipconvnet25"].paper_params == 27.0 and ARCHS["lot_lipconvnet25"].paper_params_note


@pytest.mark.parametrize("arch", LOT_ARCHS)
def test_registered_model_builds_and_runs(arch):
    import timm

    # full width: structure only (the parameter count is checked below); small width: forward
    kwargs = {} if arch == "lot_xs" else {"init_channels": 2}
    for num_classes in (10, 100):
        model = timm.create_model(arch, num_classes=num_classes, **kwargs).eval()
        with torch.no_grad():
            out = model(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, num_classes) and bool(torch.isfinite(out).all())
        assert model.head_rule == "lipschitz"
    lln = timm.create_model(arch, num_classes=100, lln=True, **kwargs)
    assert lln.head_rule == "lln" and lln(torch.rand(1, 3, 32, 32)).shape == (1, 100)


# Parameter counts computed from the LOT repo's code (notes/anchors-models.md §2.3, CIFAR-10, LOT head).
@pytest.mark.parametrize("depth,millions", [(5, 8.31), (10, 11.51), (25, 20.94), (40, 30.37)])
def test_full_width_parameter_counts(depth, millions):
    import timm

    with torch.device("meta"):
        model = timm.create_model(f"lot_lipconvnet{depth}")
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6, 2) == millions


def test_lot_xs_is_compact():
    import timm

    model = timm.create_model("lot_xs")
    assert sum(p.numel() for p in model.parameters()) <= 3_000_000


def test_residual_stage_structure_and_bound():
    model = LOTLipConvNet(block_size=4, init_channels=2, residual=True).double().eval()
    stage = model.features[0]
    assert len(stage.blocks) == 4 and float(stage.mix_logit) == 0.0
    b = [blk.lipschitz_bound() for blk in stage.blocks]
    assert stage.lipschitz_bound() == pytest.approx(b[0] * (0.5 + 0.5 * b[1]) * (0.5 + 0.5 * b[2]) * b[3])


def test_convert_state_dict_key_maps():
    plain = LOTLipConvNet(block_size=2, init_channels=2)
    authors = {f"module.layer{i}.{j}.conv.{p}": None for i in range(1, 6) for j in range(2) for p in ("weight", "bias")}
    authors.update({"module.last_layer.weight": None, "module.last_layer.bias": None})
    mapped = convert_state_dict({k: torch.zeros(1) for k in authors}, "lot", plain)
    assert set(mapped) == set(plain.state_dict())
    res = LOTLipConvNet(block_size=3, init_channels=2, residual=True)
    authors = {f"layer{i}.res_lamda_logit" for i in range(1, 6)}
    for i in range(1, 6):
        for blk in ("in_block", "hidden_block.0", "out_block"):
            authors |= {f"layer{i}.{blk}.conv.weight", f"layer{i}.{blk}.conv.bias"}
    authors |= {"last_layer.weight", "last_layer.bias"}
    mapped = convert_state_dict({k: torch.zeros(1) for k in authors}, "lot", res)
    assert set(mapped) == set(res.state_dict())
    assert "features.2.blocks.1.conv.weight" in mapped and "features.4.blocks.2.conv.bias" in mapped


def test_load_checkpoint_lot_format(tmp_path):
    torch.manual_seed(13)
    src = LOTLipConvNet(block_size=1, init_channels=2).eval()
    authors = {}
    for k, v in src.state_dict().items():
        if k.startswith("features."):
            _, stage, blk, rest = k.split(".", 3)
            authors[f"module.layer{int(stage) + 1}.{blk}.{rest.replace('act.', 'activation.')}"] = v
        elif k.startswith("head."):
            authors["module.last_layer." + k[5:]] = v
    path = tmp_path / "last.pth"
    torch.save(authors, path)
    dst = load_checkpoint(LOTLipConvNet(block_size=1, init_channels=2), path, checkpoint_format="lot").eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


@pytest.mark.skipif(not hasattr(activations, "HouseHolder"), reason="HH1 not available yet")
def test_hh1_activation_model():
    model = LOTLipConvNet(block_size=1, init_channels=2, activation="hh1").eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert any(k.endswith("act.theta") for k in model.state_dict())


# ----------------------------------------------------------------------------- (f) autocast, precision
def test_bf16_autocast_channels_last_forward():
    import timm

    torch.manual_seed(14)
    model = timm.create_model("lot_xs").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.to(memory_format=torch.channels_last))
    # the parametrisation and the frequency-domain products stay in float32 under autocast
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)


def test_bf16_autocast_training_step():
    model = LOTLipConvNet(block_size=1, init_channels=2).train().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_float64_parametrisation_option():
    torch.manual_seed(15)
    a = LOTConv2d(4, 8, 3, 2, input_size=8)
    b = LOTConv2d(4, 8, 3, 2, input_size=8, ortho_dtype=torch.float64)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    wa, wb = a.realised_weights(), b.realised_weights()
    assert wa.dtype == wb.dtype == torch.complex64  # applied in the input's precision
    assert torch.allclose(wa, wb, atol=1e-4)
    assert b.lipschitz_bound() <= 1 + 1e-6
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(a(x), b(x), atol=1e-4)


def test_lot_linear_head_shapes():
    head = LOTLinear(16, 5).eval()
    assert head(torch.randn(3, 16)).shape == (3, 5)
    assert head(torch.randn(3, 16, 1, 1)).shape == (3, 5)
    w = head.realised_weights()
    assert torch.allclose(w @ w.T, torch.eye(5), atol=1e-3)  # rows orthonormal up to eps / iterations


@pytest.mark.skipif("lipconvnet5_lot_maxmin" not in CASES, reason="reference fixtures not available")
def test_whole_model_case_through_create_model_checkpoint_format(tmp_path):
    """The LOT repo's LipConvNet-5 state (its key names, DataParallel prefix) loads by ``checkpoint_format='lot'``
    and the lipzoo model, fed the un-normalised image, reproduces the recorded logits."""
    spec, state, t = load_reference_case(FIXTURES / "lipconvnet5_lot_maxmin")
    path = tmp_path / "lot_authors.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    kw = spec["constructor"]["kwargs"]
    model = lipzoo.create_model("lot_lipconvnet5", init_channels=kw["init_channels"], num_classes=kw["num_classes"],
                                checkpoint_path=path, checkpoint_format="lot").eval()
    mean = torch.tensor((0.4914, 0.4822, 0.4465), dtype=torch.float64).view(1, 3, 1, 1)
    image = t["input"] * 0.2507 + mean  # the recorded input is already normalised; lipzoo normalises inside
    with torch.no_grad():
        out = model(image.float()).double()
    assert (out - t["output_eval"]).abs().max().item() <= spec["suggested_tolerance"]["output_eval"]["float32_atol"]
