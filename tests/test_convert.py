"""Authors' checkpoint files -> lipzoo models through ``create_model(checkpoint_path=, checkpoint_format=)``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lipzoo
from lipzoo.convert import ConversionError

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference"
SLL_NET = FIXTURES / "sll" / "sll_lipschitz_network"


@pytest.mark.skipif(not SLL_NET.with_suffix(".json").exists(), reason="reference fixtures not present")
def test_sll_released_checkpoint_layout_loads_and_reproduces_outputs(tmp_path):
    spec = json.loads(SLL_NET.with_suffix(".json").read_text())
    tensors = load_file(str(SLL_NET.with_suffix(".safetensors")))
    # a released SLL checkpoint: DataParallel prefix "module." + NormalizedModel/LipschitzNetwork keys, pickled dict
    state = {"module." + k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    path = tmp_path / "model.ckpt"
    torch.save({"model_state_dict": state}, path)
    cfg = spec["constructor"]["config"]
    model = lipzoo.create_model(
        "sll_s", width=cfg["w"], n_conv=cfg["n_conv"], n_dense=cfg["n_dense"], conv_inner_dim=cfg["conv_inner_dim"],
        dense_inner_dim=cfg["dense_inner_dim"], mean=tuple(spec["constructor"]["mean"]),
        checkpoint_path=path, checkpoint_format="sll",
    ).double().eval()
    with torch.no_grad():
        out = model(tensors["input"])
    # the model's mean buffer is float32 (as any lipzoo checkpoint stores it); the authors cast a Python float
    assert (out - tensors["output_eval"]).abs().max().item() < 1e-6


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": Evil()}}, path)
    with pytest.raises(ConversionError, match="weights_only"):
        lipzoo.create_model("sll_xs", checkpoint_path=path, checkpoint_format="sll")


def test_unknown_format_and_key_mismatch_are_clear(tmp_path):
    model = lipzoo.create_model("sll_xs")
    path = tmp_path / "m.pth"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(ConversionError, match="unknown checkpoint_format"):
        lipzoo.create_model("sll_xs", checkpoint_path=path, checkpoint_format="nope")
    with pytest.raises(ConversionError, match="checkpoint_format"):
        lipzoo.create_model("sll_xs", checkpoint_path=path)
    assert model is not None


def test_lipzoo_safetensors_roundtrip(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    src = lipzoo.create_model("sll_xs").eval()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "m.safetensors"))
    dst = lipzoo.create_model("sll_xs", checkpoint_path=tmp_path / "m.safetensors").eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(src(x), dst(x))
