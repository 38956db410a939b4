#!/usr/bin/env python
"""Plot a training run's curve (train accuracy, batch certified accuracy at 36/255, loss, lr per epoch; validation
accuracies of the trained and the EMA weights when the run held out a validation split) from its ``log.jsonl``, with
the final test-set claims of ``results.json`` when present.

    python scripts/plot_training.py results/runs/sll_xs.cifar10 [--out results/runs/sll_xs.cifar10/training_curve.png]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a run directory holding log.jsonl (and results.json)")
    p.add_argument("--out", type=Path, help="default: <run>/training_curve.png")
    a = p.parse_args()
    log = a.run / "log.jsonl"
    if not log.exists():
        print(f"no log.jsonl in {a.run}", file=sys.stderr)
        return 1
    rows = [r for r in map(json.loads, log.read_text().splitlines()) if not r.get("partial")]
    if not rows:
        print(f"{log} has no completed epoch", file=sys.stderr)
        return 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]  # completed epochs
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.plot(epochs, [100 * r["train_acc"] for r in rows], label="train accuracy (augmented batches)")
    ax.plot(epochs, [100 * r["train_cert36"] for r in rows], label="train certified @36/255 (batches)")
    for key, label, style in (("val_clean", "validation clean (trained weights)", ("C0", ":")),
                              ("val_cert36", "validation certified @36/255 (trained weights)", ("C1", ":")),
                              ("val_ema_clean", "validation clean (EMA weights)", ("C4", "-")),
                              ("val_ema_cert36", "validation certified @36/255 (EMA weights)", ("C5", "-"))):
        pts = [(r["epoch"], 100 * r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), c=style[0], ls=style[1], label=label)
    results = a.run / "results.json"
    if results.exists():
        claims = json.loads(results.read_text()).get("claims", {})
        if "clean_accuracy" in claims:
            ax.axhline(100 * claims["clean_accuracy"], ls="--", c="C0", label="test clean (final, certifier)")
            ax.axhline(100 * claims["certified_accuracy"]["36/255"], ls="--", c="C1",
                       label="test certified @36/255 (final, certifier)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(a.run.name)
    ax_loss.plot(epochs, [r["loss"] for r in rows], c="C2", label="loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(epochs, [r["lr"] for r in rows], c="C3", ls=":", label="lr")
    ax_lr.set_ylabel("lr")
    ax_loss.grid(alpha=0.3)
    fig.tight_layout()
    out = a.out or a.run / "training_curve.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
