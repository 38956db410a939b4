#!/usr/bin/env python
"""lipzoo on a GPU, exactly as on the CPU: one command for a maintainer on any CUDA machine (<= 5 min on one GPU).

    python scripts/gpu_check.py                          # cuda: the full check, report in results/gpu_check_cuda.json
    python scripts/gpu_check.py --device cpu --quick     # the same code path on the CPU in about a minute (CI)

Checks, each recorded in the JSON report with its seconds and a pass/fail:

1. ``certify``: every published model (``hub/``, sha256-checked against the registry) certified on the CIFAR-10
   test set, once plainly and once with TF32 / reduced-precision float32 matmuls switched on globally by the
   caller (``torch.set_float32_matmul_precision('medium')``, ``allow_tf32``): both must give the same
   certificate, and (full mode: all 10,000 images) exactly the published claims.
2. ``audit``: ``lipzoo.audit`` of one published model (0 PGD violations, every layer within its bound).
3. ``train``: every ``*_cpu`` recipe, 20 optimizer steps and the final evaluation on 1,000 test images on the
   device, ending with a ``results.json``; and one run through ``torchrun --nproc_per_node=1``.
4. ``speed``: training images/s and peak memory of paper-scale models (bf16 autocast, channels_last, batch 256),
   and of the compact models' fp32 and fast paths (what each recipe should use on this device).

``--quick`` shrinks every size (200 test images, 2 steps on 512 images, one paper model at batch 4) so that the
same code runs on a CPU; the claims are compared only in full mode (they are full-test-set numbers).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "scripts")]

import lipzoo  # noqa: E402
from lipzoo.data import load_cifar  # noqa: E402
from lipzoo.train import RECIPES  # noqa: E402
from lipzoo.train.loop import train  # noqa: E402

PAPER_MODELS = ("sll_s", "sll_xl", "soc_lipconvnet20", "lot_lipconvnet10", "sandwich_l", "sandwich_dnn")
QUICK_PAPER_MODELS = ("sll_s",)


def _sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"test_images": 200, "audit_images": 8, "train_steps": 2, "train_batch": 256, "eval_images": 100,
                "speed_batch": 4, "speed_reps": 1}
    return {"test_images": 10_000, "audit_images": 64, "train_steps": 20, "train_batch": 256, "eval_images": 1000,
            "speed_batch": 256, "speed_reps": 5}


# ------------------------------------------------------------------------------------------ published models
def published_models() -> dict[str, dict[str, Any]]:
    """``arch.tag -> registry entry`` of every published model (``lipzoo/hub/published.json``)."""
    return json.loads((REPO / "lipzoo" / "hub" / "published.json").read_text())


def load_published(model_id: str, entry: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The published weights from ``hub/`` (sha256-checked against the registry), on ``device``."""
    folder = REPO / "hub" / entry["hf_hub_id"]
    weights = folder / "model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise RuntimeError(f"{weights} has sha256 {digest}, the registry pins {entry['sha256']}")
    config = json.loads((folder / "config.json").read_text())
    model = lipzoo.create_model(config["architecture"], checkpoint_path=weights, **config.get("model_args", {}))
    return model.to(device).eval()


def _certified_counts(result: Any, claims: dict[str, Any]) -> dict[str, int]:
    out = {"clean": int(result.correct.sum())}
    for label, eps in claims["eps"].items():
        out[label] = int((result.correct & (result.radii > eps)).sum())
    return out


def _claimed_counts(claims: dict[str, Any], n: int) -> dict[str, int]:
    out = {"clean": round(claims["clean_accuracy"] * n)}
    out.update({label: round(acc * n) for label, acc in claims["certified_accuracy"].items()})
    return out


class _UserReducedPrecision:
    """What a training script does: TF32 matmuls and convolutions, bf16 oneDNN matmuls, set globally."""

    def __enter__(self) -> None:
        self.saved = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("medium")

    def __exit__(self, *exc: Any) -> None:
        torch.set_float32_matmul_precision(self.saved)


def check_certify(device: torch.device, sizes: dict[str, int], quick: bool) -> dict[str, Any]:
    images, labels = load_cifar("cifar10", "test")
    images, labels = images[: sizes["test_images"]], labels[: sizes["test_images"]]
    rows = {}
    for model_id, entry in sorted(published_models().items()):
        model = load_published(model_id, entry, device)
        t = time.perf_counter()
        plain = lipzoo.certify(model, images, labels, eps=list(entry["claims"]["eps"].values()))
        seconds = time.perf_counter() - t
        with _UserReducedPrecision():
            flagged = lipzoo.certify(model, images, labels, eps=list(entry["claims"]["eps"].values()))
            flags_kept = torch.get_float32_matmul_precision() == "medium"
        measured = _certified_counts(plain, entry["claims"])
        row = {"n": plain.n, "measured": measured, "seconds": seconds, "lipschitz_bound": plain.lipschitz_bound,
               "same_with_user_tf32": bool(torch.equal(plain.radii, flagged.radii)
                                           and torch.equal(plain.correct, flagged.correct)) and flags_kept}
        ok = row["same_with_user_tf32"]
        if not quick:
            row["claimed"] = _claimed_counts(entry["claims"], plain.n)
            row["claims_reproduced"] = row["claimed"] == measured
            ok = ok and row["claims_reproduced"]
        row["ok"] = ok
        rows[model_id] = row
        print(f"  {model_id:22s} {plain.n} images in {seconds:6.2f} s  clean {measured['clean']}  "
              f"{'ok' if ok else 'FAILED'}", flush=True)
    return {"models": rows, "ok": all(r["ok"] for r in rows.values())}


def check_audit(device: torch.device, sizes: dict[str, int]) -> dict[str, Any]:
    model_id, entry = sorted(published_models().items())[0]
    model = load_published(model_id, entry, device)
    images, labels = load_cifar("cifar10", "test")
    n = sizes["audit_images"]
    x = torch.from_numpy(images[:n]).permute(0, 3, 1, 2).float().div(255)
    report = lipzoo.audit(model, x, torch.from_numpy(labels[:n]), n_attack=n)
    return {"model": model_id, "ok": bool(report.ok), "summary": str(report.summary())
            if callable(getattr(report, "summary", None)) else str(report)}


# ---------------------------------------------------------------------------------------------- training
def _short_recipe(name: str, sizes: dict[str, int]):
    return RECIPES[name].replace(epochs=1, batch_size=sizes["train_batch"], val_split=0, checkpoint_minutes=1e9)


def check_train(device: torch.device, sizes: dict[str, int], workdir: Path) -> dict[str, Any]:
    rows = {}
    subset = sizes["train_steps"] * sizes["train_batch"]  # one epoch of exactly train_steps steps
    for name in sorted(n for n in RECIPES if n.endswith("_cpu")):
        out = workdir / name
        t = time.perf_counter()
        try:
            train(_short_recipe(name, sizes), out, device=str(device), progress=False, train_subset=subset,
                  eval_subset=sizes["eval_images"])
            error = None
        except Exception as e:  # noqa: BLE001 - the report records any failure of a recipe
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        ok = error is None and (out / "results.json").exists()
        rows[name] = {"ok": ok, "seconds": time.perf_counter() - t, "error": error}
        print(f"  {name:14s} {'ok' if ok else 'FAILED: ' + str(error)}", flush=True)
    rows["torchrun"] = _check_torchrun(device, sizes, workdir / "torchrun", subset)
    return {"recipes": rows, "ok": all(r["ok"] for r in rows.values())}


def _check_torchrun(device: torch.device, sizes: dict[str, int], out: Path, subset: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--master_port=29533",
           "-m", "lipzoo", "train", "--recipe", "sll_cpu", "--out", str(out), "--device", str(device),
           "--epochs", "1", "--batch-size", str(sizes["train_batch"]), "--train-subset", str(subset),
           "--eval-subset", str(sizes["eval_images"]), "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    ok = proc.returncode == 0 and (out / "results.json").exists()
    print(f"  torchrun       {'ok' if ok else 'FAILED (exit %d)' % proc.returncode}", flush=True)
    if not ok:
        print(proc.stderr[-4000:], file=sys.stderr)
    return {"ok": ok, "seconds": time.perf_counter() - t, "returncode": proc.returncode,
            "command": " ".join(["torchrun"] + cmd[3:])}


# ------------------------------------------------------------------------------------------------- speed
def _measure_step(arch: str, device: torch.device, channels_last: bool, bf16: bool, batch: int, reps: int,
                  **model_args: Any) -> dict[str, Any]:
    from bench import _train_step_ips

    torch.manual_seed(0)
    model = lipzoo.create_model(arch, **model_args)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    ips = _train_step_ips(model, channels_last, bf16, batch=batch, reps=reps, device=device)
    row = {"images_per_s": ips, "epoch_seconds": 50_000 / ips}
    if device.type == "cuda":
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def check_speed(device: torch.device, sizes: dict[str, int], quick: bool) -> dict[str, Any]:
    batch, reps = sizes["speed_batch"], sizes["speed_reps"]
    paper = {}
    for arch in QUICK_PAPER_MODELS if quick else PAPER_MODELS:
        paper[arch] = _measure_step(arch, device, True, True, batch, reps)
        print(f"  {arch:18s} {paper[arch]['images_per_s']:8.1f} img/s (bf16, channels_last, batch {batch})", flush=True)
    compact = {}
    variants = {"fp32": (False, False, {}), "fast": (True, True, {})}
    for arch in lipzoo.list_models("*_xs"):
        compact[arch] = {k: _measure_step(arch, device, cl, bf, batch, reps, **args)
                         for k, (cl, bf, args) in variants.items()}
        if arch.startswith("soc"):
            compact[arch]["fast_autocast_convs"] = _measure_step(arch, device, True, True, batch, reps,
                                                                 soc_args={"autocast_convs": True})
        best = max(compact[arch], key=lambda k: compact[arch][k]["images_per_s"])
        compact[arch]["fastest"] = best
        print(f"  {arch:18s} " + "  ".join(f"{k} {v['images_per_s']:.1f}" for k, v in compact[arch].items()
                                          if isinstance(v, dict)) + f" img/s -> {best}", flush=True)
    return {"paper_models": paper, "compact_models": compact, "batch": batch, "ok": True}


# -------------------------------------------------------------------------------------------------- main
def _environment(device: torch.device) -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "threads": torch.get_num_threads(), "lipzoo": lipzoo.__version__}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def run(device: torch.device, quick: bool, only: list[str] | None = None) -> dict[str, Any]:
    sizes = _sizes(quick)
    workdir = Path(tempfile.mkdtemp(prefix="lipzoo-gpu-check-"))
    checks: dict[str, Callable[[], dict[str, Any]]] = {
        "certify": lambda: check_certify(device, sizes, quick),
        "audit": lambda: check_audit(device, sizes),
        "train": lambda: check_train(device, sizes, workdir),
        "speed": lambda: check_speed(device, sizes, quick),
    }
    report: dict[str, Any] = {"command": "python scripts/gpu_check.py " + " ".join(sys.argv[1:]),
                              "quick": quick, "sizes": sizes, "environment": _environment(device)}
    try:
        for name, fn in checks.items():
            if only and name not in only:
                continue
            print(f"[{name}]", flush=True)
            t = time.perf_counter()
            try:
                report[name] = fn()
            except Exception as e:  # noqa: BLE001 - one failing check must not hide the others' results
                traceback.print_exc()
                report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            report[name]["seconds"] = time.perf_counter() - t
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["ok"] = all(report[k]["ok"] for k in checks if k in report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu ...")
    p.add_argument("--quick", action="store_true", help="small sizes: the same code path in about a minute")
    p.add_argument("--only", nargs="+", choices=["certify", "audit", "train", "speed"], help="run only these checks")
    p.add_argument("--out", default=None, help="JSON report (default: results/gpu_check_<device type>[_quick].json)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available here; run it on a GPU machine, or pass --device cpu --quick",
              file=sys.stderr)
        return 2
    report = run(device, args.quick, args.only)
    out = Path(args.out) if args.out else REPO / "results" / f"gpu_check_{device.type}{'_quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'PASSED' if report['ok'] else 'FAILED'}: report in {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
