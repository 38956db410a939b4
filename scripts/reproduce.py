#!/usr/bin/env python
"""Download every published model through the local hub, verify its claims, write claimed-vs-measured tables.

    python scripts/reproduce.py [--quick] [--audit N] [--out results/zoo] [--update-readme]
    python scripts/reproduce.py --render [--update-readme]   # rebuild the tables from <out>.json, no re-verification
    python scripts/reproduce.py --only lot_xs.cifar10 [--update-readme]   # verify one model, keep the other rows
    python scripts/reproduce.py --only lot_xs          # an architecture: its weights as create_model picks them

Starts the embedded hub (olah on 127.0.0.1) serving the project's ``hub/``, then, for each entry of
``lipzoo/hub/published.json``, runs a fresh interpreter with ``HF_ENDPOINT`` pointing at it (huggingface_hub reads
it at import) and a temporary ``HF_HOME``, which downloads the model with ``lipzoo.create_model(name,
pretrained=True)`` (sha256-checked), verifies the claims of its card on the CIFAR test set (full by default) and
audits it (``lipzoo.audit``: PGD-l2 on ``--audit`` certified test points, each inside its own certified radius).
Writes ``<out>.md`` and ``<out>.json``; ``--update-readme`` replaces the README's "Model zoo" table. The training
column sums the epoch wall-clock times of the run's log committed in ``results/runs/<name>/log.jsonl``.

Beside them (same folder) the family comparison: ``families.md`` (one row per family: its compact model's measured
accuracies, parameters, training CPU-hours, train and eval speed, the 1LLC ConvNet-XS reference), ``families.json``
(the same rows, accuracies as fractions) and ``families.png`` (certified accuracy against eps, and at 36/255 against
training CPU-hours, for every published model); ``--update-readme`` also replaces the README's family block.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import threading
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BEGIN, END = "<!-- zoo-table:begin -->", "<!-- zoo-table:end -->"
FAMILY_BEGIN, FAMILY_END = "<!-- family-table:begin -->", "<!-- family-table:end -->"
README = REPO / "README.md"
RUNS = REPO / "results" / "runs"
BENCH_CERTIFY = REPO / "results" / "bench_certify.json"
EPS_LABELS = ["36/255", "72/255", "108/255", "255/255"]
CPU_CORES = 2  # this project's CPU: a run's process CPU time is at most its wall-clock time x CPU_CORES
_CERT = "certified accuracy @ "


def targets() -> dict[str, tuple[float, float]]:
    """The project's targets (issue #8) as the families declare them (``Variant.targets``): ``arch.tag`` ->
    (clean accuracy, certified accuracy at 36/255)."""
    from lipzoo.models import FAMILIES

    return {f"{arch}.{tag}": goal for family in FAMILIES.values() for arch, variant in family.variants.items()
            for tag, goal in variant.targets.items()}


_CHILD = r"""
import json, sys, time
import lipzoo
from lipzoo import verify
name, mode = sys.argv[1], sys.argv[2]
t = time.time()
model = lipzoo.create_model(name, pretrained=True, verify=False)
claims = json.loads(open(sys.argv[3]).read())
report = verify(model, claims, mode=mode, progress=True)
out = {"name": name, "mode": mode, "passed": bool(report.passed), "report": report.to_dict(),
       "seconds": time.time() - t}
n_attack = int(sys.argv[4])
if n_attack:
    import torch
    from lipzoo import audit
    from lipzoo.data import CIFAR
    t = time.time()
    x, y = CIFAR(claims.get("dataset", "cifar10"), "test").tensors()
    # PGD-l2 on the first n_attack correctly classified points with a positive certified radius
    a = audit(model, x[: 4 * n_attack], y[: 4 * n_attack], n_attack=n_attack, pgd_steps=50, restarts=2,
              power_iters=10, n_probe=4, pair_steps=10, rounding=True, progress=True)
    out["audit"] = {"ok": a.ok, "pgd": a.pgd, "model_estimate": a.model_estimate, "problems": a.problems,
                    "seconds": time.time() - t}
    out["passed"] = out["passed"] and a.ok
print("LIPZOO_JSON" + json.dumps(out, default=str))
"""


def _verify_one(name: str, claims: dict, endpoint: str, mode: str, hf_home: str, n_attack: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(claims, f)
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=hf_home, LIPZOO_VERIFY="0")
    stdout, stderr_tail = _run_showing_progress([sys.executable, "-c", _CHILD, name, mode, f.name, str(n_attack)], env)
    os.unlink(f.name)
    for line in stdout.splitlines():
        if line.startswith("LIPZOO_JSON"):
            return json.loads(line[len("LIPZOO_JSON"):])
    return {"name": name, "mode": mode, "passed": False, "error": (stderr_tail or stdout)[-2000:]}


def _run_showing_progress(cmd: list[str], env: dict) -> tuple[str, str]:
    """Run ``cmd``: its stderr (progress bars, notes) goes through to ours as it comes; returns (stdout, the last
    4,000 characters of stderr)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    tail = bytearray()

    def pump() -> None:
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            tail.extend(chunk)
            del tail[:-4000]

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    stdout = proc.stdout.read().decode(errors="replace")
    proc.wait()
    thread.join()
    return stdout, tail.decode(errors="replace")


def _pct(x) -> str:
    return "—" if x is None else f"{100 * float(x):.2f}"


def _target_cell(name: str, clean: float | None, cert36: float | None) -> str:
    """``target clean / cert36: met``, or the measured shortfall in percentage points."""
    goals = targets()
    if name not in goals:
        return "—"
    goal_clean, goal_cert = goals[name]
    label = f"{_pct(goal_clean)} / {_pct(goal_cert)}"
    if clean is None or cert36 is None:
        return f"{label}: not measured"
    gaps = [f"{what} {100 * (got - goal):+.2f} pp" for what, got, goal in
            (("clean", clean, goal_clean), ("cert", cert36, goal_cert)) if got < goal]
    return f"{label}: " + (", ".join(gaps) if gaps else "met")


def training_record(name: str, runs: Path = RUNS) -> dict | None:
    """The run of ``name`` as its committed ``<runs>/<name>/log.jsonl`` records it (every record, partial epochs of
    a resumed run included): ``epochs``, ``wall_hours`` (summed epoch wall-clock time) and ``cpu_hours`` (the
    training process's CPU time, ``time.process_time()`` over all its threads, summed / 3600; ``None`` unless every
    record has it, and then ``cpu_hours_upper_bound`` = wall hours x ``CPU_CORES``). ``None`` without a log."""
    log = runs / name / "log.jsonl"
    if not log.is_file():
        return None
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not epochs:
        return None
    wall = sum(float(e.get("seconds", 0.0)) for e in epochs) / 3600
    rec = {"epochs": max(int(e["epoch"]) for e in epochs), "wall_hours": wall, "cpu_hours": None}
    if all("cpu_seconds" in e for e in epochs):
        rec["cpu_hours"] = sum(float(e["cpu_seconds"]) for e in epochs) / 3600
    else:
        rec["cpu_hours_upper_bound"] = wall * CPU_CORES
    return rec


def _training_cell(name: str, runs: Path = RUNS) -> str:
    """``<epochs> ep, <hours> h``: epochs and summed wall-clock time of the run's committed log (2-core CPU), and
    ``, <cpu> h CPU / 2`` (the process's CPU time over both cores) when every epoch recorded it."""
    rec = training_record(name, runs)
    if rec is None:
        return "—"
    cell = f"{rec['epochs']} ep, {rec['wall_hours']:.1f} h"
    if rec["cpu_hours"] is not None:
        cell += f", {rec['cpu_hours'] / 2:.1f} h CPU / 2"
    return cell


def _reference_row(family: str, dataset: str) -> dict | None:
    """The 1LLC benchmark's ConvNet-XS with ``family``'s layer on ``dataset`` (24 h on an A100; ``lipzoo.reported``
    row ``1llc.<family>_convnet_xs.<dataset>``), or ``None`` where 1LLC reports none."""
    from lipzoo.reported import ReportedRowError, get_row

    try:
        return get_row(f"1llc.{family}_convnet_xs.{dataset}")
    except ReportedRowError:
        return None


def _reference_cell(name: str) -> str:
    """The 1LLC benchmark's ConvNet-XS with the model's family (CIFAR-10, 24 h on an A100; ``lipzoo.reported``):
    ``clean / certified at 36/255``, the compact-model reference (weights issue, round 2)."""
    arch, _, dataset = name.partition(".")
    row = _reference_row(arch.rsplit("_", 1)[0], dataset)
    if row is None or row.get("clean") is None:
        return "—"
    cert = (row.get("certified") or {}).get("36/255")
    return f"{row['clean']:.2f} / {'—' if cert is None else f'{cert:.2f}'}"


def _measured(row: dict) -> dict:
    """``check name -> measured value`` of the verification report of a zoo.json row."""
    return {check.get("name"): check.get("measured") for check in (row.get("report") or {}).get("checks", [])}


def markdown(rows: list[dict], published: dict, runs: Path = RUNS) -> str:
    eps_labels = EPS_LABELS
    head = "| model | clean (claimed / measured) | " + " | ".join(f"cert {e} (claimed / measured)" for e in eps_labels) \
        + " | L bound | PGD violations | verified | target clean / cert 36/255 | 1LLC ConvNet-XS clean / cert 36/255 " \
        "| training |"
    lines = [head, "|" + "---|" * (len(eps_labels) + 8)]
    for r in rows:
        claims = published[r["name"]].get("claims") or {}
        measured = _measured(r)
        cells = [f"`{r['name']}`", f"{_pct(claims.get('clean_accuracy'))} / {_pct(measured.get('clean accuracy'))}"]
        for e in eps_labels:
            c = (claims.get("certified_accuracy") or {}).get(e)
            m = measured.get(f"certified accuracy @ {e}")
            cells.append(f"{_pct(c)} / {_pct(m)}")
        cells.append(f"{claims.get('lipschitz_bound', float('nan')):.6f}")
        pgd = (r.get("audit") or {}).get("pgd")
        cells.append(f"{pgd['n_violations']} / {pgd['n_attacked']}" if pgd else "—")
        cells.append(("pass" if r.get("passed") else "**FAIL**") + f" ({r.get('mode')})")
        cells.append(_target_cell(r["name"], measured.get("clean accuracy"), measured.get("certified accuracy @ 36/255")))
        cells.append(_reference_cell(r["name"]))
        cells.append(_training_cell(r["name"], runs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- family comparison
def _accuracies(row: dict | None) -> tuple[float | None, dict[str, float]]:
    """``(clean accuracy, {eps label: certified accuracy})`` as the verification of a zoo.json row measured them
    (fractions; eps in increasing order); ``(None, {})`` for no row."""
    from lipzoo.certification.eps import parse_eps

    measured = _measured(row or {})
    cert = {k[len(_CERT):]: float(v) for k, v in measured.items() if k and k.startswith(_CERT) and v is not None}
    clean = measured.get("clean accuracy")
    return (None if clean is None else float(clean)), dict(sorted(cert.items(), key=lambda kv: parse_eps(kv[0])))


def _reference_family(family: str) -> str:
    """The family whose 1LLC ConvNet-XS is ``family``'s reference: itself for a layer family; for an architecture
    that takes ``conv=<family>`` (the ConvNet benchmark), its default convolution."""
    import inspect

    from lipzoo.models import FAMILIES

    conv = inspect.signature(FAMILIES[family].model).parameters.get("conv")
    return family if conv is None or not isinstance(conv.default, str) else conv.default


def _reference(family: str, dataset: str) -> dict | None:
    """The 1LLC ConvNet-XS reference of ``family`` as a record: row id, clean and certified accuracy (fractions)."""
    row = _reference_row(_reference_family(family), dataset)
    if row is None or row.get("clean") is None:
        return None
    return {"id": row["id"], "clean_accuracy": round(row["clean"] / 100, 6),
            "certified_accuracy": {k: round(v / 100, 6) for k, v in (row.get("certified") or {}).items()},
            "training": "24 h on one A100 GPU"}


def _model_record(name: str, row: dict | None, published: dict, runs: Path) -> dict:
    """A published model as the family table and figure use it: its family, measured accuracies, training run and
    the 1LLC reference of its family on its dataset."""
    import lipzoo

    arch = name.partition(".")[0]
    family = lipzoo.model_info(arch)["family"]
    clean, cert = _accuracies(row)
    dataset = published.get(name, {}).get("dataset") or (published.get(name, {}).get("claims") or {}).get("dataset")
    return {"model": name, "arch": arch, "family": family, "measured": row is not None,
            "n": ((row or {}).get("report") or {}).get("n"), "clean_accuracy": clean, "certified_accuracy": cert, "training": training_record(name, runs),
            "reference": _reference(family, dataset or "cifar10")}


def model_records(rows: list[dict], published: dict, runs: Path = RUNS) -> list[dict]:
    """One record per published model measured in ``rows`` (zoo.json), by name."""
    return [_model_record(r["name"], r, published, runs) for r in sorted(rows, key=lambda r: r["name"])
            if r["name"] in published]


def _eval_speeds(path: Path) -> dict[str, float]:
    """``arch -> images/s`` certified, from ``scripts/bench.py certify``'s record (``n`` images in ``seconds``)."""
    if not path.is_file():
        return {}
    return {r["model"]: r["n"] / r["seconds"] for r in json.loads(path.read_text()).get("certify", [])
            if r.get("seconds")}


def family_rows(rows: list[dict], published: dict, runs: Path = RUNS,
                bench_certify: Path = BENCH_CERTIFY) -> list[dict]:
    """One row per family's compact model (``compact=True`` in its variant table): the layer families (those whose
    convolution the ConvNet benchmark takes) alphabetically, then the other architectures (the ConvNet). A row holds
    ``params`` and the measured ``train_images_per_s`` (``lipzoo.model_info``) and ``eval_images_per_s``
    (``bench_certify``, ``None`` where not measured); for published weights (CIFAR-10 preferred, as create_model picks
    them) the accuracies measured in ``rows`` and the training run; ``status`` says which case applies."""
    import lipzoo
    from lipzoo.models import FAMILIES
    from lipzoo.models.convnet import convnet_families

    layers = convnet_families()
    by_name = {r["name"]: r for r in rows}
    speeds = _eval_speeds(bench_certify)
    out = []
    for family in layers + sorted(set(FAMILIES) - set(layers)):
        for arch in sorted(a for a, v in FAMILIES[family].variants.items() if v.compact):
            info = lipzoo.model_info(arch)
            name = resolve_published(arch, published)
            if name is not None:
                rec = _model_record(name, by_name.get(name), published, runs)
                status = "published" if rec["measured"] else "published, not measured"
            else:
                rec = {"model": None, "n": None, "clean_accuracy": None, "certified_accuracy": {}, "training": None,
                       "reference": _reference(family, "cifar10")}
                status = "no weights published yet"
            out.append({"family": family, "layer_family": family in layers, "arch": arch, "status": status,
                        "params": info["params"],
                        "train_images_per_s": (info.get("measured_training") or {}).get("train_images_per_s"),
                        "eval_images_per_s": speeds.get(arch),
                        **{k: rec[k] for k in ("model", "n", "clean_accuracy", "certified_accuracy", "training",
                                               "reference")}})
    return out


def _cpu_hours(training: dict | None) -> tuple[float | None, bool]:
    """``(training CPU-hours, is an upper bound)`` of a training record; ``(None, False)`` without one."""
    if not training:
        return None, False
    if training.get("cpu_hours") is not None:
        return training["cpu_hours"], False
    return training.get("cpu_hours_upper_bound"), True


def _cpu_hours_cell(training: dict | None) -> str:
    hours, bound = _cpu_hours(training)
    if hours is None:
        return "—"
    return f"{'≤ ' if bound else ''}{hours:.2f} ({training['epochs']} ep)"


def _weights_cell(r: dict) -> str:
    """The published weights of a family row, with the number of test images where not the full 10,000."""
    if not r["model"]:
        return r["status"]
    cell = f"`{r['model']}`" + ("" if r["status"] == "published" else f" ({r['status']})")
    return cell + (f" (n = {r['n']})" if r["n"] not in (None, 10000) else "")


def family_markdown(frows: list[dict]) -> str:
    """The family comparison table (accuracies in percent, CIFAR-10 test set) and its note."""
    head = ["family", "compact model", "weights", "clean", *(f"cert {e}" for e in EPS_LABELS), "params",
            "training CPU-h", "train img/s", "eval img/s", "1LLC XS clean / cert 36/255"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in frows:
        ref = r.get("reference")
        ref36 = (ref or {}).get("certified_accuracy", {}).get("36/255")
        cells = [
            f"{r['family']}" if r["layer_family"] else f"{r['family']} (benchmark)", f"`{r['arch']}`",
            _weights_cell(r),
            _pct(r["clean_accuracy"]), *(_pct(r["certified_accuracy"].get(e)) for e in EPS_LABELS),
            f"{r['params'] / 1e6:.2f} M", _cpu_hours_cell(r["training"]),
            "—" if r["train_images_per_s"] is None else f"{r['train_images_per_s']:.0f}",
            "—" if r["eval_images_per_s"] is None else f"{r['eval_images_per_s']:.0f}",
            "—" if ref is None else f"{_pct(ref['clean_accuracy'])} / {_pct(ref36)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    hows = sorted({_train_speed_how(r["arch"]) for r in frows} - {None})
    conv = ", ".join(sorted({_reference_family(r["family"]) for r in frows if not r["layer_family"]}))
    benchmark = f" (for the benchmark: its default, {conv})" if conv else ""
    note = (
        "Compact model: each family's variant sized for training on a 2-core CPU (`compact=True`). Accuracies (%): "
        "CIFAR-10 test set (all 10,000 images unless `n` says otherwise) as `scripts/reproduce.py` measured the "
        "published weights "
        "(`results/zoo.json`). Training CPU-h: the training process's CPU time (`time.process_time()`, all threads) "
        "summed over the epochs of `results/runs/<model>/log.jsonl`, / 3600, on this project's 2-core CPU; `≤`: the "
        f"log predates CPU-time records, so wall-clock hours x {CPU_CORES} cores, an upper bound. "
        f"Train img/s: {'; '.join(f'`{h}`' for h in hows) or '—'}. Eval img/s: 10,000 / the seconds "
        "`python scripts/bench.py certify` took to certify the CIFAR-10 test set (float32, random weights, 2 cores; "
        "`results/bench_certify.json`; — where not measured). 1LLC XS: the 1LLC benchmark's ConvNet-XS with the "
        f"family's layer{benchmark}, trained 24 h on "
        "an A100 GPU (Prach et al. 2024, Table 2; rows `1llc.<family>_convnet_xs.cifar10` of `lipzoo/reported.json`): "
        "the published reference, GPU hours, not lipzoo's architecture.")
    return "\n".join(lines) + "\n\n" + note


def _train_speed_how(arch: str) -> str | None:
    import lipzoo

    return (lipzoo.model_info(arch).get("measured_training") or {}).get("how")


def family_figure(models: list[dict], path: Path) -> Path:
    """Two panels for the published models: certified accuracy against eps (measured points; the family's 1LLC
    ConvNet-XS dashed), and certified accuracy at 36/255 against training CPU-hours (the 1LLC value as a dashed
    level: 24 h of GPU time, not a point on the CPU axis). Writes ``path`` (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from lipzoo.certification.eps import parse_eps
    from lipzoo.models import FAMILIES

    palette = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # grey is for the 1LLC legend
    colors = {f: palette[i % len(palette)] for i, f in enumerate(sorted(FAMILIES))}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.2), dpi=110)
    points = []
    for m in models:
        c = colors.get(m["family"], "0.3")
        cert, ref = m["certified_accuracy"], m.get("reference")
        if cert:
            ax1.plot([parse_eps(k) for k in cert], [100 * v for v in cert.values()], "o-", color=c, label=m["model"])
        if m["clean_accuracy"] is not None:
            ax1.plot([0.0], [100 * m["clean_accuracy"]], "s", color=c)
        if ref and ref["certified_accuracy"]:
            eps = [0.0, *(parse_eps(k) for k in ref["certified_accuracy"])]
            acc = [ref["clean_accuracy"], *ref["certified_accuracy"].values()]
            ax1.plot(eps, [100 * a for a in acc], "--", color=c, lw=1, alpha=0.7)
        hours, bound = _cpu_hours(m["training"])
        if hours is not None and "36/255" in cert:
            y = 100 * cert["36/255"]
            ax2.plot([hours], [y], "o", ms=8, mec=c, mfc="none" if bound else c, mew=1.5)
            points.append((hours, y, m["model"] + (" (upper bound)" if bound else "")))
        if ref and "36/255" in ref["certified_accuracy"]:
            ax2.axhline(100 * ref["certified_accuracy"]["36/255"], color=c, ls="--", lw=1, alpha=0.7)
    ax2.margins(y=0.1)
    low, high = ax2.get_ylim()
    ys = [y for _, y, _ in points]
    for x, y, text in points:  # the lower of two points closer than a label's height is labelled below it
        below = any(0 < other - y < 0.04 * (high - low) for other in ys)
        ax2.annotate(text, (x, y), textcoords="offset points", xytext=(7, -11 if below else 4), fontsize=8)
    ticks = [0.0, *(parse_eps(e) for e in EPS_LABELS)]
    ax1.set_xticks(ticks, ["0", *EPS_LABELS])
    ax1.set_xlabel("l2 radius eps ([0, 1] pixel space; at 0: clean accuracy)")
    ax1.set_ylabel("certified accuracy (%)")
    ax1.set_title("CIFAR-10 test set, published models", fontsize=10)
    ax1.set_ylim(0, 100)
    style = [Line2D([], [], color="0.4", ls="--", lw=1, label="1LLC ConvNet-XS, same family (24 h A100)")]
    ax1.legend(handles=[*ax1.get_legend_handles_labels()[0], *style], fontsize=8)
    ax2.set_xlim(0, 1.25 * max([x for x, _, _ in points], default=1.0))
    ax2.set_xlabel(f"training CPU-hours (process CPU time, {CPU_CORES}-core CPU)")
    ax2.set_ylabel("certified accuracy at 36/255 (%)")
    ax2.set_title("certified accuracy against training cost", fontsize=10)
    ax2.legend(handles=[
        Line2D([], [], color="0.4", ls="--", lw=1,
               label="1LLC XS of the same family (colour), 24 h A100: GPU time, a level, not on this axis"),
        Line2D([], [], color="0.4", marker="o", ls="", mfc="none",
               label=f"log without CPU time: wall-clock x {CPU_CORES} cores (upper bound)")], fontsize=8,
        loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _replace_block(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the markers ``begin`` and ``end`` replaced by ``body``; unchanged, with a
    note on stderr, when the markers are not there."""
    pattern = re.escape(begin) + ".*?" + re.escape(end)
    if not re.search(pattern, text, flags=re.S):
        print(f"README has no {begin} ... {end} block: left as it is", file=sys.stderr)
        return text
    return re.sub(pattern, lambda _: f"{begin}\n{body}\n{end}", text, flags=re.S)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="verify on the 1000-image stratified subset only")
    p.add_argument("--out", default=str(REPO / "results" / "zoo"))
    p.add_argument("--update-readme", action="store_true")
    p.add_argument("--audit", type=int, default=500, metavar="N",
                   help="also attack N certified test points of each model with PGD inside their radius (0: skip)")
    p.add_argument("--render", action="store_true",
                   help="rebuild the tables from the last measurements in <out>.json instead of verifying again")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="verify only these published models (arch.tag, or an architecture as create_model resolves "
                        "it); keep the other rows of <out>.json, each recorded with the command that measured it")
    a = p.parse_args()
    from lipzoo.hub.server import LocalHub
    from lipzoo import _manifest

    published = _manifest.read()
    if not published:
        print("no published weights in lipzoo/hub/published.json: nothing to reproduce")
        return 1
    out = Path(a.out)
    measured = out.with_suffix(".json")
    only = [resolve_published(n, published) for n in a.only] if a.only else None
    unknown = [n for n, full in zip(a.only or [], only or []) if full is None]
    if unknown:
        print(f"not published: {', '.join(unknown)}; published: {', '.join(sorted(published))}")
        return 1
    to_measure = [] if a.render else sorted(set(only)) if only else sorted(published)
    kept: list[dict] = []
    if len(to_measure) < len(published):
        if not measured.is_file():
            print(f"no measurements in {measured}: run without --render / --only first")
            return 1
        rows = json.loads(measured.read_text())
        # a row measured before sha256 was recorded is taken as is; one measured on other weights is refused
        kept = [r for r in rows if r["name"] in published and r["name"] not in to_measure
                and r.get("sha256", published[r["name"]].get("sha256")) == published[r["name"]].get("sha256")]
        stale = sorted(set(published) - set(to_measure) - {r["name"] for r in kept})
        if stale:
            print(f"{measured} has no measurement of the published weights of {', '.join(stale)}: "
                  "run without --render / --only, or add them to --only")
            return 1
        if a.render:
            # the commands that measured these rows, not the one that renders them
            return _write(kept, published, a.update_readme, out, _provenance(kept, _command(a)))
    mode = "quick" if a.quick else "full"
    rows = []
    with LocalHub(root=REPO / "hub") as hub, tempfile.TemporaryDirectory() as hf_home:
        print(f"local hub at {hub.endpoint}; verifying {len(to_measure)} model(s) ({mode})", flush=True)
        for name in to_measure:
            row = _verify_one(name, published[name].get("claims") or {}, hub.endpoint, mode, hf_home, a.audit)
            row["sha256"] = published[name].get("sha256")
            row["command"] = _command(a, only)
            rows.append(row)
            print(f"  {name}: {'pass' if row.get('passed') else 'FAIL'}" + (f"  {row.get('error', '')[-300:]}" if 'error' in row else ""), flush=True)
    rows = sorted(kept + rows, key=lambda r: r["name"])
    measured.parent.mkdir(parents=True, exist_ok=True)
    measured.write_text(json.dumps(rows, indent=2, default=str))
    return _write(rows, published, a.update_readme, out, _provenance(rows, _command(a, only)))


def resolve_published(name: str, published: dict) -> str | None:
    """The published ``arch.tag`` that ``name`` names, as ``lipzoo.create_model(name, pretrained=True)`` resolves it:
    ``arch.tag`` itself, or for an architecture (hyphens accepted) its CIFAR-10 weights, else its first tag;
    ``None`` when nothing is published under that name."""
    key = name.strip().lower().replace("-", "_")
    arch, _, tag = key.partition(".")
    if tag:
        return key if key in published else None
    tags = sorted(k for k in published if k.split(".")[0] == arch)
    preferred = [k for k in tags if k.endswith(".cifar10")]
    return (preferred or tags or [None])[0]


def _command(a: argparse.Namespace, only: list[str] | None = None) -> str:
    """The command line that measures rows, as run: with ``--only`` and the published names it resolved to."""
    cmd = f"python scripts/reproduce.py{' --quick' if a.quick else ''}{f' --audit {a.audit}' if a.audit != 500 else ''}"
    return cmd + (" --only " + " ".join(sorted(set(only))) if only else "")


def _provenance(rows: list[dict], default: str) -> tuple[str, str]:
    """``(command, sentence)``: the one command that measured every row (``default`` when no row records one), or
    the full run and a sentence naming each command with the rows it measured (a table merged from ``--only`` runs)."""
    by_command: dict[str | None, list[str]] = {}
    for r in rows:
        by_command.setdefault(r.get("command"), []).append(r["name"])
    if len(by_command) <= 1:
        return f"`{next(iter(by_command), None) or default}`", ""
    parts = "; ".join(f"{f'`{cmd}`' if cmd else 'an earlier run that did not record its command'}: "
                      f"{', '.join(f'`{n}`' for n in sorted(names))}"
                      for cmd, names in sorted(by_command.items(), key=lambda kv: kv[0] or ""))
    return "`python scripts/reproduce.py`", f" Rows measured by {parts}."


def _write(rows: list[dict], published: dict, update_readme: bool, out: Path, provenance: tuple[str, str]) -> int:
    md = markdown(rows, published)
    cmd, measured_by = provenance
    md_full = md + (f"\n\nReproduce: {cmd} (downloads every model through the local hub and re-certifies it; "
                    f"`--render` rebuilds this table from the last measurements in `results/zoo.json`).{measured_by} "
                    "Target: the project's target for the model and, where it is missed, the measured gap. 1LLC ConvNet-XS: "
                    "the reference for a compact model, the 1LLC benchmark's ConvNet-XS with the same family's layer "
                    "trained 24 h on an A100 (Prach et al. 2024, Table 2; row `1llc.<family>_convnet_xs.cifar10` of `lipzoo/reported.json`), not lipzoo's architecture. Training: epochs "
                    "and wall-clock hours of the committed run log (`results/runs/<model>/log.jsonl`) on this project's "
                    "2-core CPU, which was often shared with other work, and, where the log records it, the training "
                    "process's CPU time over both cores (`h CPU / 2`), the measure of the 3-hour budget.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md_full + "\n")
    print(md_full)
    family_md = _write_families(rows, published, out.parent)
    if update_readme:
        text = README.read_text()
        text = _replace_block(text, BEGIN, END, md_full)
        text = _replace_block(text, FAMILY_BEGIN, FAMILY_END, _readme_family_block(family_md, out.parent))
        README.write_text(text)
    return 0 if all(r.get("passed") for r in rows) else 2


def _write_families(rows: list[dict], published: dict, folder: Path) -> str:
    """Write ``families.json``, ``families.png`` and ``families.md`` into ``folder``; returns the table and note."""
    frows, models = family_rows(rows, published), model_records(rows, published)
    folder.joinpath("families.json").write_text(json.dumps({"families": frows, "models": models}, indent=2) + "\n")
    family_figure(models, folder / "families.png")
    md = family_markdown(frows)
    folder.joinpath("families.md").write_text(
        f"{md}\n\n![{_FIGURE_ALT}](families.png)\n\n"
        f"Regenerate: {_REGENERATE}.\n")
    print(f"\n{md}\n\nwrote {folder / 'families.md'}, families.json, families.png")
    return md


_FIGURE_ALT = "certified accuracy against eps and against training CPU-hours"
_REGENERATE = ("`python scripts/reproduce.py --render --update-readme` (from `results/zoo.json`; new weights: "
               "`python scripts/reproduce.py --only <model> --update-readme` first)")


def _readme_family_block(md: str, folder: Path) -> str:
    """The README's family block: the table, the figure (linked relative to the README) and the regenerating
    command."""
    try:
        figure = (folder / "families.png").resolve().relative_to(README.resolve().parent).as_posix()
    except ValueError:
        figure = (folder / "families.png").as_posix()
    return f"{md}\n\n![{_FIGURE_ALT}]({figure})\n\nRegenerate: {_REGENERATE}."


if __name__ == "__main__":
    sys.exit(main())
