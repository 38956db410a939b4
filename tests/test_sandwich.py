"""Sandwich (LBDN) layers, models and converter: reference fixtures, proven bounds, caches, alpha, autocast."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lipzoo
from lipzoo.convert import from_reference, load_checkpoint
from lipzoo.layers.sandwich import (
    SandwichConv, SandwichConv1, SandwichConv1Lin, SandwichFc, SandwichLin, cayley, fft_kernel, sandwich_bound,
)
from lipzoo.models.sandwich import SandwichNet
from _fixtures import load_reference_case

FIXTURES = Path("/work/shared/fixtures/reference/sandwich")
CASES = sorted(p.stem for p in FIXTURES.glob("*.json")) if FIXTURES.exists() else []
REL = 1e-6  # relative slack of the Lipschitz checks (float64 evaluation)


# ----------------------------------------------------------------------------------------------------------------
# (a) reference fixtures


@pytest.mark.skipif(not CASES, reason="reference fixtures not available")
@pytest.mark.parametrize("case", CASES)
def test_fixture_eval_output(case):
    spec, state, tensors = load_reference_case(FIXTURES / case)
    module = from_reference(spec, state)
    with torch.no_grad():
        out = module(tensors["input"])
    ref = tensors["output_eval"]
    assert out.dtype == torch.float64 and out.shape == ref.shape
    tol = spec["suggested_tolerance"]["output_eval"]["float64_atol"]
    assert (out - ref).abs().max().item() <= tol
    # the authors' train-mode output equals eval here (no train-only state); ours too
    if spec["train_mode"]["train_output_equals_eval_output"]:
        module.train()
        with torch.no_grad():
            assert (module(tensors["input"]) - ref).abs().max().item() <= tol


@pytest.mark.skipif("kwl_small_img8" not in CASES, reason="reference fixtures not available")
def test_lbdn_checkpoint_prefix_missing_alpha_and_load_checkpoint(tmp_path):
    spec, state, tensors = load_reference_case(FIXTURES / "kwl_small_img8")
    ref = from_reference(spec, state)
    # a DataParallel-prefixed checkpoint saved before any forward has no conv alpha (authors' lazy init)
    conv_ids = [0, 1, 2, 3]
    ckpt = {f"module.{k}": v for k, v in state.items() if not any(k == f"model.{i}.alpha" for i in conv_ids)}
    path = tmp_path / "model.ckpt"
    torch.save(ckpt, path)
    model = SandwichNet(**{**lipzoo.models.sandwich.kwl_config(1, gamma=2.0), "normalized": False},
                        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), input_size=8, num_classes=10).double()
    load_checkpoint(model, path, checkpoint_format="lbdn")
    # the filled-in alpha is ||W_hat||_F on the layer's grid; |shift| = 1, so it is ||rfft2(W, grid)||_F
    for i, grid in zip(conv_ids, (8, 4, 4, 2)):
        w = state[f"model.{i}.weight"].double()
        expected = torch.fft.rfft2(w, s=(grid, grid)).abs().square().sum().sqrt()
        assert torch.allclose(model.features[i].alpha, expected, rtol=1e-12)
    # with the recorded alphas restored, the outputs are the reference's
    sd = model.state_dict()
    for i in conv_ids:
        sd[f"features.{i}.alpha"] = state[f"model.{i}.alpha"].double()
    model.load_state_dict(sd)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(tensors["input"]), ref(tensors["input"]), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------------------------
# Cayley transform and the FFT shift convention (independent formulas)


@pytest.mark.parametrize("shape,is_complex", [((5, 9), False), ((9, 5), False), ((3, 4, 7), True), ((3, 7, 4), True)])
def test_cayley_orthonormal_and_definition(shape, is_complex):
    g = torch.Generator().manual_seed(0)
    dtype = torch.complex128 if is_complex else torch.float64
    W = torch.randn(*shape, generator=g, dtype=dtype)
    Q = cayley(W)
    rows, cols = shape[-2:]
    eye = torch.eye(min(rows, cols), dtype=dtype)
    gram = Q @ Q.mH if cols > rows else Q.mH @ Q
    assert torch.allclose(gram, eye.expand_as(gram), atol=1e-12)
    # definition on the tall form (plain transpose for wide inputs)
    T = W.transpose(-2, -1) if cols > rows else W
    c = T.shape[-1]
    U, V = T[..., :c, :], T[..., c:, :]
    A = U - U.mH + V.mH @ V
    I = torch.eye(c, dtype=dtype)
    top = torch.linalg.solve(I + A, I - A)
    bottom = -2 * torch.linalg.solve((I + A).mT, V.mT).mT
    expected = torch.cat((top, bottom), dim=-2)
    expected = expected.transpose(-2, -1) if cols > rows else expected
    assert torch.allclose(Q, expected, atol=1e-12)


@pytest.mark.timeout(120, method="thread")
def test_cayley_of_a_batch_of_large_matrices_with_two_threads():
    """oneMKL's batched LU fails for >128-wide batches with 2 threads (torch 2.14 CPU): cayley must not hang."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        W = torch.randn(3, 256, 384, generator=torch.Generator().manual_seed(0), dtype=torch.complex64) / 64
        Q = cayley(W)
    finally:
        torch.set_num_threads(before)
    gram = Q @ Q.mH
    assert torch.allclose(gram, torch.eye(256, dtype=gram.dtype).expand_as(gram), atol=1e-4)


@pytest.mark.parametrize("k,grid", [(3, (8, 8)), (3, (6, 9)), (5, (7, 7)), (1, (4, 6)), (2, (6, 6))])
def test_fft_kernel_is_circular_same_correlation(k, grid):
    g = torch.Generator().manual_seed(k)
    w = torch.randn(4, 3, k, k, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, *grid, generator=g, dtype=torch.float64)
    H, W = grid
    # the authors' definition: shift * conj(rfft2(w)), shift = exp(2 pi i (-s)(u/H + v/W))
    s = (k - 1) // 2
    u = torch.arange(H, dtype=torch.float64).view(-1, 1) / H
    v = torch.arange(W // 2 + 1, dtype=torch.float64).view(1, -1) / W
    shift = torch.exp(2j * math.pi * (-s) * (u + v))
    authors = (shift * torch.fft.rfft2(w, s=grid).conj()).reshape(4, 3, -1).permute(2, 0, 1)
    wf = fft_kernel(w, grid)
    assert torch.allclose(wf, authors, atol=1e-12)
    # spectral product == cross-correlation with circular padding, kernel centred at s
    xf = torch.fft.rfft2(x).permute(2, 3, 0, 1).reshape(-1, 2, 3)
    y = torch.fft.irfft2((xf @ wf.mT).reshape(H, W // 2 + 1, 2, 4).permute(2, 3, 0, 1), s=grid)
    xp = F.pad(x, (s, k - 1 - s, s, k - 1 - s), mode="circular")
    assert torch.allclose(y, F.conv2d(xp, w), atol=1e-12)


def _full_plane_sandwich_conv(m: SandwichConv, x: torch.Tensor) -> torch.Tensor:
    """Independent float64 evaluation with complex fft2 over the full spectrum (any H x W)."""
    w = m.weight.detach().double()
    k = w.shape[-1]
    if m.stride == 2:
        x = F.pixel_unshuffle(x, 2)
    H, W = x.shape[-2:]
    s = (k - 1) // 2
    u = torch.arange(H, dtype=torch.float64).view(-1, 1) / H
    v = torch.arange(W, dtype=torch.float64).view(1, -1) / W
    full = torch.exp(2j * math.pi * (-s) * (u + v)) * torch.fft.fft2(w, s=(H, W)).conj()  # (cout, chn, H, W)
    half_norm = full[..., : W // 2 + 1].abs().square().sum().sqrt()
    Q = cayley(m.alpha.detach().double() * full.permute(2, 3, 0, 1) / half_norm)  # (H, W, cout, chn)
    cout = m.out_channels
    A, B = Q[..., :cout], Q[..., cout:]
    xf = torch.fft.fft2(x * m.scale).permute(2, 3, 1, 0)  # (H, W, C, N)
    h = torch.fft.ifft2((math.sqrt(2) * B @ xf).permute(3, 2, 0, 1)).real
    h = F.relu(h + (torch.exp(m.psi) * m.bias).detach().double().view(1, -1, 1, 1))
    hf = torch.fft.fft2(h).permute(2, 3, 1, 0)
    return torch.fft.ifft2((math.sqrt(2) * A.mH @ hf).permute(3, 2, 0, 1)).real


def _perturb(m: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name == "psi":
                p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif name == "alpha":
                p.mul_(0.7 + 0.6 * torch.rand((), generator=g, dtype=p.dtype))
            elif name == "bias":
                p.copy_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("cin,cout,k,stride,size", [(3, 5, 3, 1, (5, 7)), (4, 4, 3, 1, (6, 6)), (2, 3, 3, 2, (6, 10)),
                                                    (3, 2, 5, 1, (7, 6)), (3, 4, 1, 1, (5, 4))])
def test_conv_matches_full_spectrum_definition(cin, cout, k, stride, size):
    torch.manual_seed(1)
    m = SandwichConv(cin, cout, k, stride=stride, scale=1.3).double().eval()
    _perturb(m, 2)
    x = torch.randn(2, cin, *size, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(m(x), _full_plane_sandwich_conv(m, x), atol=1e-11)


# ----------------------------------------------------------------------------------------------------------------
# (b) the proven bound holds: random pairs, optimised pairs, Jacobian power iteration


def _layer_cases():
    return [
        ("fc", lambda: SandwichFc(7, 5), (7,), None),
        ("fc_wide_scaled", lambda: SandwichFc(4, 9, scale=1.7), (4,), None),
        ("lin", lambda: SandwichLin(9, 4), (9,), None),
        ("lin_ab", lambda: SandwichLin(6, 6, AB=True, scale=0.8), (6,), None),
        ("conv1", lambda: SandwichConv1(5, 3), (5, 4, 4), None),
        ("conv1lin", lambda: SandwichConv1Lin(3, 6), (3, 4, 4), None),
        ("conv_s1", lambda: SandwichConv(3, 5, 3), (3, 8, 8), (8, 8)),
        ("conv_s1_nonsquare_scaled", lambda: SandwichConv(4, 2, 3, scale=1.4), (4, 6, 9), (6, 9)),
        ("conv_s2", lambda: SandwichConv(2, 6, 3, stride=2), (2, 8, 8), (8, 8)),
        ("conv_k5_odd", lambda: SandwichConv(3, 3, 5), (3, 7, 7), (7, 7)),
    ]


def _bound(m, size):
    return m.lipschitz_bound(size) if isinstance(m, SandwichConv) else m.lipschitz_bound()


def _jacobian_norm_lower_bound(f, x: torch.Tensor, iters: int = 25) -> float:
    g = torch.Generator().manual_seed(3)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    v = v / v.norm()
    best = 0.0
    for _ in range(iters):
        _, jv = torch.func.jvp(f, (x,), (v,))
        best = max(best, jv.norm().item())
        _, vjp_fn = torch.func.vjp(f, x)
        (w,) = vjp_fn(jv)
        v = w / w.norm()
    return best


@pytest.mark.parametrize("name,make,shape,size", _layer_cases(), ids=[c[0] for c in _layer_cases()])
def test_lipschitz_bound_holds(name, make, shape, size):
    torch.manual_seed(10)
    m = make().double().eval()
    _perturb(m, 11)
    bound = _bound(m, size)
    scale = abs(getattr(m, "scale", 1.0))
    assert math.isfinite(bound) and bound <= scale * (1 + 1e-9)  # float64 parametrisation: 1 up to rounding
    g = torch.Generator().manual_seed(12)
    # random pairs at several distances
    x = torch.randn(64, *shape, generator=g, dtype=torch.float64)
    for eps in (3.0, 0.3, 1e-3):
        y = x + eps * torch.randn(x.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            num = (m(x) - m(y)).flatten(1).norm(dim=1)
        den = (x - y).flatten(1).norm(dim=1)
        assert bool((num <= bound * den * (1 + REL)).all())
    # gradient ascent on the ratio
    xa = torch.randn(8, *shape, generator=g, dtype=torch.float64).requires_grad_()
    ya = (xa.detach() + 0.1 * torch.randn(xa.shape, generator=g, dtype=torch.float64)).requires_grad_()
    opt = torch.optim.Adam([xa, ya], lr=0.02)
    worst = 0.0
    for _ in range(40):
        ratio = (m(xa) - m(ya)).flatten(1).norm(dim=1) / (xa - ya).flatten(1).norm(dim=1)
        worst = max(worst, ratio.max().item())
        opt.zero_grad()
        (-ratio.sum()).backward()
        opt.step()
    assert worst <= bound * (1 + REL)
    assert worst >= 0.5 * scale * (0.5 if "lin" in name else 1.0)  # the ascent really probes the map
    # power iteration on the Jacobian at random points
    for i in range(3):
        x0 = torch.randn(1, *shape, generator=g, dtype=torch.float64)
        assert _jacobian_norm_lower_bound(m, x0) <= bound * (1 + REL)


def test_bound_detects_a_non_orthogonal_realisation():
    """The bound is computed from the realised factors: inflating them must raise it above the true Lipschitz
    constant of the realised map (which the Jacobian power iteration measures)."""

    class Inflated(SandwichFc):
        def _compute_factors(self):
            A, B = super()._compute_factors()
            return 1.3 * A, 1.3 * B

    torch.manual_seed(0)
    m = Inflated(6, 6).double().eval()
    bound = m.lipschitz_bound()
    assert bound > 1.5
    x0 = torch.rand(1, 6, dtype=torch.float64) + 1.0
    measured = _jacobian_norm_lower_bound(m, x0, iters=40)
    assert measured > 1.1 and measured <= bound * (1 + REL)
    # and sandwich_bound of exact orthonormal factors is 1
    Q = torch.linalg.qr(torch.randn(9, 4, dtype=torch.float64))[0].T
    A, B = Q[:, :4], Q[:, 4:]
    assert sandwich_bound(math.sqrt(2) * B, math.sqrt(2) * A.T) == pytest.approx(1.0, abs=1e-12)
    assert sandwich_bound(1.01 * math.sqrt(2) * B, math.sqrt(2) * A.T) > 1.0 + 1e-3


def test_float32_bound_is_tight_and_sound():
    torch.manual_seed(5)
    cases = ((SandwichFc(64, 48), None), (SandwichConv(8, 16, 3), (8, 8)), (SandwichConv(8, 8, 3, stride=2), (8, 8)))
    for m, size in cases:
        m.eval()
        b = _bound(m, size)
        assert 1.0 <= b <= 1.0 + 1e-4
    # the float32 factors evaluated exactly (float64 arithmetic) respect the bound
    m = SandwichFc(32, 32).eval()
    _perturb(m, 6)
    b = m.lipschitz_bound()
    x0 = torch.randn(1, 32, dtype=torch.float64)
    assert _jacobian_norm_lower_bound(m, x0) <= b * (1 + REL)


def test_model_bound_against_jacobian():
    torch.manual_seed(7)
    m = SandwichNet(conv_channels=(4, 6), fc_features=(12,), head="lin", gamma=2.0, normalized=True, input_size=8,
                    num_classes=5).double().eval()
    for layer in list(m.features) + [m.head]:
        _perturb(layer, 8)
    bound = m.lipschitz_bound()
    # gamma / min(std), up to float64 rounding (the SandwichLin head has ||B|| <= 1)
    assert bound <= 2.0 / float(m.normalize.std.min()) * (1 + 1e-9)
    x0 = torch.rand(1, 3, 8, 8, dtype=torch.float64)
    assert _jacobian_norm_lower_bound(m, x0) <= bound * (1 + REL)


# ----------------------------------------------------------------------------------------------------------------
# (c) alpha is a trained parameter in every layer


@pytest.mark.parametrize("make,shape", [
    (lambda: SandwichFc(5, 4), (5,)), (lambda: SandwichLin(5, 4), (5,)), (lambda: SandwichLin(5, 4, AB=True), (5,)),
    (lambda: SandwichConv1(3, 4), (3, 4, 4)), (lambda: SandwichConv1Lin(3, 4), (3, 4, 4)),
    (lambda: SandwichConv(3, 4, 3), (3, 8, 8)), (lambda: SandwichConv(3, 4, 3, stride=2), (3, 8, 8)),
])
def test_alpha_is_trained(make, shape):
    torch.manual_seed(0)
    m = make()
    opt = torch.optim.SGD(m.parameters(), lr=0.5)  # built right after construction, as the authors' train.py
    assert any(p is m.alpha for group in opt.param_groups for p in group["params"])
    assert m.alpha.dim() == 0 and m.state_dict()["alpha"].shape == ()
    before = m.alpha.detach().clone()
    x = torch.randn(4, *shape)
    target = torch.randn_like(m(x))
    F.mse_loss(m(x), target).backward()
    assert m.alpha.grad is not None and m.alpha.grad.abs().item() > 0
    opt.step()
    assert not torch.equal(m.alpha.detach(), before)


def test_model_alphas_are_parameters():
    m = lipzoo.create_model("sandwich_xs")
    names = {n for n, _ in m.named_parameters()}
    convs = [i for i, layer in enumerate(m.features) if isinstance(layer, SandwichConv)]
    assert len(convs) == 6 and all(f"features.{i}.alpha" in names for i in convs)


# ----------------------------------------------------------------------------------------------------------------
# (d) caches never go stale


def _fresh_like(m, make):
    fresh = make().to(next(m.parameters()).dtype)
    fresh.load_state_dict(m.state_dict())
    return fresh.eval()


@pytest.mark.parametrize("make,shape", [
    (lambda: SandwichFc(6, 5), (6,)), (lambda: SandwichLin(6, 5, AB=True), (6,)),
    (lambda: SandwichConv1(4, 3), (4, 6, 6)), (lambda: SandwichConv(3, 4, 3), (3, 8, 8)),
    (lambda: SandwichConv(2, 3, 3, stride=2), (2, 8, 8)),
])
def test_cache_invalidation(make, shape):
    torch.manual_seed(0)
    m = make().double().eval()
    x = torch.randn(3, *shape, dtype=torch.float64)
    with torch.no_grad():
        y0 = m(x)
        assert torch.equal(m(x), y0)  # cached path is deterministic
        # in-place weight change (not a rescaling: Q depends on W / ||W||_F only)
        m.weight.add_(0.3 * torch.randn(m.weight.shape, dtype=m.weight.dtype))
        y1 = m(x)
        assert not torch.allclose(y1, y0)
        assert torch.allclose(y1, _fresh_like(m, make)(x), atol=1e-13, rtol=0)
        # in-place alpha change
        m.alpha.mul_(0.8)
        assert torch.allclose(m(x), _fresh_like(m, make)(x), atol=1e-13, rtol=0)
        # load another state
        other = make().double()
        m.load_state_dict(other.state_dict())
        assert torch.allclose(m(x), _fresh_like(other, make)(x), atol=1e-13, rtol=0)
        # .to(): new storage
        m32 = m.float()
        assert torch.allclose(m32(x.float()), _fresh_like(m32, make)(x.float()), atol=1e-6, rtol=0)


def test_conv_cache_follows_input_size():
    torch.manual_seed(0)
    make = lambda: SandwichConv(3, 4, 3)  # noqa: E731
    m = make().double().eval()
    _perturb(m, 1)
    fresh = _fresh_like(m, make)
    with torch.no_grad():
        for size in (8, 12, 8, (6, 10)):
            hw = (size, size) if isinstance(size, int) else size
            x = torch.randn(2, 3, *hw, dtype=torch.float64)
            fresh_out = _fresh_like(m, make)(x)
            assert torch.allclose(m(x), fresh_out, atol=1e-13, rtol=0)
        # fresh module that only ever saw 8x8 still agrees on 12x12 (no first-size shift cache)
        x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
        fresh(torch.randn(1, 3, 8, 8, dtype=torch.float64))
        assert torch.allclose(fresh(x), _full_plane_sandwich_conv(fresh, x), atol=1e-11)


def test_cache_cleared_by_train_toggle_and_eval_gradients_reach_input():
    m = SandwichConv(2, 3, 3).eval()
    x = torch.randn(2, 2, 8, 8, requires_grad=True)
    m(x).sum().backward()
    assert x.grad is not None and m.weight.grad is None  # eval: cached parametrisation, input gradients only
    m.train()
    m(x).sum().backward()
    assert m.weight.grad is not None


# ----------------------------------------------------------------------------------------------------------------
# (e) registered models


# forward passes of the big models cost seconds (the Cayley transform of a 2048 x 6144 weight): one quick
# forward per size class here, the rest under the slow marker
QUICK = {("sandwich_xs", 10), ("sandwich_xs", 100), ("sandwich_s", 10), ("sandwich_s", 100), ("sandwich_m", 10),
         ("sandwich_dnn", 100)}
# parameters computed from the authors' code (research notes 4.2), in millions, (CIFAR-10, CIFAR-100)
PARAMS = {"sandwich_s": (2.98, 3.04), "sandwich_m": (11.91, 12.01), "sandwich_l": (47.61, 47.81),
          "sandwich_dnn": (25.71, 25.81)}


@pytest.mark.parametrize("name", ["sandwich_xs", "sandwich_s", "sandwich_m", "sandwich_l", "sandwich_dnn"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_registered_models(name, num_classes):
    m = lipzoo.create_model(name, num_classes=num_classes)
    assert isinstance(m, SandwichNet) and m.num_classes == num_classes
    n = sum(p.numel() for p in m.parameters()) / 1e6
    if name in PARAMS:
        assert n == pytest.approx(PARAMS[name][num_classes == 100], abs=0.006)
    else:
        assert n <= 3.0
    certified = name in ("sandwich_dnn", "sandwich_xs")
    assert m.head_rule == ("lln" if certified else "lipschitz")
    std = m.normalize.std.flatten()
    assert bool((std == 1).all()) == certified  # certified models only centre the input
    if (name, num_classes) in QUICK:
        with torch.no_grad():
            out = m.eval()(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, num_classes) and bool(torch.isfinite(out).all())


def test_xs_bound_and_gamma():
    m = lipzoo.create_model("sandwich_xs")
    assert 1.0 <= m.lipschitz_bound() <= 1.0 + 1e-3
    s = lipzoo.create_model("sandwich_s", gamma=1.0)
    assert s.lipschitz_bound() <= 1.0 / float(s.normalize.std.min()) * (1 + 1e-3)


# ----------------------------------------------------------------------------------------------------------------
# (f) bf16 autocast + channels_last


def test_autocast_bf16_channels_last():
    torch.manual_seed(0)
    m = lipzoo.create_model("sandwich_xs").train()
    x = torch.rand(4, 3, 32, 32)
    ref = m(x).detach()
    m = m.to(memory_format=torch.channels_last)
    xc = x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(xc)
        conv = m.features[0]
        A, B = conv.factors(32)
        Afc, Bfc = m.features[-1].factors()
    assert A.dtype == torch.complex64 and Afc.dtype == torch.float32  # parametrisation stays float32
    assert out.shape == (4, 10) and bool(torch.isfinite(out).all())
    assert (out.float() - ref).abs().max().item() <= 0.05 * ref.abs().max().item() + 1e-2
    out.float().sum().backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if n.endswith("alpha"))
