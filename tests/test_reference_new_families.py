"""Every case recorded from the authors' code of AOL, CPL, Cayley and BCOP (tests/fixtures/reference/<family>/,
recorded for issue 23) is reproduced by lipzoo.convert.from_reference.

Eval output within the sidecar's float64 tolerance; where the authors' train mode differs (CPL's one-step power
iteration), the first train-mode output and the state it leaves behind (layer cases, whose keys are the authors')."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lipzoo.convert import from_reference
from _fixtures import load_reference_case

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
FAMILIES = ("cpl", "cayley", "bcop", "aol")
CASES = sorted(p for fam in FAMILIES for p in (FIXTURES / fam).glob("*.json"))
IDS = [f"{p.parent.name}/{p.stem}" for p in CASES]


@pytest.mark.parametrize("family", FAMILIES)
def test_cases_recorded(family: str):
    n = len(list((FIXTURES / family).glob("*.json")))
    assert n >= 6 or (FIXTURES / family / "README.md").exists(), f"{family}: {n} cases and no README saying why"


def _check(out: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    assert out.dtype == torch.float64, "reference cases are float64 end to end"
    assert out.shape == expected.shape
    err = (out.detach() - expected).abs().max().item()
    assert err <= atol, f"max |diff| {err:.3e} > tolerance {atol:.3e}"


@pytest.mark.parametrize("path", CASES, ids=IDS)
def test_reference_eval_output(path: Path):
    spec, state, tensors = load_reference_case(path, upcast=True)
    module = from_reference(spec, state).eval()
    with torch.no_grad():
        out = module(tensors["input"])
    _check(out, tensors["output_eval"], spec["suggested_tolerance"]["output_eval"]["float64_atol"])


TRAIN_CASES = [p for p in CASES if "output_train" in load_reference_case(p)[0]["outputs"]]


@pytest.mark.parametrize("path", TRAIN_CASES, ids=[f"{p.parent.name}/{p.stem}" for p in TRAIN_CASES])
def test_reference_train_output_and_state(path: Path):
    spec, state, tensors = load_reference_case(path, upcast=True)
    module = from_reference(spec, state).train()
    out = module(tensors["input"])
    _check(out, tensors["output_train"], spec["suggested_tolerance"]["output_train"]["float64_atol"])
    after = {k[len("state_after_train."):]: v for k, v in tensors.items() if k.startswith("state_after_train.")}
    now = module.state_dict()
    if not set(after) <= set(now):
        pytest.skip("whole network: lipzoo's key names differ from the authors' (state compared in the layer cases)")
    for key, expected in after.items():
        assert (now[key].double() - expected).abs().max().item() <= 1e-10, key


def test_cpl_authors_step_bound_is_proven_when_their_estimate_is_low():
    """A stored power-iteration estimate below ||W|| (3 vs 2.9 here) makes the authors' map expansive; the bound
    of the converted layer shows it (>= the exact Jacobian norm), while lipzoo's own CPL layer stays at 1."""
    from lipzoo.convert._cpl import AuthorsStepCPLLinear
    from lipzoo.layers.cpl import CPLLinear

    w = torch.diag(torch.tensor([3.0, 2.9, 1.0, 1.0, 0.5, 0.5], dtype=torch.float64))
    authors, ours = AuthorsStepCPLLinear(6, 6).double().eval(), CPLLinear(6, 6).double().eval()
    with torch.no_grad():
        for layer in (authors, ours):
            layer.weights.copy_(w)
            layer.bias.fill_(100.0)  # every unit active: the Jacobian is I - h W^T W
        authors.eval_sv_max.fill_(2.9)
    x = torch.randn(3, 6, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: authors(v[None])[0], x[0])
    true_lip = float(torch.linalg.matrix_norm(jac, ord=2))
    assert true_lip > 1.1  # 2 * 9 / (2.9^2 + 1e-4) - 1
    assert authors.lipschitz_bound() >= true_lip * (1 - 1e-12)
    jac_ours = torch.autograd.functional.jacobian(lambda v: ours(v[None])[0], x[0])
    assert float(torch.linalg.matrix_norm(jac_ours, ord=2)) <= 1.0 + 1e-12
    assert ours.lipschitz_bound() == 1.0


def test_cpl_checkpoint_format_drops_the_estimates(tmp_path):
    """An authors' CPL network state (DataParallel keys) loads strictly into lipzoo's CPLNet, which then uses its
    proven step: its output differs from the authors' only through h (tiny), and its bound is 1."""
    from lipzoo.convert import load_checkpoint
    from lipzoo.models.cpl import CPLNet

    spec, state, tensors = load_reference_case(FIXTURES / "cpl" / "cpl_network_lln.json")
    kw = spec["constructor"]["kwargs"]
    path = tmp_path / "cpl.pt"
    torch.save({"model_state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model = CPLNet(width=kw["num_channels"], n_conv=kw["depth"], n_dense=kw["depth_linear"], conv_inner_dim=kw["conv_size"],
                   dense_inner_dim=kw["n_features"], num_classes=kw["num_classes"], mean=tuple(spec["constructor"]["mean"]))
    load_checkpoint(model.double(), path, checkpoint_format="cpl")
    with torch.no_grad():
        out = model.eval()(tensors["input"])
    assert (out - tensors["output_eval"]).abs().max().item() < 1e-2
    assert model.lipschitz_bound() <= 1.0 + 1e-9


@pytest.mark.parametrize("family,case", [("cayley", "cayley_kwlarge_small"), ("bcop", "bcop_kwlarge_small")])
def test_kwlarge_checkpoint_keys(family: str, case: str):
    """The authors' Sequential(Normalize, KWLarge) keys (with a DataParallel prefix) map strictly onto lipzoo's
    KWLarge of the family, and the loaded model reproduces the recorded output."""
    import importlib

    spec, state, tensors = load_reference_case(FIXTURES / family / f"{case}.json")
    reference = from_reference(spec, state)
    model = type(reference)(channels=spec["constructor"]["channels"], dense=spec["constructor"]["dense"],
                            input_size=spec["constructor"]["input_size"], mean=tuple(spec["constructor"]["mean"])).double()
    converter = importlib.import_module(f"lipzoo.convert._{family}")
    converted = converter.convert_state_dict({f"module.{k}": v for k, v in state.items()}, family, model)
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        out = model.eval()(tensors["input"])
    assert (out - tensors["output_eval"]).abs().max().item() < 1e-5  # the mean buffer is float32 here
