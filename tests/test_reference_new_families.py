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


# --- the AOL paper's TF patch-wise network: checkpoint_format 'aol-tf' ------------------------------------------------

AOLTF = FIXTURES / "aol" / "aoltf_network_small.json"


def _aoltf_case():
    """The recorded case and the AOLNet arguments of its constructor (the authors' names mapped by hand)."""
    spec, state, tensors = load_reference_case(AOLTF, upcast=True)
    kw = spec["constructor"]["kwargs"]
    args = dict(patch_size=kw["patch_size"][0], encoding_channels=kw["patch_encoding_sizes"],
                n_encoding=kw["nrof_encoding_layers"], filters_after_downsize=kw["filters_after_downsize"],
                n_dense=kw["nrof_aggregation_layers"], num_classes=kw["nrof_classes"])
    return spec, state, tensors, args


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".npz":
        import numpy as np

        np.savez(path, **{k: v.numpy() for k, v in state.items()})
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_aoltf_checkpoint_loads_into_aolnet(tmp_path, suffix: str):
    """The TF network's variables (Keras paths) load into lipzoo's AOLNet with its CIFAR-10 centring (folded into the
    first bias) and reproduce the recorded TF output: float32 through create_model, float64 through load_checkpoint."""
    import lipzoo
    from lipzoo.convert import load_checkpoint

    spec, state, tensors, args = _aoltf_case()
    path = _save(state, tmp_path / f"aol_tf{suffix}")
    x = tensors["input"].permute(0, 3, 1, 2)  # recorded NHWC, as TF takes it
    tol = spec["suggested_tolerance"]["output_eval"]
    model = lipzoo.create_model("aol_s", checkpoint_path=path, checkpoint_format="aol-tf", **args).eval()
    assert float(model.normalize.mean.abs().min()) > 0.4  # the CIFAR-10 mean: the bias shift is exercised
    with torch.no_grad():
        assert (model(x.float()).double() - tensors["output_eval"]).abs().max().item() <= tol["float32_atol"]
    model64 = load_checkpoint(lipzoo.create_model("aol_s", **args).double(), path, "aol-tf").eval()
    with torch.no_grad():
        _check(model64(x), tensors["output_eval"], tol["float64_atol"])
    assert model64.lipschitz_bound() <= 1.0 + 1e-9


def test_aoltf_keys_follow_the_layer_counter_not_the_prefix():
    """Keras 2 names (':0'), no 'sequential/' prefix and a counter offset by other layers built before: same model."""
    from lipzoo.convert._aol import tf_network_state
    from lipzoo.models.aol import AOLNet

    spec, state, tensors, args = _aoltf_case()
    renamed = {}
    for key, value in state.items():
        layer, var = key.split("/")[-2:]
        n = int(layer.rsplit("Layer", 1)[1])
        renamed[f"{layer.rsplit('Layer', 1)[0]}Layer{n + 95}/{var}:0"] = value
    model = AOLNet(**args, mean=(0.0, 0.0, 0.0)).double()
    model.load_state_dict(tf_network_state(renamed, model), strict=True)
    with torch.no_grad():
        _check(model.eval()(tensors["input"].permute(0, 3, 1, 2)), tensors["output_eval"],
               spec["suggested_tolerance"]["output_eval"]["float64_atol"])


@pytest.mark.parametrize("edit,message", [
    (lambda s: {k: v for k, v in s.items() if k != "sequential/AOLDenseLayer12/bias_parameters"},
     "AOLDenseLayer12 has no bias_parameters"),
    (lambda s: {**s, "sequential/flatten/counter": torch.zeros(1)}, "not AOLConv2D/AOLDense variables"),
    (lambda s: {k: v for k, v in s.items() if "AOLConv2DLayer6" not in k}, "3 AOLConv2D \\+ 3 AOLDense layers, the model 4 \\+ 3"),
])
def test_aoltf_wrong_keys_are_named(tmp_path, edit, message: str):
    import lipzoo
    from lipzoo.convert import ConversionError

    _, state, _, args = _aoltf_case()
    path = _save(edit(state), tmp_path / "aol_tf.safetensors")
    with pytest.raises(ConversionError, match=message):
        lipzoo.create_model("aol_s", checkpoint_path=path, checkpoint_format="aol-tf", **args)


def test_aoltf_wrong_architecture_is_refused(tmp_path):
    """The paper's aol_s (12 + 2 convs, 14 dense) is not the small case; nor is a model that keeps 4 channels."""
    import lipzoo
    from lipzoo.convert import ConversionError

    _, state, _, args = _aoltf_case()
    path = _save(state, tmp_path / "aol_tf.safetensors")
    with pytest.raises(ConversionError, match="the checkpoint has 4 AOLConv2D \\+ 3 AOLDense layers, the model 14 \\+ 14"):
        lipzoo.create_model("aol_s", checkpoint_path=path, checkpoint_format="aol-tf")
    with pytest.raises(ConversionError, match="AOLDenseLayer10/kernel_parameters has shape \\(32, 32\\)"):
        lipzoo.create_model("aol_s", checkpoint_path=path, checkpoint_format="aol-tf", **{**args, "filters_after_downsize": 4})


def _keras3_h5(state: dict[str, torch.Tensor], path: Path) -> Path:
    """The layout TF 2.21's model.save_weights('x.weights.h5') wrote for the recorded network:
    layers/<snake name>/vars/{0: kernel, 1: bias}, the layer name in the vars group's 'name' attribute."""
    import h5py

    with h5py.File(path, "w") as f:
        for i, layer in enumerate(sorted({k.split("/")[-2] for k in state}, key=lambda n: int(n.rsplit("Layer", 1)[1]))):
            group = f.create_group(f"layers/aol_layer_{i}/vars")
            group.attrs["name"] = layer
            group["0"] = state[f"sequential/{layer}/kernel_parameters"].numpy()
            group["1"] = state[f"sequential/{layer}/bias_parameters"].numpy()
    return path


def test_aoltf_keras_h5(tmp_path):
    h5py = pytest.importorskip("h5py")  # optional: only Keras .h5 files need it
    import lipzoo
    from lipzoo.convert import load_checkpoint

    spec, state, tensors, args = _aoltf_case()
    path = _keras3_h5(state, tmp_path / "model.weights.h5")
    assert h5py.is_hdf5(path)
    model = load_checkpoint(lipzoo.create_model("aol_s", **args).double(), path, "aol-tf").eval()
    with torch.no_grad():
        _check(model(tensors["input"].permute(0, 3, 1, 2)), tensors["output_eval"],
               spec["suggested_tolerance"]["output_eval"]["float64_atol"])


def test_aoltf_h5_without_h5py_is_one_clear_line(tmp_path, monkeypatch):
    import sys

    import lipzoo
    from lipzoo.convert import ConversionError

    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    with pytest.raises(ConversionError, match=r"needs h5py \(pip install h5py\)") as info:
        lipzoo.create_model("aol_xs", checkpoint_path=path, checkpoint_format="aol-tf")
    assert "\n" not in str(info.value)
