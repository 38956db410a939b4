"""AutoAttack beside the certificate (``lipzoo.attack``): the attack path on a tiny model whose distances to the
decision boundary are known in closed form, certified <= robust <= clean, a broken certificate caught, the
record's form, and the stored records (``results/autoattack/``, the cards) checked."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lipzoo._errors import LipzooUserError
from lipzoo.attack import DEFAULT_ATTACK_EPS, check_record, check_robustness, robust_accuracy
from lipzoo.layers.base import LipschitzModule
from lipzoo.models._base import LipschitzClassifier

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parent.parent
SHAPE, C = (3, 8, 8), 4  # Square needs images of at least 5 x 5
D = 3 * 8 * 8


class _Rows(LipschitzModule):
    """``x -> (x_0, ..., x_{C-1}) - 0.5`` of the flattened image: orthonormal rows, so 1-Lipschitz, and the l2
    distance from ``x`` to the boundary between classes ``t`` and ``j`` is exactly ``|z_t - z_j| / sqrt(2)``."""

    def __init__(self, claimed: float = 1.0):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))  # a parameter, so the model has a device and dtype
        self.claimed = claimed

    def forward(self, x):
        return self.scale * (F.linear(x.flatten(1), torch.eye(D)[:C].to(x)) - 0.5)

    def lipschitz_bound(self):
        return self.claimed


class TinyLinear(LipschitzClassifier):
    head_rule = "lipschitz"

    def __init__(self, claimed: float = 1.0):
        super().__init__()
        self.normalize, self.features, self.head = torch.nn.Identity(), torch.nn.Identity(), _Rows(claimed)
        self.num_classes = C


def _data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images near the middle of [0, 1] (so a shortest attack of norm <= 0.5 stays inside the box) whose
    distances to the boundary spread over (0, 0.6); every 6th label is wrong."""
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.02 * (torch.rand(n, *SHAPE, generator=g) - 0.5)
    top = torch.arange(n) % C
    gap = torch.linspace(0.02, 0.85, n)  # distance to the boundary: gap / sqrt(2), 0.014 .. 0.60
    flat = x.view(n, -1)
    flat[:, :C] = 0.5 - gap[:, None] / 2
    flat[torch.arange(n), top] = 0.5 + gap / 2
    labels = top.clone()
    labels[::6] = (top[::6] + 1) % C
    return x, labels


def _expected_robust(x: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Closed form: correct and distance to the nearest boundary > eps (no box constraint binds here)."""
    z = x.flatten(1)[:, :C]
    top2 = z.topk(2, dim=1).values
    return (z.argmax(1) == labels) & ((top2[:, 0] - top2[:, 1]) / math.sqrt(2) > eps)


@pytest.fixture(scope="module")
def attacked():
    pytest.importorskip("torchattacks", reason="AutoAttack needs the attack extra: pip install 'lipzoo[attack]'")
    model = TinyLinear()
    x, y = _data()
    check, result = check_robustness(model, x, y, batch_size=16)
    return model, x, y, check, result


def test_attack_record_is_well_formed(attacked):
    import torchattacks

    _, x, y, _, result = attacked
    record = json.loads(json.dumps(result.to_record()))
    assert record["attack"] == "autoattack" and record["norm"] == "L2" and record["version"] == "standard"
    assert record["torchattacks_version"] == torchattacks.__version__ and record["n"] == len(y)
    assert set(record["robust_accuracy"]) == set(record["eps"]) == set(record["seconds"]) == {"36/255", "0.5"}
    assert record["eps"] == {"36/255": 36 / 255, "0.5": 0.5} and tuple(record["eps"].values()) == DEFAULT_ATTACK_EPS
    assert record["clean_accuracy"] == pytest.approx((len(y) - 4) / len(y))
    assert all(v > 0 for v in record["seconds"].values())
    assert all(0 <= v <= eps * (1 + 1e-5) for v, eps in zip(record["max_perturbation"].values(), DEFAULT_ATTACK_EPS))


def test_attack_finds_every_closed_form_counterexample(attacked):
    _, x, y, _, result = attacked
    for eps in DEFAULT_ATTACK_EPS:
        expected = _expected_robust(x, y, eps)
        assert 0 < int(expected.sum()) < int((x.flatten(1)[:, :C].argmax(1) == y).sum())  # the case is not trivial
        assert torch.equal(result.robust[{36 / 255: "36/255", 0.5: "0.5"}[eps]], expected), eps


def test_certified_le_robust_le_clean(attacked):
    _, _, _, check, result = attacked
    assert check.passed, check.failures()
    assert check.broken == {"36/255": 0, "0.5": 0}
    for key in ("36/255", "0.5"):
        assert 0 < check.certified[key] <= check.robust[key] <= check.clean == result.clean_accuracy


def test_a_broken_certificate_is_caught(attacked):
    """A model that claims a Lipschitz bound 4x too small: the certifier certifies points the attack breaks."""
    _, x, y, _, result = attacked
    check, _ = check_robustness(TinyLinear(claimed=0.25), x, y, result)
    assert not check.passed and check.broken["0.5"] > 0
    assert any("broken certificate" in line for line in check.failures())


def test_attack_restores_the_model_and_moves_nothing(attacked):
    model, x, y, _, _ = attacked
    model.train()
    before = [p.requires_grad for p in model.parameters()]
    robust_accuracy(model, x[:4], y[:4], eps=0.1)
    assert model.training and [p.requires_grad for p in model.parameters()] == before


def test_bad_inputs_and_missing_torchattacks_are_one_line(monkeypatch):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        robust_accuracy(TinyLinear(), 2 * torch.ones(1, *SHAPE), [0], eps=0.1)
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    with pytest.raises(LipzooUserError, match="pip install 'torchattacks==3.5.1'") as info:
        robust_accuracy(TinyLinear(), torch.rand(1, *SHAPE), [0])
    assert "\n" not in str(info.value)


def test_check_record_counts():
    record = {"n": 100, "clean_accuracy": 0.7, "robust_accuracy": {"36/255": 0.6, "0.5": 0.4}}
    assert check_record(record, {"36/255": 0.55, "0.5": 0.3}).passed
    failures = check_record(record, {"36/255": 0.61, "0.5": 0.3}).failures()
    assert len(failures) == 1 and "36/255" in failures[0] and "broken certificate" in failures[0]
    assert not check_record({**record, "robust_accuracy": {"0.5": 0.71}}, {}).passed


# ------------------------------------------------------------------------------------- the stored records
def _records() -> list[Path]:
    return sorted((ROOT / "results" / "autoattack").glob("*.json"))


@pytest.mark.parametrize("path", _records() or [None], ids=lambda p: p.name if p else "none")
def test_stored_autoattack_records_hold_the_ordering(path):
    if path is None:
        pytest.skip("no AutoAttack record under results/autoattack/ yet")
    record = json.loads(path.read_text())
    assert record["attack"] == "autoattack" and record["norm"] == "L2" and record["version"] == "standard"
    assert set(record["certified_accuracy"]) == set(record["robust_accuracy"])
    check = check_record(record)
    assert check.passed, (path.name, check.failures())


def _cards() -> list[Path]:
    return sorted((ROOT / "hub").glob("*/*/README.md"))


@pytest.mark.parametrize("card", _cards() or [None], ids=lambda p: p.parent.name if p else "none")
def test_cards_robust_accuracy_holds_the_ordering(card):
    """A card's ``robust_accuracy`` metrics equal its repo's AutoAttack record, which satisfies certified <=
    robust <= clean on the attacked images."""
    if card is None:
        pytest.skip("no published card")
    from huggingface_hub import ModelCard

    robust = {r.metric_args["eps_label"]: (r.metric_args, r.metric_value)
              for r in ModelCard.load(card).data.eval_results or [] if r.metric_type == "robust_accuracy"}
    if not robust:
        pytest.skip(f"{card.parent.name}'s card has no robust_accuracy yet")
    record = json.loads((card.parent / "config.json").read_text())["lipzoo"]["autoattack"]
    assert {k: v for k, (_, v) in robust.items()} == record["robust_accuracy"]
    assert all(a["attack"] == "autoattack" and a["norm"] == "L2" and a["eps"] == record["eps"][k]
               for k, (a, _) in robust.items())
    check = check_record(record)
    assert check.passed, (card.parent.name, check.failures())


# ------------------------------------------------------------------------------------------ lipzoo verify --attack
from test_cli import _assert_user_error, _cli, checkpoints, fake_verify  # noqa: E402,F401  (fixtures)


def _fake_record(broken: int) -> dict:
    return {"version": "standard", "torchattacks_version": "3.5.1", "n": 7, "clean_accuracy": 0.7,
            "robust_accuracy": {"0.5": 0.4}, "certified_accuracy": {"0.5": 0.3}, "broken": {"0.5": broken},
            "seconds": {"0.5": 12.0}, "passed": not broken}


@pytest.mark.parametrize("broken", [0, 2])
def test_verify_attack_runs_autoattack_after_verification(capsys, fake_verify, monkeypatch, tmp_path, broken):
    pytest.importorskip("torchattacks")
    import lipzoo.attack as attack

    calls = []
    monkeypatch.setattr(attack, "attack_dataset", lambda model, dataset, n, eps, **kw: calls.append(
        (dataset, n, list(eps))) or _fake_record(broken))
    out_json = tmp_path / "attack.json"
    rc, out, err = _cli(capsys, "verify", "sll_xs.cifar10", "--quick", "--attack", "--attack-n", "7",
                        "--attack-eps", "0.5", "--attack-json", str(out_json))
    assert calls == [("cifar10", 7, [0.5])] and fake_verify["claims"]
    assert rc == (1 if broken else 0), err
    assert ("FAILED (a broken certificate)" if broken else "PASSED") in out and "40.00%" in out
    assert json.loads(out_json.read_text())["broken"] == {"0.5": broken}


def test_verify_attack_without_torchattacks_is_one_line_before_verifying(capsys, fake_verify, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchattacks", None)
    rc, _, err = _cli(capsys, "verify", "sll_xs.cifar10", "--quick", "--attack")
    _assert_user_error(rc, err, "torchattacks==3.5.1")
    assert "claims" not in fake_verify


# ------------------------------------------------------------------------------------ cards and lipzoo publish
def _record(robust: float = 0.6, certified: float = 0.5, broken: int = 0) -> dict:
    return {"attack": "autoattack", "torchattacks_version": "3.5.1", "version": "standard", "norm": "L2", "n": 10,
            "dataset": "cifar10", "split": "test", "subset": "first_10", "clean_accuracy": 0.7,
            "robust_accuracy": {"36/255": robust, "0.5": 0.2}, "certified_accuracy": {"36/255": certified, "0.5": 0.1},
            "eps": {"36/255": 36 / 255, "0.5": 0.5}, "seconds": {"36/255": 5400.0, "0.5": 90.0},
            "broken": {"36/255": broken, "0.5": 0}, "passed": not broken, "device": "cpu (2 threads)"}


def test_card_metrics_and_rows_of_an_attack_record():
    from lipzoo.hub.card import attack_rows, attack_to_eval_results

    results = attack_to_eval_results(_record())
    assert [(r.metric_type, r.metric_value, r.metric_args) for r in results] == [
        ("robust_accuracy", 0.6, {"attack": "autoattack", "norm": "L2", "eps": 36 / 255, "eps_label": "36/255"}),
        ("robust_accuracy", 0.2, {"attack": "autoattack", "norm": "L2", "eps": 0.5, "eps_label": "0.5"})]
    assert results[0].dataset_args == {"subset": "first_10", "n": 10}
    rows = attack_rows(_record())
    assert "90 min on cpu (2 threads)" in rows[0]["method"] and "90 s" in rows[1]["method"]
    assert "certified on the same images" in rows[0]["method"] and "the first 10 test images" in rows[0]["method"]


@pytest.fixture
def scratch_publish(monkeypatch, tmp_path, checkpoints):
    """``publish`` of sll_xs (random weights) on the first 10 test images into a scratch hub, AutoAttack faked."""
    pytest.importorskip("torchattacks")
    from lipzoo.data import find_root

    if find_root("cifar10") is None:
        pytest.skip("needs CIFAR-10")
    import lipzoo.attack as attack
    from lipzoo.hub.publish import publish

    monkeypatch.setenv("LIPZOO_PUBLISHED_JSON", str(tmp_path / "published.json"))
    seen = {}

    def run(record):
        monkeypatch.setattr(attack, "attack_dataset", lambda model, dataset, n, **kw: seen.update(n=n) or record)
        return publish(checkpoints["sll_xs"], "sll_xs", "cifar10", hub=tmp_path / "hub", upload=False, quick=True,
                       quick_n=10, attack=True, attack_n=10)

    return run, seen, tmp_path


def test_publish_refuses_a_broken_certificate(scratch_publish):
    from lipzoo.hub.publish import PublishError

    run, seen, tmp = scratch_publish
    with pytest.raises(PublishError, match="broken certificate"):
        run(_record(robust=0.4, certified=0.5, broken=3))
    assert seen["n"] == 10 and not (tmp / "published.json").exists()
    assert not list((tmp / "hub").rglob("model.safetensors"))


def test_publish_puts_the_attack_on_the_card(scratch_publish):
    from huggingface_hub import ModelCard

    run, _, _ = scratch_publish
    out = run(_record())
    config = json.loads((out.folder / "config.json").read_text())
    assert config["lipzoo"]["autoattack"]["robust_accuracy"] == {"36/255": 0.6, "0.5": 0.2}
    card = ModelCard.load(out.folder / "README.md")
    robust = [r for r in card.data.eval_results if r.metric_type == "robust_accuracy"]
    assert [r.metric_args["eps_label"] for r in robust] == ["36/255", "0.5"]
    assert "Empirical robust accuracy, AutoAttack L2, eps=36/255" in card.text and "90 min" in card.text
