"""Long work says what it is doing (issue "A user's first hour", item 2): notes and bars on stderr."""
from __future__ import annotations

import json

import torch

import lipzoo
from lipzoo.hub import download as D


def test_audit_shows_its_phases_and_pgd_steps(capsys):
    torch.manual_seed(0)
    model = lipzoo.create_model("sll_xs").eval()
    x = torch.rand(4, 3, 32, 32)
    lipzoo.audit(model, x, n_probe=1, power_iters=1, pgd_steps=2, restarts=1, n_attack=2, pair_steps=1,
                 rounding=False, progress=True)
    err = capsys.readouterr().err
    assert "audit" in err and "PGD inside the certified radii" in err and "PGD on" in err


def test_quiet_silences_the_bars(capsys, monkeypatch):
    monkeypatch.setenv("LIPZOO_QUIET", "1")
    torch.manual_seed(0)
    model = lipzoo.create_model("sll_xs").eval()
    lipzoo.audit(model, torch.rand(2, 3, 32, 32), n_probe=1, power_iters=1, pgd_steps=1, restarts=1, n_attack=1,
                 pair_steps=1, rounding=False, progress=True)
    assert capsys.readouterr().err == ""


def test_a_cached_verification_says_so_and_how_to_measure_again(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = lipzoo.create_model("sll_xs")
    claims = {"dataset": "cifar10", "split": "test", "subset": "full", "n": 10000, "clean_accuracy": 0.5,
              "certified_accuracy": {"36/255": 0.4}, "eps": {"36/255": 36 / 255}, "dtype": "float32"}
    sha = "0" * 64
    path = D.verified_report_path(sha, claims, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"passed": True, "mode": "full", "key": D.verification_key(sha, claims, model)}))
    passed, record = D._verify_once(model, claims, "quick", sha, "lipzoo/sll_xs.cifar10", None)
    assert passed and record["mode"] == "full"
    err = capsys.readouterr().err
    assert "claims verified before (full mode)" in err and str(path) in err and "lipzoo verify" in err
