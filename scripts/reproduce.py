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


def _training_cell(name: str, runs: Path = REPO / "results" / "runs") -> str:
    """``<epochs> ep, <hours> h``: epochs and summed wall-clock time of the run's committed log (2-core CPU), and
    ``, <cpu> h CPU / 2`` (the process's CPU time over both cores) when every epoch recorded it."""
    log = runs / name / "log.jsonl"
    if not log.is_file():
        return "—"
    epochs = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    if not epochs:
        return "—"
    hours = sum(float(e.get("seconds", 0.0)) for e in epochs) / 3600
    cell = f"{max(int(e['epoch']) for e in epochs)} ep, {hours:.1f} h"
    if all("cpu_seconds" in e for e in epochs):
        cell += f", {sum(float(e['cpu_seconds']) for e in epochs) / 3600 / 2:.1f} h CPU / 2"
    return cell


def _reference_cell(name: str) -> str:
    """The 1LLC benchmark's ConvNet-XS with the model's family (CIFAR-10, 24 h on an A100; ``lipzoo.reported``):
    ``clean / certified at 36/255``, the compact-model reference (weights issue, round 2)."""
    from lipzoo.reported import ReportedRowError, get_row

    arch, _, dataset = name.partition(".")
    try:
        row = get_row(f"1llc.{arch.rsplit('_', 1)[0]}_convnet_xs.{dataset}")
    except ReportedRowError:
        return "—"
    if row.get("clean") is None:
        return "—"
    cert = (row.get("certified") or {}).get("36/255")
    return f"{row['clean']:.2f} / {'—' if cert is None else f'{cert:.2f}'}"


def markdown(rows: list[dict], published: dict, runs: Path = REPO / "results" / "runs") -> str:
    eps_labels = ["36/255", "72/255", "108/255", "255/255"]
    head = "| model | clean (claimed / measured) | " + " | ".join(f"cert {e} (claimed / measured)" for e in eps_labels) \
        + " | L bound | PGD violations | verified | target clean / cert 36/255 | 1LLC ConvNet-XS clean / cert 36/255 " \
        "| training |"
    lines = [head, "|" + "---|" * (len(eps_labels) + 8)]
    for r in rows:
        claims = published[r["name"]].get("claims") or {}
        measured = {}
        for check in (r.get("report") or {}).get("checks", []):
            measured[check.get("name")] = check.get("measured")
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
    if update_readme:
        readme = REPO / "README.md"
        text = readme.read_text()
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{md_full}\n{END}", text, flags=re.S)
        readme.write_text(text)
    return 0 if all(r.get("passed") for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())
