"""``scripts/bench.py train``'s measurements: what counts as work bf16 cannot lower, and the step it times."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from lipzoo.layers.lot import LOTConv2d

_SPEC = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parent.parent / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_no_bf16_timer_counts_ffts_and_complex_ops_only():
    x, a = torch.randn(64, 64), torch.randn(8, 16, 16, dtype=torch.complex64)
    timer = bench._NoBF16OpTimer()
    with timer:
        x @ x
        x.relu()
    assert timer.total > 0 and timer.no_bf16 == 0
    with timer:
        torch.fft.rfft2(x)
        torch.bmm(a, a)
    assert 0 < timer.no_bf16 < timer.total


def test_train_step_updates_the_model_in_each_format_and_precision():
    for channels_last, bf16 in ((False, False), (True, False), (True, True)):
        torch.manual_seed(0)
        model = nn.Sequential(LOTConv2d(3, 8, 3, stride=2), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))
        before = model[0].weight.detach().clone()
        bench._train_step(model, channels_last=channels_last, bf16=bf16, batch=4)()
        assert not torch.equal(model[0].weight, before)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert model[0].weight.is_contiguous(memory_format=fmt)
