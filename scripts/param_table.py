#!/usr/bin/env python
"""Parameter counts of every registered architecture vs the papers' counts -> markdown (README) and JSON.

The last column names the datasets on which a paper reports accuracies for the architecture
(``lipzoo/reported.json``; ``lipzoo info ARCH`` prints the rows) and links to the README's "Reproducing a paper's
numbers".

    python scripts/param_table.py [--json OUT.json] [--markdown OUT.md] [--update-readme]

Counting rule: every tensor in ``model.parameters()`` (trainable or frozen, e.g. SOC's full P of which only the
skew half acts, SLL's frozen conv ``q``), no buffers (power-iteration vectors, normalisation constants);
CIFAR-10 heads unless stated.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lipzoo  # noqa: E402
from lipzoo.reported import rows_for  # noqa: E402

BEGIN, END = "<!-- param-table:begin -->", "<!-- param-table:end -->"


_DATASET_ORDER = ["cifar10", "cifar100", "tinyimagenet"]
REPORTED_LINK = "#reproducing-a-papers-numbers"


def rows() -> list[dict]:
    out = []
    for name in lipzoo.list_models():
        info = lipzoo.model_info(name)
        ours = info["params"] / 1e6
        paper = info["paper_params_millions"]
        diff = None if paper is None else 100 * (ours - paper) / paper
        out.append({"name": name, "family": info["family"], "params_m": round(ours, 3), "paper_m": paper,
                    "diff_pct": None if diff is None else round(diff, 1), "note": info["paper_params_note"],
                    "head_rule": info["head_rule"],
                    "reported": sorted({r["dataset"] for r in rows_for(name)}, key=_DATASET_ORDER.index)})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| architecture | family | head rule | params (M) | paper (M) | diff | note | paper's accuracies |",
             "|---|---|---|---|---|---|---|---|"]
    for r in table:
        paper = "—" if r["paper_m"] is None else f"{r['paper_m']:g}"
        diff = "—" if r["diff_pct"] is None else f"{r['diff_pct']:+.1f}%"
        reported = f"[{', '.join(r['reported'])}]({REPORTED_LINK})" if r["reported"] else "—"
        lines.append(f"| `{r['name']}` | {r['family']} | {r['head_rule']} | {r['params_m']:.2f} | {paper} | {diff} | "
                     f"{r['note']} | {reported} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--update-readme", action="store_true")
    a = p.parse_args()
    table = rows()
    md = markdown(table)
    print(md)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(table, indent=2))
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")
    if a.update_readme:
        readme = REPO / "README.md"
        text = readme.read_text()
        block = f"{BEGIN}\n{md}\n{END}"
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        readme.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
