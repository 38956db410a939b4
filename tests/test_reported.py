"""The papers' reported numbers (lipzoo/reported.json) and the comparison of a measurement with them
(lipzoo.reported, ``lipzoo verify ARCH --against paper[:ROW]``).

The acceptance cases load an authors'-format SLL checkpoint (the whole-model reference case recorded from the SLL
repository's own code, saved as the authors' trainer saves it) and compare it with reported rows built for the test
around numbers computed here independently of the certifier: the labels are set from the model's own predictions
(so the clean accuracy is known by construction) and the certified counts come from radii computed in this file
from the logits and the authors' head weight, at eps chosen half-way between two radii.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lipzoo
from lipzoo import reported
from lipzoo.certification import CertificationResult

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT.parent / "shared" / "fixtures" / "reference"
SLL_NET = FIXTURES / "sll" / "sll_lipschitz_network"
EPS_LABEL = re.compile(r"^\d+/255$")


# ----------------------------------------------------------------------------------------------- the data
def test_every_reported_number_has_a_source():
    doc = reported.load()
    papers = doc["papers"]
    assert doc["units"] == "percent"
    ids = [r["id"] for r in doc["rows"]]
    assert len(ids) == len(set(ids)), "row ids must be unique"
    for r in doc["rows"]:
        numbers = ([r["clean"]] if r.get("clean") is not None else []) + list(r["certified"].values())
        assert numbers, f"{r['id']}: a row without any number"
        src = r.get("source")
        assert isinstance(src, dict) and src.get("kind") and src.get("document"), f"{r['id']}: no source"
        assert r["paper"] in papers, f"{r['id']}: unknown paper {r['paper']}"
        assert isinstance(r["unverified"], bool), r["id"]
        assert r["checkpoint"] in ("best", "last", "unknown"), r["id"]
        assert r["selected_on_test_set"] in (True, False, None), r["id"]
        assert r["dataset"] in ("cifar10", "cifar100", "tinyimagenet"), r["id"]
        for v in numbers:
            assert isinstance(v, (int, float)) and 0 <= v <= 100, f"{r['id']}: {v} is not a percentage"
        for label in r["certified"]:
            assert EPS_LABEL.match(label), f"{r['id']}: eps label {label}"
        # 'unverified_numbers' names numbers of the row, and only an unverified row has them
        for label in r.get("unverified_numbers", []):
            assert label in r["certified"] and r["unverified"], r["id"]
        # a number quoted by another paper, by notes or by a README is never marked as checked against the paper
        if src["kind"] in ("secondary", "third-party", "rebuttal", "readme"):
            assert r["unverified"], f"{r['id']}: a {src['kind']} number must be unverified"
    for key, p in papers.items():
        assert p.get("title") and p.get("code") and p.get("checkpoints"), key
        assert p["checkpoint"] in ("best", "last", "unknown"), key


def test_one_primary_row_per_architecture_and_dataset():
    """Where several rows report one architecture on one dataset (a paper and a README, two quotes), exactly one is
    ``primary``, so ``--against paper`` picks a row without asking."""
    by_key: dict[tuple[str, str], list[dict]] = {}
    for r in reported.rows():
        if r["arch"] is not None:
            by_key.setdefault((r["arch"], r["dataset"]), []).append(r)
    for (arch, dataset), found in by_key.items():
        if len(found) > 1:
            assert sum(bool(r.get("primary")) for r in found) == 1, [r["id"] for r in found]
            assert reported.row_for(arch, dataset)["primary"] is True


def test_rows_name_registered_architectures():
    """The rows of the four families lipzoo builds name a registered architecture (or none, where the paper did not
    say which); 1LLC's ConvNet rows use the DESIGN names <layer>_convnet_<size> (not registered yet)."""
    registered = set(lipzoo.list_models())
    for r in reported.rows():
        if r["paper"] == "1llc":
            assert re.fullmatch(r"(soc|lot|sll|cpl|aol|cayley|bcop)_convnet_(xs|s|m|l)", r["arch"]), r["id"]
        elif r["arch"] is not None:
            assert r["arch"] in registered, r["id"]


def test_numbers_as_the_notes_record_them():
    """Spot checks typed from shared/notes/anchors-models.md (not from reported.json)."""
    xl = reported.get_row("sll_xl.cifar10")
    assert (xl["clean"], xl["certified"]) == (73.3, {"36/255": 65.8, "72/255": 58.4, "108/255": 51.3,
                                                     "255/255": 27.3})
    assert xl["unverified"] is True and xl["checkpoint"] == "last" and xl["selected_on_test_set"] is False
    sw = reported.get_row("sandwich_dnn.cifar100")
    assert (sw["clean"], sw["certified"]) == (46.3, {"36/255": 35.3})
    assert sw["unverified"] is False and sw["source"]["table"] == "Table 3" and sw["source"]["arxiv"] == "2301.11526"
    lot = reported.get_row("lot_lipconvnet40.cifar10")
    assert lot["certified"] == {"36/255": 63.50} and lot["clean"] is None  # the abstract gives no clean number
    assert lot["selected_on_test_set"] is True and lot["checkpoint"] == "best"
    lot5 = reported.get_row("lot_lipconvnet5.cifar10")
    assert (lot5["clean"], lot5["certified"]) == (77.20, {"36/255": 61.76, "72/255": 44.45, "108/255": 29.61})
    assert lot5["unverified"] is True  # an OpenReview rebuttal, not the paper's tables
    soc = reported.get_row("soc_lipconvnet25.cifar10")
    assert soc["certified"] == {"36/255": 61.9} and soc["selected_on_test_set"] is True
    c = reported.get_row("1llc.soc_convnet_m.cifar10")
    assert (c["clean"], c["certified"]["36/255"], c["certified"]["255/255"]) == (76.90, 66.34, 6.72)
    # missing numbers stay missing
    assert "72/255" not in reported.get_row("sll_s.cifar100")["certified"]
    assert reported.get_row("sll_s.cifar10")["clean"] is None


def test_numbers_of_the_new_families_as_their_sources_print_them():
    """Spot checks typed from the AOL paper (Tables 3-4), the AOL README, 1LLC Table 4 and the LOT rebuttal."""
    aol = reported.get_row("aol_l.cifar10")
    assert (aol["clean"], aol["certified"]) == (71.6, {"36/255": 64.0, "72/255": 56.4, "108/255": 49.0,
                                                       "255/255": 23.7})
    assert aol["unverified"] is False and aol["source"]["table"] == "Table 3" and aol["checkpoint"] == "last"
    assert reported.get_row("aol_s.cifar100")["certified"] == {"36/255": 32.5, "72/255": 24.8, "108/255": 19.2,
                                                               "255/255": 6.7}
    readme = reported.get_row("aol_s.cifar10.readme")
    assert (readme["clean"], readme["certified"]["36/255"], readme["unverified"]) == (70.3, 62.9, True)
    assert reported.row_for("aol_s", "cifar10")["id"] == "aol_s.cifar10"  # the paper, not the README
    cpl = reported.get_row("cpl_xl.cifar10")
    assert (cpl["clean"], cpl["certified"]) == (78.5, {"36/255": 64.4, "72/255": 48.0, "108/255": 33.0})
    assert reported.row_for("cayley_kwlarge", "cifar10")["certified"] == {"36/255": 59.1}  # 1LLC's quote
    assert reported.get_row("cayley_kwlarge.cifar10.aol")["certified"] == {"36/255": 59.2}  # AOL's quote
    soc = reported.get_row("lot-rebuttal.soc_lipconvnet5.tinyimagenet")
    assert (soc["clean"], soc["certified"]["108/255"], soc["selected_on_test_set"]) == (30.77, 6.89, True)
    # missing numbers stay missing
    assert "255/255" not in cpl["certified"] and "72/255" not in reported.get_row("bcop_kwlarge.cifar10")["certified"]
    assert not reported.rows_for("cpl_s") and not reported.rows_for("cayley_resnet9")
    # every new family's paper is described, with the epoch it reports
    papers = reported.papers()
    assert {k: papers[k]["checkpoint"] for k in ("aol", "cpl", "cayley", "bcop", "soc-iclr22")} == {
        "aol": "last", "cpl": "last", "cayley": "last", "bcop": "unknown", "soc-iclr22": "best"}
    assert papers["sll"]["arxiv"] == "2303.03169"


def test_reported_json_is_package_data():
    import fnmatch
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["lipzoo"]
    assert any(fnmatch.fnmatch("reported.json", p) for p in patterns)
    assert reported.REPORTED_JSON.parent == ROOT / "lipzoo"


def test_lookup():
    assert reported.row_for("sll-xl")["id"] == "sll_xl.cifar10"  # the primary of two cifar10 rows
    assert reported.row_for("sll_xl.cifar10", "cifar100")["id"] == "sll_xl.cifar100"
    assert {r["id"] for r in reported.rows_for("sll_xl", "cifar10")} == {"sll_xl.cifar10", "sll_xl.cifar10.corrected"}
    assert reported.resolve_against("paper", "sll_xl")["id"] == "sll_xl.cifar10"
    assert reported.resolve_against("paper:sll_xl.cifar10.corrected", "sll_xl")["certified"] == {"36/255": 64.8}
    with pytest.raises(reported.ReportedRowError, match="no reported row 'sll_xl.cifar1'.*Closest: sll_xl.cifar10"):
        reported.get_row("sll_xl.cifar1")
    with pytest.raises(reported.ReportedRowError, match="is for sll_xl, not sll_s"):
        reported.resolve_against("paper:sll_xl.cifar10", "sll_s")
    with pytest.raises(reported.ReportedRowError, match="no paper reports a number for sll_xs"):
        reported.row_for("sll_xs")
    with pytest.raises(reported.ReportedRowError, match="pass --dataset"):
        reported.row_for("sandwich_dnn", "cifar10")
    with pytest.raises(reported.ReportedRowError, match="expected 'paper'"):
        reported.resolve_against("papers", "sll_xl")
    assert "UNVERIFIED" in reported.format_row(reported.get_row("sll_xl.cifar10"))
    assert "selected on the test set" in reported.format_row(reported.get_row("lot_lipconvnet5.cifar10"))


# ------------------------------------------------------------------------------------------ the verdicts
def _result(correct: list[bool], radii: list[float], eps: tuple[float, ...]) -> CertificationResult:
    n = len(correct)
    return CertificationResult(radii=torch.tensor(radii, dtype=torch.float64), correct=torch.tensor(correct),
                               predictions=torch.zeros(n, dtype=torch.long), labels=torch.zeros(n, dtype=torch.long),
                               eps=eps, lipschitz_bound=1.0, head_rule="lln", dtype="float32")


def _row(clean, certified, selected=False, **kw):
    return {"id": "t", "paper": "test", "model": "test row", "arch": "sll_s", "dataset": "cifar10", "clean": clean,
            "certified": certified, "checkpoint": "best" if selected else "last", "selected_on_test_set": selected,
            "source": {"kind": "test", "document": "built for the test"}, "unverified": False, **kw}


def test_verdicts_of_a_certification_result():
    # 8 images: 6 correct; radii of the correct ones 0.05, 0.2, 0.2, 0.3, 0.5, 1.2
    correct = [True, True, True, False, True, True, True, False]
    radii = [0.05, 0.2, 0.2, 0.0, 0.3, 0.5, 1.2, 0.0]
    res = _result(correct, radii, (36 / 255, 72 / 255))
    # measured by hand: clean 6/8 = 75%; > 36/255 (0.1412): 5/8 = 62.5%; > 72/255 (0.2824): 3/8 = 37.5%;
    # > 108/255 (0.4235): 2/8 = 25%
    cmp = reported.compare(res, _row(75.3, {"36/255": 60.0, "72/255": 40.0, "108/255": 25.0}))
    got = {e.metric: (e.reported, e.measured, e.verdict) for e in cmp.entries}
    assert got["clean"][2] == "reproduced" and math.isclose(got["clean"][1], 75.0)
    assert got["36/255"][2] == "better" and math.isclose(got["36/255"][1], 62.5)
    assert got["72/255"][2] == "worse" and math.isclose(got["72/255"][1], 37.5)
    assert got["108/255"][2] == "reproduced" and math.isclose(got["108/255"][1], 25.0)
    assert math.isclose(cmp.entries[0].difference, -0.3)
    assert cmp.verdict == "worse" and cmp.tolerance_pp == 0.5 and cmp.reproduction
    assert "<= 0.5 percentage points" in cmp.to_text()
    # the paper selected its best epoch on the test set: a shortfall gets that verdict instead of 'worse'
    sel = reported.compare(res, _row(75.3, {"36/255": 60.0, "72/255": 40.0}, selected=True))
    assert [e.verdict for e in sel.entries] == ["reproduced", "better", "test_set_selected"]
    assert sel.verdict == "test_set_selected"
    assert "selected its best epoch on the test set" in sel.to_text()
    # all within tolerance / some better
    assert reported.compare(res, _row(75.0, {"36/255": 62.5})).verdict == "reproduced"
    assert reported.compare(res, _row(74.0, {"36/255": 62.5})).verdict == "better"
    # a wider tolerance, stated in the report
    wide = reported.compare(res, _row(75.3, {"72/255": 40.0}), tolerance_pp=3.0)
    assert wide.verdict == "reproduced" and wide.to_dict()["tolerance_pp"] == 3.0
    # a clean accuracy the paper did not report is shown, without a verdict
    nc = reported.compare(res, _row(None, {"36/255": 62.5}))
    assert [(e.metric, e.reported, e.verdict) for e in nc.entries] == [("clean", None, "not_reported"),
                                                                      ("36/255", 62.5, "reproduced")]
    assert nc.verdict == "reproduced" and math.isclose(nc.entries[0].measured, 75.0)
    with pytest.raises(ValueError, match="tolerance"):
        reported.compare(res, _row(75.0, {}), tolerance_pp=-1)


def test_compare_a_claims_record():
    claims = {"dataset": "cifar10", "split": "test", "subset": "first_100", "n": 100, "clean_accuracy": 0.70,
              "certified_accuracy": {"36/255": 0.58}, "eps": {"36/255": 36 / 255}}
    cmp = reported.compare(claims, _row(71.0, {"36/255": 58.2, "72/255": 40.0}))
    got = {e.metric: e.verdict for e in cmp.entries}
    assert got == {"clean": "worse", "36/255": "reproduced", "72/255": "not_measured"}
    assert not cmp.reproduction and cmp.subset == "first_100"
    assert "NOT a reproduction" in cmp.to_text()
    d = json.loads(cmp.to_json())
    assert d["reproduction"] is False and d["verdict"] == "worse" and d["entries"][2]["measured"] is None
    with pytest.raises(reported.ReportedRowError, match="on cifar10, the reported row"):
        reported.compare(claims, dict(_row(70.0, {}), dataset="cifar100"))


# ------------------------------------------------------------------- acceptance: an authors' checkpoint
needs_fixture = pytest.mark.skipif(not SLL_NET.with_suffix(".json").exists(), reason="reference fixtures not present")

N_IMAGES = 24
N_WRONG = 6  # the last N_WRONG images get a label other than the prediction: clean = 18/24 = 75%


def _sll_case(tmp_path):
    """(model kwargs, checkpoint path in the SLL authors' format, the authors' state, spec, recorded tensors)."""
    spec = json.loads(SLL_NET.with_suffix(".json").read_text())
    tensors = load_file(str(SLL_NET.with_suffix(".safetensors")))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    path = tmp_path / "model.ckpt"
    torch.save({"model_state_dict": {"module." + k: v for k, v in state.items()}}, path)  # DataParallel, as saved
    cfg = spec["constructor"]["config"]
    kwargs = dict(width=cfg["w"], n_conv=cfg["n_conv"], n_dense=cfg["n_dense"], conv_inner_dim=cfg["conv_inner_dim"],
                  dense_inner_dim=cfg["dense_inner_dim"], mean=list(spec["constructor"]["mean"]))
    return kwargs, path, state, spec, tensors


def _synthetic_split(tmp_path, model, head_weight):
    """A CIFAR-10 test split in torchvision's layout whose labels are the model's predictions (the last N_WRONG
    changed), and the certified radii of its images computed here: min_j (z_t - z_j) / ||w_t - w_j||, the rows of
    the authors' head weight normalised, over the whole 1-Lipschitz body (bound 1)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N_IMAGES, 3, 32, 32), dtype=np.uint8)
    x = torch.from_numpy(images).double() / 255
    with torch.no_grad():
        logits = model.double()(x)
    model.float()
    pred = logits.argmax(1)
    labels = pred.clone()
    labels[-N_WRONG:] = (pred[-N_WRONG:] + 1) % 10
    w = head_weight.double() / head_weight.double().norm(dim=1, keepdim=True)
    radii = []
    for i in range(N_IMAGES):
        t = int(pred[i])
        r = min(float((logits[i, t] - logits[i, j]) / (w[t] - w[j]).norm()) for j in range(10) if j != t)
        radii.append(r if i < N_IMAGES - N_WRONG else 0.0)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": images.reshape(N_IMAGES, -1), "labels": labels.tolist()}, f)
    return tmp_path / "data", np.array(radii)


def _eps_between(radii: np.ndarray, ks: range) -> tuple[int, float]:
    """``(k, eps)``: eps half-way between the k-th and (k+1)-th largest positive radius, for the k in ``ks`` with the
    widest gap, so that exactly k images are certified with a margin far above the certifier's rounding slack
    (~1e-4 here)."""
    r = np.sort(radii[radii > 0])[::-1]
    k = max(ks, key=lambda k: r[k - 1] - r[k])
    assert r[k - 1] - r[k] > 2e-3, "radii too close for a robust eps"
    return k, float((r[k - 1] + r[k]) / 2)


def _prepare(tmp_path):
    kwargs, ckpt, state, spec, tensors = _sll_case(tmp_path)
    model = lipzoo.create_model("sll_s", checkpoint_path=ckpt, checkpoint_format="sll", **kwargs).eval()
    with torch.no_grad():  # the converted model computes what the authors' code recorded
        assert (model.double()(tensors["input"]) - tensors["output_eval"]).abs().max().item() < 1e-6
    model.float()
    head_key = [k for k in state if k.endswith(".weight") and state[k].shape[0] == 10][-1]
    root, radii = _synthetic_split(tmp_path, model, state[head_key])
    (k_lo, eps_lo), (k_hi, eps_hi) = _eps_between(radii, range(8, 15)), _eps_between(radii, range(2, 6))
    # measured independently: clean 18/24 = 75%, and k of 24 images certified at each eps
    measured = {"clean": 75.0, repr(eps_lo): 100 * k_lo / N_IMAGES, repr(eps_hi): 100 * k_hi / N_IMAGES}
    return kwargs, ckpt, model, root, measured


def _rows_file(tmp_path, measured: dict[str, float]) -> Path:
    """Reported rows built for the test around the measured numbers (labels of eps values that are not n/255 name
    their value, as lipzoo.certification.eps_label writes them)."""
    lo, hi = [k for k in measured if k != "clean"]

    def row(id, delta, selected=False):
        return {"id": id, "paper": "test", "model": f"test row ({id})", "arch": "sll_s", "dataset": "cifar10",
                "clean": measured["clean"] + delta[0],
                "certified": {lo: measured[lo] + delta[1], hi: measured[hi] + delta[2]},
                "checkpoint": "best" if selected else "last", "selected_on_test_set": selected,
                "source": {"kind": "test", "document": "built for tests/test_reported.py"}, "unverified": False}

    rows = [row("equal", (0.0, 0.3, -0.4)), row("better", (-5.0, -10.0, -5.0)), row("worse", (5.0, 10.0, 0.0)),
            row("selected", (5.0, 0.0, 0.0), selected=True)]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"papers": {"test": {"title": "test", "code": "-", "checkpoints": "-",
                                                    "checkpoint": "last"}}, "rows": rows}))
    return path


@needs_fixture
def test_verify_against_an_authors_checkpoint_python_api(tmp_path):
    kwargs, ckpt, model, root, measured = _prepare(tmp_path)
    rows = _rows_file(tmp_path, measured)
    data = lipzoo.data.CIFAR("cifar10", "test", root=root)
    expected = {"equal": ("reproduced", ["reproduced"] * 3), "better": ("better", ["better"] * 3),
                "worse": ("worse", ["worse", "worse", "reproduced"]),
                "selected": ("test_set_selected", ["test_set_selected", "reproduced", "reproduced"])}
    for row_id, (overall, each) in expected.items():
        cmp = reported.verify_against(model, reported.get_row(row_id, rows), data=data)
        assert [e.verdict for e in cmp.entries] == each, row_id
        assert cmp.verdict == overall
        assert [e.measured for e in cmp.entries] == pytest.approx([measured[k] for k in measured], abs=1e-9)
        assert cmp.n == N_IMAGES and cmp.reproduction  # the whole (synthetic) split
    sub = reported.verify_against(model, reported.get_row("equal", rows), data=data, n=20)
    assert sub.subset == "first_20" and not sub.reproduction and "NOT a reproduction" in sub.to_text()


# ---------------------------------------------------------------------- acceptance: the command line
def _cli(argv, capsys):
    from lipzoo.cli import main

    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@needs_fixture
def test_cli_verify_against_an_authors_checkpoint(tmp_path, capsys):
    """``lipzoo verify sll_s --checkpoint model.ckpt --checkpoint-format sll --against rows.json:ROW`` converts the
    authors' checkpoint, certifies it and gives the right verdict for equal, better and worse numbers."""
    kwargs, ckpt, model, root, measured = _prepare(tmp_path)
    rows = _rows_file(tmp_path, measured)
    base = ["verify", "sll_s", "--checkpoint", str(ckpt), "--checkpoint-format", "sll", "--data", str(root),
            "--model-args", json.dumps(kwargs), "--quiet"]
    expected = {"equal": (0, "reproduced", ["reproduced"] * 3), "better": (0, "better", ["better"] * 3),
                "worse": (1, "worse", ["worse", "worse", "reproduced"]),
                "selected": (1, "test_set_selected", ["test_set_selected", "reproduced", "reproduced"])}
    for row_id, (code, overall, each) in expected.items():
        out_json = tmp_path / f"{row_id}.json"
        rc, out, err = _cli(base + ["--against", f"{rows}:{row_id}", "--json", str(out_json)], capsys)
        assert rc == code, (row_id, out, err)
        report = json.loads(out_json.read_text())
        assert report["verdict"] == overall and [e["verdict"] for e in report["entries"]] == each
        assert [e["measured"] for e in report["entries"]] == pytest.approx(list(measured.values()), abs=1e-9)
        assert [e["metric"] for e in report["entries"]] == list(measured)
        assert report["tolerance_pp"] == 0.5 and report["n"] == N_IMAGES and report["reproduction"] is True
        assert report["checkpoint_format"] == "sll" and report["row"] == row_id
        assert "<= 0.5 percentage points" in out  # the tolerance is stated
        for e in report["entries"]:  # paper vs measured with the difference, per eps
            assert f"{e['reported']:.2f}" in out and f"{e['measured']:.2f}" in out
            assert f"{e['difference_pp']:+.2f}" in out
    assert "worse, but the paper selected its best epoch on the test set" in out  # the last row printed
    # a subset: clearly not a reproduction
    rc, out, err = _cli(base + ["--against", f"{rows}:equal", "--n", "12", "--json", str(tmp_path / "n.json")], capsys)
    report = json.loads((tmp_path / "n.json").read_text())
    assert report["reproduction"] is False and report["subset"] == "first_12" and report["n"] == 12
    assert out.startswith("*** SUBSET of 12 test images") and "NOT a reproduction" in out
    # a wider tolerance turns 'worse' (5 pp) into 'reproduced', and says so
    rc, out, err = _cli(base + ["--against", f"{rows}:worse", "--tolerance", "12"], capsys)
    assert rc == 0 and "<= 12 percentage points" in out and "verdict: reproduced" in out


@needs_fixture
def test_cli_against_errors_are_one_line(tmp_path, capsys):
    kwargs, ckpt, *_ = _sll_case(tmp_path)
    base = ["verify", "sll_s", "--checkpoint", str(ckpt), "--checkpoint-format", "sll", "--model-args",
            json.dumps(kwargs)]
    rc, out, err = _cli(base + ["--against", "paper:no_such_row"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "no reported row 'no_such_row'" in err
    rc, out, err = _cli(base + ["--against", "paper:sll_xl.cifar10"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "is for sll_xl, not sll_s" in err
    rc, out, err = _cli(base + ["--against", "paper", "--dataset", "cifar100", "--claims", "x.json"], capsys)
    assert rc == 2 and "drop --claims" in err
    rc, out, err = _cli(["verify", "sll_s", "--checkpoint", str(ckpt), "--n", "5"], capsys)
    assert rc == 2 and "--against" in err
    with pytest.raises(SystemExit) as e:  # an unknown format: argparse names the choices
        _cli(base[:4] + ["--checkpoint-format", "nope", "--against", "paper"], capsys)
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_info_shows_the_reported_rows(capsys):
    rc, out, err = _cli(["info", "sll_xl"], capsys)
    assert rc == 0
    lines = [line for line in out.splitlines() if "sll_xl.cifar10" in line]
    assert any("clean 73.3" in line and "36/255 65.8" in line and "UNVERIFIED" in line for line in lines)
    rc, out, err = _cli(["info", "sll_xl", "--json"], capsys)
    info = json.loads(out)
    assert {r["id"] for r in info["reported"]} >= {"sll_xl.cifar10", "sll_xl.cifar100"}
    rc, out, err = _cli(["info", "sll_xs"], capsys)
    assert "no paper" in out


def test_lipzoo_reported_is_reachable_from_the_package():
    import subprocess
    import sys

    code = "import lipzoo; print(lipzoo.reported.row_for('sll-xl')['id'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "sll_xl.cifar10"
