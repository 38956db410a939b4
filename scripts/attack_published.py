#!/usr/bin/env python
"""AutoAttack (l2, standard) on a published model beside its certificate, RobustBench style.

    python scripts/attack_published.py sll_xs.cifar10 [--n 1000] [--eps 36/255,0.5] [--out results/autoattack]
    python scripts/attack_published.py all            # every model of lipzoo/hub/published.json, one at a time

Loads the weights from the project's ``hub/`` folder (the repo ``published.json`` names, sha256-checked against
it), runs :func:`lipzoo.attack.attack_dataset` on the first ``--n`` test images (robust accuracy per eps, and the
shared certifier on the same images: certified <= robust <= clean) and writes ``<out>/<arch.tag>.json`` with the
command line, the wall-clock and CPU seconds and the number of threads. Exit status 1 when the check fails (a
certified sample broken by the attack). Needs ``pip install 'lipzoo[attack]'``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def load_published(model_id: str):
    """``(model, entry)``: the published weights of ``model_id`` from ``hub/``, checked against their sha256."""
    import lipzoo
    from lipzoo import _manifest
    from lipzoo.hub.snapshot import hub_dir, sha256_file

    entry = _manifest.read().get(model_id)
    if entry is None:
        raise SystemExit(f"{model_id} is not in published.json; published: {', '.join(sorted(_manifest.read()))}")
    weights = hub_dir() / entry["hf_hub_id"] / "model.safetensors"
    if sha256_file(weights) != entry["sha256"]:
        raise SystemExit(f"{weights} does not have the published sha256 {entry['sha256']}")
    model = lipzoo.create_model(model_id.split(".", 1)[0], num_classes=entry["num_classes"], checkpoint_path=weights)
    return model.eval(), entry


def attack_one(model_id: str, n: int, eps: list[float], out: Path, batch_size: int, progress: bool) -> bool:
    import torch

    from lipzoo.attack import attack_dataset

    model, entry = load_published(model_id)
    wall, cpu = time.perf_counter(), time.process_time()
    record = attack_dataset(model, entry["dataset"], n, eps, batch_size=batch_size, progress=progress)
    record = {"model": model_id, "hf_hub_id": entry["hf_hub_id"], "revision": entry.get("revision"),
              "sha256": entry["sha256"], **record, "wall_seconds": round(time.perf_counter() - wall, 1),
              "cpu_seconds": round(time.process_time() - cpu, 1), "threads": torch.get_num_threads(),
              "command": "python scripts/attack_published.py " + shlex.join(sys.argv[1:])}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{model_id}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    rows = "  ".join(f"{k}: robust {100 * v:.1f}% certified {100 * record['certified_accuracy'][k]:.1f}%"
                     for k, v in record["robust_accuracy"].items())
    print(f"{model_id}: clean {100 * record['clean_accuracy']:.1f}%  {rows}  ({record['wall_seconds']:.0f} s) -> "
          f"{os.path.relpath(path)}" + ("" if record["passed"] else "  BROKEN CERTIFICATE"), flush=True)
    return record["passed"]


def main(argv: list[str] | None = None) -> int:
    from lipzoo import _manifest
    from lipzoo.attack import ATTACK_N, DEFAULT_ATTACK_EPS
    from lipzoo.certification import eps_label, parse_eps

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="arch.tag of published models, or 'all'")
    p.add_argument("--n", type=int, default=ATTACK_N, help="the first N test images (default %(default)s)")
    p.add_argument("--eps", default=",".join(eps_label(e) for e in DEFAULT_ATTACK_EPS),
                   help="comma-separated l2 radii, e.g. 36/255,0.5 (default %(default)s)")
    p.add_argument("--out", type=Path, default=REPO / "results" / "autoattack")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    models = sorted(_manifest.read()) if args.models == ["all"] else args.models
    eps = [parse_eps(e) for e in args.eps.split(",")]
    ok = [attack_one(m, args.n, eps, args.out, args.batch_size, not args.no_progress) for m in models]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
