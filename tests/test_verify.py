"""Claims vs measurement: exact and statistical modes, consistency checks, the CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lipzoo import certify
from lipzoo.layers.base import LipschitzModule
from lipzoo.layers.heads import LLN
from lipzoo.models._base import LipschitzClassifier
from lipzoo.verification import (ACCURACY_TOLERANCE, clopper_pearson, load_claims, quick_subset_indices, verify)

torch.set_num_threads(1)


class Orth(LipschitzModule):
    def __init__(self, d: int):
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0)))
        self.register_buffer("q", q)

    def forward(self, x):
        return F.linear(x.flatten(1) - 0.5, self.q)

    def lipschitz_bound(self):
        return 1.0


class Toy(LipschitzClassifier):
    head_rule = "lln"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.normalize, self.features, self.head = nn.Identity(), nn.Sequential(Orth(48)), LLN(48, 10)
        self.num_classes = 10


@pytest.fixture(scope="module")
def toy_data():
    """2000 images in random order, 200 per class label, ~70% of each class correctly classified by the toy."""
    model = Toy().eval()
    g = torch.Generator().manual_seed(1)
    pool = torch.rand(40000, 3, 4, 4, generator=g)
    with torch.no_grad():
        pred = model(pool).argmax(1)
    xs, ys = [], []
    for c in range(10):
        right = (pred == c).nonzero().flatten()[:140]
        wrong = (pred != c).nonzero().flatten()[c * 60:(c + 1) * 60]
        assert len(right) == 140
        xs += [pool[right], pool[wrong]]
        ys += [torch.full((200,), c)]
    perm = torch.randperm(2000, generator=g)
    return model, torch.cat(xs)[perm], torch.cat(ys)[perm]


# ------------------------------------------------------------------------------------------- statistics
def test_clopper_pearson_analytic_and_beta():
    # k = 0: hi = 1 - (alpha/2)^(1/n); k = n: lo = (alpha/2)^(1/n)
    lo, hi = clopper_pearson(0, 10, confidence=0.95)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    lo, hi = clopper_pearson(10, 10, confidence=0.95)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(1, 1000), (612, 1000), (999, 1000), (37, 80)]:
        lo, hi = clopper_pearson(k, n, confidence=0.999)
        assert lo == pytest.approx(stats.beta.ppf(0.0005, k, n - k + 1), rel=1e-7)
        assert hi == pytest.approx(stats.beta.ppf(0.9995, k + 1, n - k), rel=1e-7)


def test_quick_subset_indices():
    labels = np.array([i % 10 for i in range(3000)])
    rng = np.random.default_rng(0)
    rng.shuffle(labels)
    idx = quick_subset_indices(labels)
    assert len(idx) == 1000 and np.all(np.diff(idx) > 0)
    for c in range(10):
        assert np.array_equal(idx[labels[idx] == c], np.flatnonzero(labels == c)[:100])
    idx100 = quick_subset_indices(np.arange(5000) % 100)  # CIFAR-100: 10 per class
    assert len(idx100) == 1000 and np.array_equal(idx100, np.arange(1000))
    with pytest.raises(ValueError):
        quick_subset_indices(np.arange(500) % 10)


# --------------------------------------------------------------------------------------------- verify
def test_verify_full_passes_correct_claim_and_fails_inflated(toy_data):
    model, x, y = toy_data
    claims = certify(model, x, y).to_claims("cifar10", "test", "full")
    assert 0.1 < claims["certified_accuracy"]["36/255"] < 0.95  # a meaningful number
    report = verify(model, claims, data=(x, y))
    assert report.passed, str(report)
    assert report.subset == "full" and report.n == 2000
    inflated = json.loads(json.dumps(claims))
    inflated["certified_accuracy"]["36/255"] += 0.005
    report = verify(model, inflated, data=(x, y))
    assert not report.passed
    assert [c.name for c in report.failures] == ["certified accuracy @ 36/255"]
    text = str(report)
    assert "FAILED" in text and "**FAIL**" in text and "-0.50 pp" in text
    assert report.to_dict()["passed"] is False
    # within tolerance still passes
    nudged = json.loads(json.dumps(claims))
    nudged["clean_accuracy"] += 0.5 * ACCURACY_TOLERANCE
    assert verify(model, nudged, data=(x, y)).passed


def test_verify_quick_mode_uses_clopper_pearson(toy_data):
    model, x, y = toy_data
    claims = certify(model, x, y).to_claims("cifar10", "test", "full")
    report = verify(model, claims, data=(x, y), mode="quick")
    assert report.passed, str(report)
    assert report.subset == "quick" and report.n == 1000
    assert "99.9% CP" in str(report)
    sub = certify(model, x[quick_subset_indices(y)], y[quick_subset_indices(y)])
    k = round(sub.certified_accuracy_at(36 / 255) * 1000)
    lo, hi = clopper_pearson(k, 1000)
    assert 0.02 < hi - lo < 0.15
    inflated = json.loads(json.dumps(claims))
    inflated["certified_accuracy"]["36/255"] = hi + 0.01
    bad = verify(model, inflated, data=(x, y), mode="quick")
    assert not bad.passed and [c.name for c in bad.failures] == ["certified accuracy @ 36/255"]


def test_verify_consistency_checks(toy_data):
    model, x, y = toy_data
    claims = certify(model, x, y).to_claims("cifar10", "test", "full")
    wrong_n = dict(claims, n=10000)
    assert [c.name for c in verify(model, wrong_n, data=(x, y)).failures] == ["n (images claimed)"]
    wrong_rule = dict(claims, head_rule="lipschitz")
    assert [c.name for c in verify(model, wrong_rule, data=(x, y)).failures] == ["head rule"]
    wrong_bound = dict(claims, lipschitz_bound=0.5)
    assert [c.name for c in verify(model, wrong_bound, data=(x, y)).failures] == ["Lipschitz bound"]
    c100 = dict(claims, dataset="cifar100")
    assert "dataset classes" in [c.name for c in verify(model, c100, data=(x, y)).failures]
    # a results.json wrapper, and the training loop's 'subset' (= the first n images)
    first = certify(model, x[:300], y[:300]).to_claims("cifar10", "test", "subset")
    assert load_claims({"arch": "toy", "claims": first}) == first
    report = verify(model, {"arch": "toy", "claims": first}, data=(x, y))
    assert report.passed and report.n == 300 and report.subset == "first_300"


def test_eps_label_that_disagrees_with_its_value_is_refused(toy_data):
    """Issue 19, item 4: the value is what is measured, so a label that names another eps is refused (ValueError),
    in verify and in the model card; the report and the card print both label and value."""
    from lipzoo.hub.card import claims_to_eval_results

    model, x, y = toy_data
    claims = certify(model, x, y).to_claims("cifar10", "test", "full")
    spoof = json.loads(json.dumps(claims))  # every eps value 0.0 under the usual labels, "certified" = clean
    spoof["eps"] = {label: 0.0 for label in spoof["eps"]}
    spoof["certified_accuracy"] = {label: claims["clean_accuracy"] for label in spoof["certified_accuracy"]}
    with pytest.raises(ValueError, match=r"255/255.*0\.0"):
        verify(model, spoof, data=(x, y))
    with pytest.raises(ValueError, match=r"255/255.*0\.0"):
        claims_to_eval_results(spoof)
    swapped = json.loads(json.dumps(claims))  # one label on another label's value
    swapped["eps"]["72/255"] = 36 / 255
    with pytest.raises(ValueError, match="72/255"):
        verify(model, swapped, data=(x, y))
    for bad in ("0.1 pixels", "nan"):  # a label that is no number cannot match its value
        odd = json.loads(json.dumps(claims))
        odd["certified_accuracy"][bad] = odd["eps"][bad] = 0.1
        with pytest.raises(ValueError, match="label"):
            verify(model, odd, data=(x, y))
    # honest records pass, with both the label and the value in the report and in the card
    report = verify(model, claims, data=(x, y))
    assert report.passed, str(report)
    text = str(report)
    assert "36/255" in text and "0.14117647" in text and "255/255" in text
    metric_args = [r.metric_args for r in claims_to_eval_results(claims) if r.metric_args]
    assert {"norm": "L2", "eps": 36 / 255, "eps_label": "36/255"} in metric_args
    decimal = certify(model, x[:200], y[:200], eps=(0.5,)).to_claims("cifar10", "test", "first_200")
    assert list(decimal["eps"]) == ["0.5"] and verify(model, decimal, data=(x, y)).passed


def test_verify_float64_claims(toy_data):
    model, x, y = toy_data
    claims = certify(model, x[:200], y[:200], dtype=torch.float64).to_claims("cifar10", "test", "first_200")
    report = verify(model, claims, data=(x, y))
    assert report.passed and report.result.dtype == "float64"


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_certify_and_verify_on_real_cifar(tmp_path, capsys):
    import lipzoo
    from lipzoo.cli import main
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = lipzoo.create_model("sll_xs")
    ckpt = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    out, plot = tmp_path / "claims.json", tmp_path / "curve.png"
    assert main(["certify", "sll_xs", "--checkpoint", str(ckpt), "--n", "120", "--json", str(out),
                 "--plot", str(plot), "--quiet", "--eps", "36/255", "0.5"]) == 0
    claims = json.loads(out.read_text())
    assert claims["subset"] == "first_120" and claims["n"] == 120 and list(claims["eps"]) == ["36/255", "0.5"]
    assert plot.stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "36/255" in printed and "clean" in printed
    assert main(["verify", "sll_xs", "--checkpoint", str(ckpt), "--claims", str(out), "--quiet"]) == 0
    assert "PASSED" in capsys.readouterr().out
    claims["clean_accuracy"] += 0.005
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"arch": "sll_xs", "claims": claims}))
    assert main(["verify", "sll_xs", "--checkpoint", str(ckpt), "--claims", str(bad), "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "clean accuracy" in text
    assert math.isfinite(claims["lipschitz_bound"])
