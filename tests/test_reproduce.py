"""``scripts/reproduce.py``'s zoo table: claimed vs measured, audit, verdict and the issue-#8 targets."""
from __future__ import annotations

import importlib.util
import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

_SPEC = importlib.util.spec_from_file_location("reproduce", Path(__file__).resolve().parent.parent / "scripts" / "reproduce.py")
reproduce = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reproduce)


def _row(name: str, clean: float, cert36: float, passed: bool = True) -> dict:
    checks = [{"name": "clean accuracy", "measured": clean}, {"name": "certified accuracy @ 36/255", "measured": cert36}]
    return {"name": name, "mode": "full", "passed": passed, "report": {"checks": checks},
            "audit": {"pgd": {"n_violations": 0, "n_attacked": 500}}}


def test_target_cell_reports_each_shortfall_in_percentage_points():
    assert reproduce._target_cell("sll_xs.cifar10", 0.6421, 0.5534) == "65.00 / 50.00: clean -0.79 pp"
    assert reproduce._target_cell("lot_xs.cifar10", 0.60, 0.40) == "62.00 / 47.00: clean -2.00 pp, cert -7.00 pp"
    assert reproduce._target_cell("soc_xs.cifar10", 0.62, 0.47) == "62.00 / 47.00: met"
    assert reproduce._target_cell("soc_xs.cifar10", None, 0.5).endswith("not measured")
    assert reproduce._target_cell("sll_s.cifar10", 0.9, 0.9) == "—"


def test_markdown_shows_claimed_and_measured_values_and_the_verdict():
    published = {"sll_xs.cifar10": {"claims": {"clean_accuracy": 0.7, "certified_accuracy": {"36/255": 0.55},
                                               "lipschitz_bound": 1.0}}}
    md = reproduce.markdown([_row("sll_xs.cifar10", 0.6421, 0.5534, passed=False)], published)
    header, rule, line = md.splitlines()
    assert len(header.split("|")) == len(rule.split("|")) == len(line.split("|"))
    assert "70.00 / 64.21" in line and "55.00 / 55.34" in line and "0 / 500" in line
    assert "**FAIL** (full)" in line and "clean -0.79 pp" in line


def test_zoo_table_shows_the_1llc_convnet_xs_reference_of_the_family():
    """The weights issue's reference for a compact model: 1LLC Table 2 / its logs, ConvNet-XS, CIFAR-10."""
    assert reproduce._reference_cell("soc_xs.cifar10") == "74.14 / 61.31"
    assert reproduce._reference_cell("lot_xs.cifar10") == "75.54 / 63.45"
    assert reproduce._reference_cell("sll_xs.cifar10") == "73.65 / 60.99"
    assert reproduce._reference_cell("sandwich_xs.cifar10") == "—"  # 1LLC trains no Sandwich ConvNet
    published = {"soc_xs.cifar10": {"claims": {"clean_accuracy": 0.7}}}
    header, _, line = reproduce.markdown([_row("soc_xs.cifar10", 0.7, 0.5)], published).splitlines()
    column = header.split("|").index(" 1LLC ConvNet-XS clean / cert 36/255 ")
    assert line.split("|")[column].strip() == "74.14 / 61.31"


def test_training_cell_sums_the_wall_clock_of_the_committed_run_log(tmp_path):
    run = tmp_path / "lot_xs.cifar10"
    run.mkdir()
    run.joinpath("log.jsonl").write_text(
        '{"epoch": 1, "seconds": 1800.0}\n{"epoch": 2, "seconds": 3600.0}\n{"epoch": 3, "seconds": 5400.0}\n')
    assert reproduce._training_cell("lot_xs.cifar10", tmp_path) == "3 ep, 3.0 h"
    assert reproduce._training_cell("soc_xs.cifar10", tmp_path) == "—"
    run.joinpath("log.jsonl").write_text('{"epoch": 1, "seconds": 3600.0, "cpu_seconds": 5400.0}\n'
                                         '{"epoch": 2, "seconds": 3600.0, "cpu_seconds": 5400.0}\n')
    assert reproduce._training_cell("lot_xs.cifar10", tmp_path) == "2 ep, 2.0 h, 1.5 h CPU / 2"
    run.joinpath("log.jsonl").write_text(
        '{"epoch": 1, "seconds": 1800.0}\n{"epoch": 2, "seconds": 3600.0}\n{"epoch": 3, "seconds": 5400.0}\n')
    published = {"lot_xs.cifar10": {"claims": {"clean_accuracy": 0.6}}}
    line = reproduce.markdown([_row("lot_xs.cifar10", 0.6, 0.5)], published, runs=tmp_path).splitlines()[-1]
    assert line.rstrip(" |").endswith("3 ep, 3.0 h")


def test_render_refuses_measurements_of_other_weights(tmp_path, monkeypatch, capsys):
    published = {"sll_xs.cifar10": {"sha256": "a" * 64, "claims": {"clean_accuracy": 0.64}}}
    monkeypatch.setattr("lipzoo._manifest.read", lambda path=None: published)
    out = tmp_path / "zoo"
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--render", "--out", str(out)])
    assert reproduce.main() == 1 and "no measurements in" in capsys.readouterr().out
    out.with_suffix(".json").write_text(json.dumps([{**_row("sll_xs.cifar10", 0.64, 0.55), "sha256": "b" * 64}]))
    assert reproduce.main() == 1 and "no measurement of the published weights" in capsys.readouterr().out
    out.with_suffix(".json").write_text(json.dumps([{**_row("sll_xs.cifar10", 0.64, 0.55), "sha256": "a" * 64}]))
    assert reproduce.main() == 0
    assert "| `sll_xs.cifar10` | 64.00 / 64.00 |" in out.with_suffix(".md").read_text()


def test_render_shows_the_command_that_measured_the_rows(tmp_path, monkeypatch):
    published = {"sll_xs.cifar10": {"sha256": "a" * 64, "claims": {"clean_accuracy": 0.64}}}
    monkeypatch.setattr("lipzoo._manifest.read", lambda path=None: published)
    out = tmp_path / "zoo"
    measured_by = "python scripts/reproduce.py --audit 200"
    row = {**_row("sll_xs.cifar10", 0.64, 0.55), "sha256": "a" * 64, "command": measured_by}
    out.with_suffix(".json").write_text(json.dumps([row]))
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--render", "--out", str(out)])
    assert reproduce.main() == 0
    assert f"Reproduce: `{measured_by}`" in out.with_suffix(".md").read_text()


def test_only_verifies_the_named_models_and_keeps_the_other_rows(tmp_path, monkeypatch, capsys):
    published = {"sll_xs.cifar10": {"sha256": "a" * 64, "claims": {}}, "lot_xs.cifar10": {"sha256": "c" * 64, "claims": {}}}
    monkeypatch.setattr("lipzoo._manifest.read", lambda path=None: published)
    verified = []

    def fake_verify(name, claims, endpoint, mode, hf_home, n_attack):
        verified.append(name)
        return _row(name, 0.63, 0.52)

    monkeypatch.setattr(reproduce, "_verify_one", fake_verify)
    monkeypatch.setattr("lipzoo.hub.server.LocalHub", lambda root: contextlib.nullcontext(SimpleNamespace(endpoint="")))
    out = tmp_path / "zoo"
    out.with_suffix(".json").write_text(json.dumps([{**_row("sll_xs.cifar10", 0.64, 0.55), "sha256": "a" * 64}]))
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--only", "soc_xs.cifar10", "--out", str(out)])
    assert reproduce.main() == 1 and "not published: soc_xs.cifar10" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--only", "lot_xs.cifar10", "--out", str(out), "--audit", "0"])
    assert reproduce.main() == 0 and verified == ["lot_xs.cifar10"]
    rows = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    assert sorted(rows) == ["lot_xs.cifar10", "sll_xs.cifar10"]
    assert rows["sll_xs.cifar10"]["report"]["checks"][0]["measured"] == 0.64  # kept, not re-measured
    assert rows["lot_xs.cifar10"]["sha256"] == "c" * 64
    # the kept row must belong to the published weights
    published["sll_xs.cifar10"]["sha256"] = "d" * 64
    assert reproduce.main() == 1 and "no measurement of the published weights of sll_xs.cifar10" in capsys.readouterr().out


def _fake_run(monkeypatch, published):
    monkeypatch.setattr("lipzoo._manifest.read", lambda path=None: published)
    verified = []

    def fake_verify(name, claims, endpoint, mode, hf_home, n_attack):
        verified.append(name)
        return _row(name, 0.63, 0.52)

    monkeypatch.setattr(reproduce, "_verify_one", fake_verify)
    monkeypatch.setattr("lipzoo.hub.server.LocalHub", lambda root: contextlib.nullcontext(SimpleNamespace(endpoint="")))
    return verified


def test_only_accepts_an_architecture_name_as_create_model_does(tmp_path, monkeypatch, capsys):
    published = {"sll_xs.cifar10": {"sha256": "a" * 64, "claims": {}}, "lot_xs.cifar10": {"sha256": "c" * 64, "claims": {}},
                 "lot_xs.cifar100": {"sha256": "e" * 64, "claims": {}}}
    verified = _fake_run(monkeypatch, published)
    out = tmp_path / "zoo"
    out.with_suffix(".json").write_text(json.dumps([{**_row(n, 0.64, 0.55), "sha256": m["sha256"]}
                                                    for n, m in published.items()]))
    for name, expected in (("sll_xs", "sll_xs.cifar10"), ("SLL-XS", "sll_xs.cifar10"), ("lot_xs", "lot_xs.cifar10"),
                           ("lot_xs.cifar100", "lot_xs.cifar100")):
        verified.clear()
        monkeypatch.setattr("sys.argv", ["reproduce.py", "--only", name, "--out", str(out), "--audit", "0"])
        assert reproduce.main() == 0, capsys.readouterr().out
        assert verified == [expected]
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--only", "soc_xs", "--out", str(out)])
    assert reproduce.main() == 1 and "not published: soc_xs" in capsys.readouterr().out


def test_a_partial_run_records_its_true_command(tmp_path, monkeypatch):
    """--only merges into <out>.json, but every row keeps the command that measured it, and the table names each."""
    published = {"sll_xs.cifar10": {"sha256": "a" * 64, "claims": {}}, "lot_xs.cifar10": {"sha256": "c" * 64, "claims": {}}}
    _fake_run(monkeypatch, published)
    out = tmp_path / "zoo"
    full_run = "python scripts/reproduce.py"
    out.with_suffix(".json").write_text(json.dumps([{**_row("sll_xs.cifar10", 0.64, 0.55), "sha256": "a" * 64,
                                                     "command": full_run}]))
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--only", "lot_xs.cifar10", "--out", str(out), "--audit", "0"])
    assert reproduce.main() == 0
    rows = {r["name"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    partial = "python scripts/reproduce.py --audit 0 --only lot_xs.cifar10"
    assert rows["lot_xs.cifar10"]["command"] == partial
    assert rows["sll_xs.cifar10"]["command"] == full_run
    md = out.with_suffix(".md").read_text()
    assert f"`{partial}`: `lot_xs.cifar10`" in md and f"`{full_run}`: `sll_xs.cifar10`" in md
    # --render shows the same provenance, not its own command line
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--render", "--out", str(out)])
    assert reproduce.main() == 0
    assert f"`{partial}`: `lot_xs.cifar10`" in out.with_suffix(".md").read_text()


def test_the_measuring_child_shows_its_progress_and_keeps_its_output(tmp_path, capfd):
    """The child's stderr (bars, notes) reaches the user as it comes; its stdout carries the result; a failing
    child's stderr tail is kept for the error cell (issue 22, item 2: reproduce.py used to be silent for 25 min)."""
    import os
    import sys

    child = tmp_path / "child.py"
    child.write_text("import sys\nsys.stderr.write('verify: 50%\\r' * 3)\nsys.stderr.flush()\nprint('LIPZOO_JSON{}')\n")
    out, tail = reproduce._run_showing_progress([sys.executable, str(child)], dict(os.environ))
    assert out.strip() == "LIPZOO_JSON{}"
    assert "verify: 50%" in tail and "verify: 50%" in capfd.readouterr().err
