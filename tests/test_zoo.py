"""Every registered architecture at its published size: it builds for 10 and 100 classes, runs a forward pass
on a 32x32 batch, and a CI-sized audit finds no layer above its bound and no PGD violation.

The expensive part of the large LOT and Sandwich nets is their eval-time parametrisation (per-frequency
orthogonalisation), not the forward: each model is parametrised once (forward and audit share one cache scope),
audited in place, and the 100-class build reuses that body (same structure, checked) under its own new head.
"""
from __future__ import annotations

import time
import warnings

import pytest
import torch

import lipzoo
from lipzoo._numerics import cache_scope
from lipzoo.auditing import AuditWarning, audit
from lipzoo.models._registry import ARCHS

CI_AUDIT = dict(n_probe=1, power_iters=3, pgd_steps=6, restarts=1, n_attack=2, pair_steps=2)
# the paper-sized nets: fewer iterations (each is a forward/backward of a 10-200M-parameter net)
CI_AUDIT_LARGE = dict(n_probe=1, power_iters=2, pgd_steps=4, restarts=1, n_attack=1, pair_steps=1)


@pytest.fixture(scope="module")
def images():
    from lipzoo.data import CIFAR

    x, _ = CIFAR("cifar10", "test").tensors(torch.arange(8).numpy())
    return x


@pytest.fixture(scope="module", autouse=True)
def _use_both_cores():
    """The per-frequency orthogonalisations are large batched GEMMs: give them the CI machine's 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _body_signature(model: torch.nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not k.startswith("head.")]


# the later families' paper-sized nets: their proven bounds (float64 eigen / FFT-grid norms of large layers) take
# minutes each on 2 CPU cores, so they are audited by `make test-slow` (pytest -m slow), their compact models here
LATER_FAMILIES = ("aol", "cpl", "cayley", "bcop", "convnet")


def _zoo_params() -> list:
    return [pytest.param(a, marks=pytest.mark.slow) if a.split("_")[0] in LATER_FAMILIES and not ARCHS[a].compact
            else a for a in lipzoo.list_models()]


def test_registry_lists_every_named_architecture():
    """The architectures the papers name (models issue, "Beyond the four"), plus one compact model per family."""
    depths = range(5, 45, 5)
    expected = ({f"soc_lipconvnet{n}" for n in depths} | {f"lot_lipconvnet{n}" for n in depths}
                | {f"lot_lipresnet{n}" for n in depths} | {"sandwich_s", "sandwich_m", "sandwich_l", "sandwich_dnn"}
                | {"sll_s", "sll_m", "sll_l", "sll_xl"} | {"soc_xs", "lot_xs", "sandwich_xs", "sll_xs"}
                | {"aol_s", "aol_m", "aol_l", "aol_xs"} | {"cpl_s", "cpl_m", "cpl_l", "cpl_xl", "cpl_xs"}
                | {"cayley_kwlarge", "cayley_resnet9", "cayley_xs"} | {"bcop_kwlarge", "bcop_xs"}
                | {"convnet_xs", "convnet_s", "convnet_m", "convnet_l"})
    assert set(lipzoo.list_models()) == expected


@pytest.mark.parametrize("arch", _zoo_params())
def test_architecture_builds_runs_and_passes_the_audit(arch, images):
    # one cache scope for the whole test: the forward's parametrisation is the one the audit certifies (nothing
    # writes the weights in between), so each large net is parametrised once, as before the certification scopes
    with cache_scope():
        _build_run_and_audit(arch, images)


def _build_run_and_audit(arch: str, images: torch.Tensor) -> None:
    start = time.perf_counter()
    torch.manual_seed(0)
    model = lipzoo.create_model(arch).eval()
    x = images[:2]
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and bool(torch.isfinite(out).all())
    assert model.head_rule in ("lipschitz", "lln", "mlp_curvature")
    built = time.perf_counter()

    flags = [p.requires_grad for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", AuditWarning)
        compact = ARCHS[arch].compact
        report = audit(model, images, None, rounding=compact, **(CI_AUDIT if compact else CI_AUDIT_LARGE))
    assert report.pgd["n_attacked"] >= 1 and report.pgd["n_violations"] == 0, report.summary()
    assert all(c.ok for c in report.layers) and report.model_ok and report.ok, report.summary()
    assert len(report.layers) == len(model.layer_bounds())
    assert not model.training and [p.requires_grad for p in model.parameters()] == flags  # restored
    audited = time.perf_counter()

    m100 = lipzoo.create_model(arch, num_classes=100).eval()
    assert _body_signature(m100) == _body_signature(model)
    assert m100.head_rule == model.head_rule and m100.num_classes == 100
    m100.normalize, m100.features = model.normalize, model.features  # reuse the parametrised body
    with torch.no_grad():
        out100 = m100(x)
        feats = model.forward_features(x)
    assert out100.shape == (2, 100) and bool(torch.isfinite(out100).all())
    assert torch.equal(out100, m100.forward_head(feats))
    print(f"{arch}: build+forward {built - start:.1f} s, audit {audited - built:.1f} s {report.seconds}, "
          f"100 classes {time.perf_counter() - audited:.1f} s")
