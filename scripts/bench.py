#!/usr/bin/env python
"""CPU benchmarks (print tables; numbers in the README come from here).

    python scripts/bench.py layers    # per layer: eval and train-step time vs a plain nn.Conv2d of the same shape
    python scripts/bench.py models    # compact *_xs models: params, train images/s (bf16 + channels_last), epoch time
    python scripts/bench.py train     # *_xs train step: fp32 NCHW vs channels_last + bf16 (speed-up)
    python scripts/bench.py certify   # seconds to certify the 10,000 CIFAR-10 test images with each *_xs model
    python scripts/bench.py all [--json OUT]

Timings are the median of a few repetitions after warm-up; on a shared machine they vary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import lipzoo  # noqa: E402


def _median_time(fn: Callable[[], None], reps: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


# ------------------------------------------------------------------------------------------ layers
def _layer_cases() -> list[tuple[str, Callable[[], nn.Module], tuple[int, int, int], int]]:
    """(name, constructor, input (C, H, W), output channels) of CIFAR-sized layers of every family."""
    from lipzoo import layers as L

    cases: list = [("SLLConv2d(64, inner 64)", lambda: L.SLLConv2d(64, 64), (64, 32, 32), 64),
                   ("SLLConv2d(64, inner 5)", lambda: L.SLLConv2d(64, 5), (64, 32, 32), 64)]
    try:
        from lipzoo.layers import soc

        cls = soc.SOCConv2d
        cases.append(("SOC 3x3 (64 -> 64)", lambda: cls(64, 64, 3), (64, 32, 32), 64))
    except Exception as e:  # a family not installed yet must not break the others
        print(f"(SOC skipped: {e})")
    try:
        from lipzoo.layers import lot

        cls = lot.LOTConv2d
        cases.append(("LOT 3x3 (64 -> 64)", lambda: cls(64, 64, 3), (64, 32, 32), 64))
    except Exception as e:
        print(f"(LOT skipped: {e})")
    try:
        from lipzoo.layers import sandwich

        cls = getattr(sandwich, "SandwichConv")
        cases.append(("SandwichConv 3x3 (64 -> 64)", lambda: cls(64, 64, 3), (64, 32, 32), 64))
    except Exception as e:
        print(f"(Sandwich skipped: {e})")
    return cases


def bench_layers(batch: int = 64) -> list[dict]:
    rows = []
    for name, make, (c, h, w), cout in _layer_cases():
        layer = make()
        plain = nn.Conv2d(c, cout, 3, padding=1)
        x = torch.randn(batch, c, h, w)
        row = {"layer": name, "input": [batch, c, h, w]}
        for label, m in (("lipzoo", layer), ("conv2d", plain)):
            m.eval()
            with torch.no_grad():
                t_eval = _median_time(lambda: m(x))
            m.train()
            xg = x.clone().requires_grad_()

            def step():
                m.zero_grad(set_to_none=True)
                m(xg).square().mean().backward()

            row[f"{label}_eval_ms"] = 1000 * t_eval
            row[f"{label}_train_ms"] = 1000 * _median_time(step, reps=3)
        rows.append(row)
        print(f"{name:32s} eval {row['lipzoo_eval_ms']:8.1f} ms (conv2d {row['conv2d_eval_ms']:6.1f})   "
              f"train step {row['lipzoo_train_ms']:8.1f} ms (conv2d {row['conv2d_train_ms']:6.1f})", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ models / train
def _train_step_ips(model: nn.Module, fast: bool, batch: int = 256, reps: int = 3) -> float:
    model = model.train()
    if fast:
        model = model.to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 32, 32)
    if fast:
        x = x.to(memory_format=torch.channels_last).bfloat16()
    y = torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return batch / _median_time(step, reps=reps)


def compact_models() -> list[str]:
    return lipzoo.list_models("*_xs")


def bench_models() -> list[dict]:
    rows = []
    for name in compact_models():
        torch.manual_seed(0)
        model = lipzoo.create_model(name)
        ips = _train_step_ips(model, fast=True)
        row = {"model": name, "params": sum(p.numel() for p in model.parameters()), "train_images_per_s": ips,
               "epoch_seconds": 50000 / ips}
        rows.append(row)
        _record_measurement(name, row)
        print(f"{name:14s} {row['params'] / 1e6:6.2f} M params  {ips:7.1f} img/s  epoch {row['epoch_seconds'] / 60:5.1f} min"
              f"  (batch 256, bf16 autocast, channels_last)", flush=True)
    return rows


MEASURED_JSON = REPO / "lipzoo" / "measured.json"


def _record_measurement(name: str, row: dict) -> None:
    """Keep the measured epoch time for ``lipzoo.model_info`` (package data written only by this script)."""
    data = json.loads(MEASURED_JSON.read_text()) if MEASURED_JSON.exists() else {}
    data[name] = {"train_images_per_s": round(row["train_images_per_s"], 1),
                  "epoch_minutes": round(row["epoch_seconds"] / 60, 2),
                  "how": f"python scripts/bench.py models (batch 256, bf16 autocast, channels_last, "
                         f"{torch.get_num_threads()} threads, torch {torch.__version__})"}
    MEASURED_JSON.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def bench_train(batch: int = 256, small_batch: int = 32) -> list[dict]:
    """fp32 NCHW vs channels_last + bf16, and the batch-independent share of the fp32 step.

    A step costs ``T(b) = P + b * c``: ``P`` is what does not scale with the batch (the weight
    parametrisation, its backward, the optimizer), ``c`` the per-image cost that bf16 and channels_last can
    speed up. Two batch sizes give ``P``; ``T(batch) / P`` (one over the share) bounds any speed-up of the
    per-image work alone. Two short timings make the share noisy (tens of percent between runs).
    """
    rows = []
    for name in compact_models():
        torch.manual_seed(0)
        slow = _train_step_ips(lipzoo.create_model(name), fast=False, batch=batch, reps=2)
        slow_small = _train_step_ips(lipzoo.create_model(name), fast=False, batch=small_batch, reps=3)
        fast = _train_step_ips(lipzoo.create_model(name), fast=True, batch=batch, reps=2)
        t, t_small = batch / slow, small_batch / slow_small
        share = max(t - (t - t_small) / (batch - small_batch) * batch, 0.0) / t
        rows.append({"model": name, "fp32_nchw_images_per_s": slow, "bf16_channels_last_images_per_s": fast,
                     "speedup": fast / slow, "batch_independent_share": share})
        bound = f"x{1 / share:.1f}" if share > 0 else "none"
        print(f"{name:14s} fp32 NCHW {slow:7.1f} img/s   channels_last+bf16 {fast:7.1f} img/s   x{fast / slow:.1f}   "
              f"batch-independent {100 * share:4.0f}% of the fp32 step (bound {bound})", flush=True)
    return rows


def bench_certify() -> list[dict]:
    from lipzoo.certify import certify
    from lipzoo.data import CIFAR

    x, y = CIFAR("cifar10", "test").tensors()
    rows = []
    for name in compact_models():
        torch.manual_seed(0)
        model = lipzoo.create_model(name).eval()
        t = time.perf_counter()
        certify(model, x, y)
        dt = time.perf_counter() - t
        rows.append({"model": name, "n": len(y), "seconds": dt})
        print(f"{name:14s} certified {len(y)} test images in {dt:6.1f} s", flush=True)
    return rows


BENCHES = {"layers": bench_layers, "models": bench_models, "train": bench_train, "certify": bench_certify}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=[*BENCHES, "all"])
    p.add_argument("--json", help="also write the rows as JSON")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    names = list(BENCHES) if a.what == "all" else [a.what]
    out = {n: BENCHES[n]() for n in names}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
