"""Certificates cannot be fooled by the state around the math: stale caches, reduced precision, bad inputs.

Every test here failed on the code before the fix (issue "Certificates that cannot be fooled", items 1-3), and
the certifier tests run on every available device (issue "lipzoo on GPUs").
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import lipzoo
from lipzoo import certification as C
from lipzoo.layers.heads import LLN
from lipzoo.models._base import LipschitzClassifier

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# one random model per head rule (and per family of parametrisation cache)
MODELS = {
    "sll_xs": {},  # lln
    "sandwich_xs": {},  # lln, Cayley caches, `scale` attributes
    "lot_xs": {},  # lipschitz, FFT-grid and dtype dependent bound
    "soc_xs": {"head": "mlp"},  # mlp_curvature
}


def _images(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(arch: str, seed: int = 0) -> LipschitzClassifier:
    torch.manual_seed(seed)
    m = lipzoo.create_model(arch, **MODELS[arch]).eval()
    with torch.no_grad():  # move the weights away from their (often orthogonal) initialisation
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def _fresh_copy(model: LipschitzClassifier, arch: str, attributes: list[tuple[str, str, float]]) -> LipschitzClassifier:
    """A newly built model with ``model``'s state and the same attribute changes: no cache has ever seen it."""
    fresh = lipzoo.create_model(arch, **MODELS[arch]).eval()
    fresh.load_state_dict(model.state_dict())
    for name, attr, value in attributes:
        setattr(fresh.get_submodule(name), attr, value)
    return fresh


def _certify_against_fresh(model: LipschitzClassifier, arch: str, x: torch.Tensor,
                           attributes: list[tuple[str, str, float]] = ()) -> tuple[C.CertificationResult, C.CertificationResult]:
    """Certify ``model`` and a fresh copy with the fresh copy's predictions as labels (so radii are non-zero)."""
    fresh = _fresh_copy(model, arch, list(attributes))
    with torch.no_grad():
        y = fresh(x).argmax(dim=1)
    return lipzoo.certify(model, x, y), lipzoo.certify(fresh, x, y)


def _assert_same_certificate(a: C.CertificationResult, b: C.CertificationResult) -> None:
    assert b.radii.max() > 0  # something to compare
    assert a.lipschitz_bound == pytest.approx(b.lipschitz_bound, rel=1e-12)
    torch.testing.assert_close(a.radii, b.radii, rtol=1e-9, atol=1e-12)
    assert torch.equal(a.predictions, b.predictions)


# ------------------------------------------------------------------------------------ 1. stale caches
def test_data_write_to_a_kernel_is_seen_by_bound_and_certificate():
    """sll_xs: ``.data.mul_(3)`` bumps no version counter; the certificate used the old rescaling (the map's true
    ||J|| was 16.8 with a stated bound of 1.0000095)."""
    m = _model("sll_xs")
    x, y = _images()
    lipzoo.certify(m, x, y)
    m.features[1].kernel.data.mul_(3)
    after, fresh = _certify_against_fresh(m, "sll_xs", x)
    _assert_same_certificate(after, fresh)
    assert m.lipschitz_bound() == pytest.approx(fresh.lipschitz_bound, rel=1e-12)


def test_scale_attribute_is_part_of_the_bound():
    """sandwich_xs: ``scale = 3.0`` on the last layer left the bound at 1.00002 (true 3.00006)."""
    m = _model("sandwich_xs")
    x, y = _images()
    base = lipzoo.certify(m, x, y).lipschitz_bound
    m.features[-1].scale = 3.0
    assert m.lipschitz_bound() == pytest.approx(3 * base, rel=1e-6)
    _assert_same_certificate(*_certify_against_fresh(m, "sandwich_xs", x, [("features.9", "scale", 3.0)]))


def test_mlp_head_curvature_follows_data_writes():
    """The MLP head's curvature constant stayed at its old value after ``.data`` writes (radii up to 1.41x)."""
    m = _model("soc_xs")
    x, y = _images()
    lipzoo.certify(m, x, y)
    m.head.fc1.weight.data.mul_(3)
    m.head.fc2.weight.data.mul_(2)
    _assert_same_certificate(*_certify_against_fresh(m, "soc_xs", x))


def test_lot_bound_is_the_bound_of_the_map_certified():
    """LOT: the bound follows the precision and grid of the certifying forward, not an earlier forward's."""
    m = _model("lot_xs")
    x, y = _images()
    with torch.no_grad():
        m.double()(x.double())  # an earlier forward in another precision ...
    m.float()
    _assert_same_certificate(*_certify_against_fresh(m, "lot_xs", x))


_WRITE = st.tuples(st.sampled_from(["data_mul", "data_add", "inplace_mul", "scale"]),
                   st.integers(0, 10_000), st.floats(0.5, 2.0))


@pytest.mark.parametrize("arch", sorted(MODELS))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(_WRITE, min_size=1, max_size=4))
def test_property_any_writes_then_certify_equals_a_fresh_model(arch, writes):
    """Any sequence of in-place writes (with and without ``.data``, attribute changes such as ``scale``), each
    followed by an eval forward that may fill caches, then ``certify``: the same radii and bound as a freshly
    built model loaded with the same state."""
    m = _model(arch)
    x, y = _images(4)
    lipzoo.certify(m, x, y)
    params = [p for p in m.parameters()]
    scaled = [(n, mod) for n, mod in m.named_modules() if isinstance(getattr(mod, "scale", None), float)]
    attributes: list[tuple[str, str, float]] = []
    for kind, index, factor in writes:
        p = params[index % len(params)]
        if kind == "data_mul":
            p.data.mul_(factor)
        elif kind == "data_add":
            p.data.add_(0.1 * factor * torch.randn_like(p))
        elif kind == "inplace_mul":
            with torch.no_grad():
                p.mul_(factor)
        elif scaled:
            name, mod = scaled[index % len(scaled)]
            mod.scale = float(factor)
            attributes.append((name, "scale", float(factor)))
        with torch.no_grad():
            m(x)
    _assert_same_certificate(*_certify_against_fresh(m, arch, x, attributes))


def test_eval_caching_still_saves_work_between_certificates():
    """Caches stay for speed: two eval forwards reuse one parametrisation; a certificate recomputes it once."""
    m = _model("sandwich_xs")
    calls = {"n": 0}
    layer = m.features[0]
    original = layer._compute_params

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    layer._compute_params = counting
    x, y = _images(4)
    with torch.no_grad():
        m(x)
        m(x)
    assert calls["n"] == 1
    lipzoo.certify(m, x, y, batch_size=2)  # two batches and a bound: one recomputation
    assert calls["n"] == 2


# ----------------------------------------------------------------------------------- 2. reduced precision
class _PrecisionProbe(LipschitzClassifier):
    """An orthogonal 1-Lipschitz map that records the numeric context of its forward."""

    head_rule = "lipschitz"

    def __init__(self):
        super().__init__()
        self.normalize, self.features, self.head = nn.Identity(), nn.Flatten(), nn.Identity()
        self.num_classes, self.num_features = 3 * 32 * 32, 3 * 32 * 32
        self.seen: list[tuple] = []

    def forward(self, x):
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.backends.cuda.matmul.fp32_precision,
                          torch.backends.cudnn.conv.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision,
                          torch.backends.mkldnn.conv.fp32_precision))
        return x.flatten(1)

    def lipschitz_bound(self):
        return 1.0


def test_certification_runs_in_ieee_float32_without_autocast_and_restores_the_callers_flags():
    probe = _PrecisionProbe()
    x = torch.rand(2, 3, 32, 32)
    torch.set_float32_matmul_precision("medium")  # TF32 on CUDA, bf16 in oneDNN on a CPU
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lipzoo.certify(probe, x, torch.tensor([0, 1]))
            assert torch.is_autocast_enabled("cpu")
        assert probe.seen and all(s == (False, "ieee", "ieee", "ieee", "ieee") for s in probe.seen)
        assert torch.get_float32_matmul_precision() == "medium"
        assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    finally:
        torch.set_float32_matmul_precision("highest")


def test_legacy_tf32_flags_read_back_unchanged_after_certify():
    """A caller who set the legacy flags reads them back (torch raises on a mix of the two APIs)."""
    probe = _PrecisionProbe()
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    try:
        lipzoo.certify(probe, torch.rand(1, 3, 32, 32), [0])
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
        assert probe.seen[-1][1:3] == ("ieee", "ieee")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("arch", ["sll_xs", "lot_xs"])
def test_certificate_under_autocast_equals_the_float32_one(arch):
    """Under bf16 autocast the radii were computed from bf16 logits (up to 5.1x the float32 radii)."""
    m = _model(arch)
    x, _ = _images()
    with torch.no_grad():
        y = m(x).argmax(dim=1)
    ref = lipzoo.certify(m, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = lipzoo.certify(m, x, y)
        bound = m.lipschitz_bound()
    _assert_same_certificate(under, ref)
    assert bound == pytest.approx(ref.lipschitz_bound, rel=1e-12)


class _LowPrecisionLogits(LipschitzClassifier):
    """Identity features, logits rounded to bfloat16 by the model itself."""

    head_rule = "lipschitz"
    input_range = None

    def __init__(self):
        super().__init__()
        self.normalize, self.features, self.head = nn.Identity(), nn.Flatten(), nn.Identity()
        self.num_classes = self.num_features = 3

    def forward(self, x):
        return x.flatten(1).bfloat16()

    def lipschitz_bound(self):
        return 1.0


def test_slack_is_that_of_the_precision_the_logits_were_computed_in():
    z = torch.tensor([[0.75, 0.25, 0.0]])
    r = C.certified_radius(_LowPrecisionLogits(), z).item()
    slack = C.SLACK_ULPS * torch.finfo(torch.bfloat16).eps * max(1.0, float(z.norm()))
    assert r == pytest.approx(max(0.5 - slack, 0.0) / math.sqrt(2), abs=1e-12)


# -------------------------------------------------------------------------------------- 3. bad inputs
def test_images_in_0_255_are_refused():
    m = _model("sll_xs")
    x, y = _images()
    with pytest.raises(ValueError, match=r"\[0, 1\].*divide 0-255 images by 255"):
        lipzoo.certify(m, x * 255, y)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_refused(bad):
    x, y = _images()
    x[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        lipzoo.certify(_model("sll_xs"), x, y)


def test_non_finite_logits_are_never_correct_or_certified():
    """A NaN batch labelled 0 used to score 100% clean accuracy (argmax of NaN logits is 0)."""
    m = _model("sll_xs")
    with torch.no_grad():
        m.head.bias.fill_(float("nan"))
    x, _ = _images()
    res = lipzoo.certify(m, x, torch.zeros(len(x), dtype=torch.long))
    assert res.clean_accuracy == 0.0
    assert all(a == 0.0 for a in res.certified_accuracy.values())
    assert res.extra["non_finite"] == len(x)
    assert torch.isfinite(res.radii).all()


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 4, 10], [0, 1, 2, 3, 4, -1]])
def test_labels_outside_the_classes_are_refused(labels):
    x, _ = _images()
    with pytest.raises(ValueError, match=r"class indices in \[0, 9\]"):
        lipzoo.certify(_model("sll_xs"), x, torch.tensor(labels))


def test_a_single_image_without_batch_dimension_is_refused_clearly():
    x, y = _images(1)
    with pytest.raises(ValueError, match=r"images\[None\]"):
        lipzoo.certify(_model("sll_xs"), x[0], y)
    with pytest.raises(ValueError, match=r"images\[None\]"):
        C.certified_radius(_model("sll_xs"), x[0])


def test_float_labels_and_wrong_label_count_are_refused():
    x, y = _images()
    with pytest.raises(ValueError, match="integer class indices"):
        lipzoo.certify(_model("sll_xs"), x, y.float())
    with pytest.raises(ValueError, match="6 labels"):
        lipzoo.certify(_model("sll_xs"), x, y[:3])


# ---------------------------------------------------------------------------- devices (lipzoo on GPUs)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_head_rule_certifies_on_every_device_with_images_on_the_cpu(arch, device):
    """The model on ``device``, the images and labels on the CPU (batches are moved, not the dataset); the
    certificate equals the CPU's (exactly on the CPU, to float32 rounding elsewhere)."""
    m = _model(arch)
    x, _ = _images()
    with torch.no_grad():
        y = m(x).argmax(dim=1)
    ref = lipzoo.certify(m, x, y, batch_size=4)
    assert ref.radii.max() > 0
    torch.backends.cuda.matmul.allow_tf32, old = True, torch.backends.cuda.matmul.allow_tf32
    try:
        got = lipzoo.certify(m.to(device), x, y, batch_size=4)
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert got.radii.device.type == "cpu"
    assert torch.equal(got.predictions, ref.predictions)
    tol = 0.0 if device == "cpu" else 1e-4
    torch.testing.assert_close(got.radii, ref.radii, rtol=tol, atol=tol)
    assert got.lipschitz_bound == pytest.approx(ref.lipschitz_bound, rel=max(tol, 1e-12))


def test_lln_rule_keeps_its_pair_distances_with_the_logits_on_the_cpu():
    """The LLN pair distances lived on the model's device while the logits were moved to the CPU: every LLN
    model failed to certify on CUDA. They now live on the CPU whatever the model's device."""
    head = LLN(4, 3)
    model = nn.Module()
    model.head_rule = "lln"
    model.get_classifier = lambda: head
    dist = C.head_rule("lln").prepare(model)
    assert dist.device.type == "cpu" and dist.dtype == torch.float64
