"""Every case recorded from the papers' own code (shared/fixtures/reference) is reproduced by lipzoo.

lipzoo.convert.from_reference builds the lipzoo module from the sidecar JSON and the authors' state dict; its
eval output must match the recorded output within the case's suggested float64 tolerance.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipzoo.convert import from_reference
from _fixtures import load_reference_case

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
CASES = sorted(FIXTURES.glob("*/*.json")) if FIXTURES.exists() else []


def test_fixtures_present():
    assert len(CASES) >= 48, f"expected the 48 reference cases under {FIXTURES}"


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_reference_eval_output(path: Path):
    spec, state, tensors = load_reference_case(path, upcast=True)
    module = from_reference(spec, state)
    module.eval()
    with torch.no_grad():
        out = module(tensors["input"])
    expected = tensors["output_eval"]
    assert out.dtype == torch.float64, "reference cases are float64 end to end"
    assert out.shape == expected.shape
    atol = spec["suggested_tolerance"]["output_eval"]["float64_atol"]
    err = (out - expected).abs().max().item()
    assert err <= atol, f"max |diff| {err:.3e} > tolerance {atol:.3e}"
