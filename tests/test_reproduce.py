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


# ------------------------------------------------------------------------------------------- family comparison
_REPO = Path(__file__).resolve().parent.parent
_LAYER_FAMILIES = {"aol", "bcop", "cayley", "cpl", "lot", "sandwich", "sll", "soc"}
_EPS = ("36/255", "72/255", "108/255", "255/255")


def _family_table(md: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The family table of ``md`` as ``family -> {column: cell}``; asserts that no family has two rows."""
    lines = [line for line in md.split("\n\n")[0].splitlines()]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]
    assert all(len(row) == len(header) for row in body)
    table = {row[0]: dict(zip(header, row)) for row in body}
    assert len(table) == len(body)
    return header, table


def test_family_table_has_one_row_per_layer_family_with_the_measured_numbers_of_zoo_json():
    """Every layer family has exactly one row; the published compact models' cells are the measurements of the
    committed results/zoo.json, the 1LLC cells the rows of lipzoo/reported.json (both read here, in the test)."""
    import lipzoo
    from lipzoo import _manifest

    zoo = json.loads((_REPO / "results" / "zoo.json").read_text())
    _, table = _family_table(reproduce.family_markdown(reproduce.family_rows(zoo, _manifest.read())))
    assert _LAYER_FAMILIES <= set(table)
    compact = [r for r in zoo if lipzoo.model_info(r["name"].split(".")[0])["compact"]]
    assert compact
    for r in compact:
        arch = r["name"].split(".")[0]
        row = table[lipzoo.model_info(arch)["family"]]
        measured = {c["name"]: c["measured"] for c in r["report"]["checks"]}
        assert row["compact model"] == f"`{arch}`" and row["weights"] == f"`{r['name']}`"
        assert row["clean"] == f"{100 * measured['clean accuracy']:.2f}"
        for e in _EPS:
            assert row[f"cert {e}"] == f"{100 * measured[f'certified accuracy @ {e}']:.2f}"
    reported = {r["id"]: r for r in json.loads((_REPO / "lipzoo" / "reported.json").read_text())["rows"]}
    for family in _LAYER_FAMILIES:
        ref = reported.get(f"1llc.{family}_convnet_xs.cifar10")
        expected = "—" if ref is None else f"{ref['clean']:.2f} / {ref['certified']['36/255']:.2f}"
        assert table[family]["1LLC XS clean / cert 36/255"] == expected
    assert table["sandwich"]["1LLC XS clean / cert 36/255"] == "—"  # 1LLC trains no Sandwich ConvNet


def test_families_without_weights_say_so_and_show_params_speeds_and_cpu_hours(tmp_path, monkeypatch):
    published = {"sll_xs.cifar10": {"claims": {"dataset": "cifar10"}}, "lot_xs.cifar10": {"claims": {}}}
    runs = tmp_path / "runs"
    for name, log in (("sll_xs.cifar10", '{"epoch": 1, "seconds": 1800.0, "cpu_seconds": 3600.0}\n'
                                         '{"epoch": 2, "seconds": 1800.0, "cpu_seconds": 5400.0}\n'),
                      ("lot_xs.cifar10", '{"epoch": 1, "seconds": 1800.0}\n{"epoch": 2, "seconds": 1800.0}\n')):
        runs.joinpath(name).mkdir(parents=True)
        runs.joinpath(name, "log.jsonl").write_text(log)
    bench = tmp_path / "bench_certify.json"
    bench.write_text(json.dumps({"certify": [{"model": "aol_xs", "n": 10000, "seconds": 20.0}]}))
    rows = [_row("sll_xs.cifar10", 0.7025, 0.5848), _row("lot_xs.cifar10", 0.7383, 0.5522)]
    frows = reproduce.family_rows(rows, published, runs=runs, bench_certify=bench)
    _, table = _family_table(reproduce.family_markdown(frows))
    bench_models = {m["model"]: m for m in json.loads((_REPO / "results" / "bench_models.json").read_text())["models"]}
    for family in _LAYER_FAMILIES - {"sll", "lot"}:
        row = table[family]
        assert row["weights"] == "no weights published yet"
        assert row["clean"] == row["cert 36/255"] == row["training CPU-h"] == "—"
        assert row["params"] == f"{bench_models[f'{family}_xs']['params'] / 1e6:.2f} M"
        assert abs(int(row["train img/s"]) - bench_models[f"{family}_xs"]["train_images_per_s"]) <= 1
    assert table["aol"]["eval img/s"] == "500" and table["cayley"]["eval img/s"] == "—"
    assert table["sll"]["clean"] == "70.25" and table["sll"]["cert 36/255"] == "58.48"
    assert table["sll"]["cert 72/255"] == "—"  # not measured in this row
    # process CPU time summed over the epochs; a log without it: wall clock x 2 cores, marked as a bound
    assert table["sll"]["training CPU-h"] == "2.50 (2 ep)"
    assert table["lot"]["training CPU-h"] == "≤ 2.00 (2 ep)"
    # newly published weights not yet in zoo.json
    published["cayley_xs.cifar10"] = {"claims": {}}
    _, table = _family_table(reproduce.family_markdown(reproduce.family_rows(rows, published, runs=runs)))
    assert table["cayley"]["weights"] == "`cayley_xs.cifar10` (published, not measured)"


def test_family_figure_is_written(tmp_path):
    published = {"sll_xs.cifar10": {"claims": {}}, "soc_xs.cifar10": {"claims": {}}}
    rows = [_row("sll_xs.cifar10", 0.7025, 0.5848), _row("soc_xs.cifar10", 0.7048, 0.516)]
    models = reproduce.model_records(rows, published, runs=_REPO / "results" / "runs")
    assert [m["model"] for m in models] == ["sll_xs.cifar10", "soc_xs.cifar10"]
    for name, records in (("two.png", models), ("none.png", [])):
        path = reproduce.family_figure(records, tmp_path / name)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_render_update_readme_writes_the_family_files_and_block_idempotently(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Model zoo\n\n<!-- zoo-table:begin -->\nold zoo\n<!-- zoo-table:end -->\n\n"
                      "## Family comparison\n\nIntro kept.\n\n<!-- family-table:begin -->\nold families\n"
                      "<!-- family-table:end -->\n\n## Architectures\n\nkept\n")
    monkeypatch.setattr(reproduce, "README", readme)
    published = {"sll_xs.cifar10": {"sha256": "a" * 64, "claims": {"clean_accuracy": 0.64}}}
    monkeypatch.setattr("lipzoo._manifest.read", lambda path=None: published)
    out = tmp_path / "results" / "zoo"
    out.parent.mkdir()
    out.with_suffix(".json").write_text(json.dumps([{**_row("sll_xs.cifar10", 0.64, 0.55), "sha256": "a" * 64}]))
    monkeypatch.setattr("sys.argv", ["reproduce.py", "--render", "--update-readme", "--out", str(out)])
    assert reproduce.main() == 0
    first = readme.read_text()
    assert "old zoo" not in first and "old families" not in first
    assert "Intro kept." in first and first.endswith("## Architectures\n\nkept\n")
    block = first.split("<!-- family-table:begin -->\n")[1].split("\n<!-- family-table:end -->")[0]
    assert "| sll | `sll_xs` | `sll_xs.cifar10` | 64.00 | 55.00 |" in block
    assert "](results/families.png)" in block and "python scripts/reproduce.py --render --update-readme" in block
    for name in ("families.md", "families.json", "families.png"):
        assert (tmp_path / "results" / name).is_file()
    families = json.loads((tmp_path / "results" / "families.json").read_text())
    assert {r["family"] for r in families["families"]} >= _LAYER_FAMILIES
    assert [m["model"] for m in families["models"]] == ["sll_xs.cifar10"]
    assert reproduce.main() == 0
    assert readme.read_text() == first
