#!/usr/bin/env python
"""CPU benchmarks (print tables; numbers in the README come from here).

    python scripts/bench.py layers    # per layer: eval and train-step time vs a plain nn.Conv2d of the same shape
    python scripts/bench.py models    # compact *_xs models: params, train images/s (bf16 + channels_last), epoch time
                                      # (copied into the families' variant tables, Variant.measured_training)
    python scripts/bench.py train     # *_xs train step: fp32 NCHW vs channels_last (+ bf16), and what bf16 can give
    python scripts/bench.py certify   # seconds to certify the 10,000 CIFAR-10 test images with each *_xs model
    python scripts/bench.py all [--json OUT]

Timings are the median of a few repetitions after warm-up; on a shared machine they vary.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

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
    """(name, constructor, input (C, H, W), output channels) of the CIFAR-sized layers every family declares
    (``Family.bench_layers``: 64 channels in and out, 32x32)."""
    from lipzoo.models import FAMILIES

    return [(name, make, (64, 32, 32), 64) for family in FAMILIES.values() for name, make in family.bench_layers.items()]


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
def _train_step(model: nn.Module, channels_last: bool, bf16: bool, batch: int = 256,
                device: str | torch.device = "cpu") -> Callable[[], None]:
    """One SGD step of ``model`` on a random batch on ``device``, in the given memory format and autocast precision
    (on a CPU the inputs are bf16 too, as in the training loop). The step waits for the device to finish."""
    device = torch.device(device)
    model = model.to(device).train()
    x = torch.rand(batch, 3, 32, 32, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    if bf16 and device.type == "cpu":
        x = x.bfloat16()
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def _train_step_ips(model: nn.Module, channels_last: bool, bf16: bool, batch: int = 256, reps: int = 3,
                    device: str | torch.device = "cpu") -> float:
    """Training images/s of :func:`_train_step` (the fast path is ``channels_last=True, bf16=True``)."""
    return batch / _median_time(_train_step(model, channels_last, bf16, batch, device), reps=reps)


def compact_models() -> list[str]:
    """The compact (CPU) variants the families declare."""
    from lipzoo.models import ARCHS

    return [name for name in lipzoo.list_models() if ARCHS[name].compact]


def bench_models() -> list[dict]:
    rows = []
    for name in compact_models():
        torch.manual_seed(0)
        model = lipzoo.create_model(name)
        ips = _train_step_ips(model, channels_last=True, bf16=True)
        row = {"model": name, "params": sum(p.numel() for p in model.parameters()), "train_images_per_s": ips,
               "epoch_seconds": 50000 / ips}
        rows.append(row)
        print(f"{name:14s} {row['params'] / 1e6:6.2f} M params  {ips:7.1f} img/s  epoch {row['epoch_seconds'] / 60:5.1f} min"
              f"  (batch 256, bf16 autocast, channels_last)", flush=True)
    return rows


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of an ``n x n`` matrix product: the practical compute peak of this CPU for ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / _median_time(lambda: a @ b, reps=5) / 1e9


class _NoBF16OpTimer(TorchDispatchMode):
    """Sums the wall time of every aten op, and of those bf16 autocast cannot lower on CPU: FFTs and any op
    on a complex tensor (there is no complex bf16 dtype, and FFTs reject bf16 and float16)."""

    def __init__(self):
        super().__init__()
        self.total = self.no_bf16 = 0.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        dt = time.perf_counter() - t
        self.total += dt
        leaves = tree_leaves((args, kwargs, out))
        if "fft" in func.__name__ or any(isinstance(a, torch.Tensor) and a.is_complex() for a in leaves):
            self.no_bf16 += dt
        return out


def bench_train(batch: int = 256) -> list[dict]:
    """fp32 NCHW vs channels_last (fp32) vs channels_last + bf16, and two upper bounds on what bf16 can add.

    Measured on the fp32 step: the share of op time in FFTs and complex-tensor ops (no bf16 CPU kernels; a
    bf16 path keeps their fp32 time, so the fast/plain ratio is at most ``1 / share``), and the rate of its
    convolution and matmul FLOPs (``torch.utils.flop_counter``; they cannot run faster than a large bf16 matmul,
    the practical peak, so the ratio is at most ``bf16 peak / fp32 rate``). ``bf16_bound`` is the smaller of the two.
    SOC models get a second row with ``autocast_convs`` (bf16 Taylor convolutions in training, opt-in).
    """
    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(f"matmul 2048: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
          f"(x{peak['bf16'] / peak['fp32']:.2f})", flush=True)
    rows = []
    cases = [(name, name, {}) for name in compact_models()]
    soc_bf16 = {"soc_args": {"autocast_convs": True}}
    cases += [(f"{n} (autocast_convs)", n, soc_bf16) for n in compact_models() if n.startswith("soc")]
    for label, name, kwargs in cases:
        torch.manual_seed(0)
        slow, slow_cl, fast = (_train_step_ips(lipzoo.create_model(name, **kwargs), cl, bf16, batch, reps=2)
                               for cl, bf16 in ((False, False), (True, False), (True, True)))
        step = _train_step(lipzoo.create_model(name, **kwargs), channels_last=False, bf16=False, batch=batch)
        step()
        with FlopCounterMode(display=False) as flops:
            step()
        timer = _NoBF16OpTimer()
        with timer:
            step()
        share = timer.no_bf16 / timer.total
        gflops = flops.get_total_flops() / batch * slow / 1e9
        bound = min(1 / share if share > 0 else math.inf, peak["bf16"] / gflops)
        rows.append({"model": label, "fp32_nchw_images_per_s": slow, "fp32_channels_last_images_per_s": slow_cl,
                     "bf16_channels_last_images_per_s": fast, "speedup": fast / slow, "no_bf16_share": share,
                     "fp32_gflops": gflops, "bf16_bound": bound, "matmul_gflops_fp32": peak["fp32"],
                     "matmul_gflops_bf16": peak["bf16"]})
        print(f"{label:14s} fp32 NCHW {slow:6.1f}  fp32 channels_last {slow_cl:6.1f}  channels_last+bf16 {fast:6.1f} "
              f"img/s  x{fast / slow:.1f}   FFT/complex ops {100 * share:3.0f}% of the fp32 step, fp32 conv/matmul "
              f"{gflops:5.0f} GFLOP/s  ->  bf16 can give at most x{bound:.1f}", flush=True)
    return rows


def bench_certify() -> list[dict]:
    from lipzoo import certify
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
