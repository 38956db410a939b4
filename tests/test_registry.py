"""Registry: lipzoo API, timm registration, aliases, unknown names, pretrained errors, torch.hub."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

import lipzoo
from lipzoo import NoPretrainedWeightsError, UnknownModelError

REPO = Path(__file__).resolve().parents[1]


def test_sll_architectures_registered_in_timm():
    names = timm.list_models("sll*")
    for arch in ("sll_s", "sll_m", "sll_l", "sll_xl", "sll_xs"):
        assert arch in names
        assert arch in lipzoo.list_models("sll*")
    m = timm.create_model("sll_xs", num_classes=10)
    assert isinstance(m, lipzoo.models.LipschitzClassifier)


def test_timm_listing_in_fresh_interpreter():
    out = subprocess.run([sys.executable, "-c", "import lipzoo, timm; print(timm.list_models('sll*'))"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert "sll_xs" in out.stdout and "sll_xl" in out.stdout


@pytest.mark.parametrize("alias", ["sll-xs", "SLL-XS", "sll_xs"])
def test_hyphen_alias_resolves(alias):
    assert lipzoo.resolve_name(alias) == "sll_xs"
    assert lipzoo.resolve_name(alias + ".cifar10") == "sll_xs.cifar10"
    m = lipzoo.create_model(alias)
    assert m.default_cfg["architecture"] == "sll_xs"


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownModelError) as e:
        lipzoo.create_model("sll_xxl")
    assert "sll_xl" in str(e.value)
    with pytest.raises(UnknownModelError):
        lipzoo.create_model("resnet50")  # a timm model, but not a lipzoo one


def test_pretrained_without_weights_is_a_clear_error():
    published = lipzoo.list_pretrained()
    unpublished = [a for a in lipzoo.list_models() if not any(p.startswith(a + ".") for p in published)]
    assert unpublished, "expected at least one architecture without published weights"
    with pytest.raises(NoPretrainedWeightsError) as e:
        lipzoo.create_model(unpublished[0], pretrained=True)
    assert "Published" in str(e.value) or "published" in str(e.value)
    with pytest.raises(NoPretrainedWeightsError):
        lipzoo.create_model("sll_xs.not_a_tag", pretrained=True)


def test_model_info_reports_family_params_and_head_rule():
    info = lipzoo.model_info("sll-xs")
    assert info["family"] == "sll" and info["head_rule"] == "lln"
    m = lipzoo.create_model("sll_xs")
    assert info["params"] == sum(p.numel() for p in m.parameters())
    assert info["input_size"] == (3, 32, 32)


def test_num_classes_100_and_head_replacement_is_refused():
    m = lipzoo.create_model("sll_xs", num_classes=100)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    with pytest.raises(lipzoo.models.HeadReplacementError):
        m.reset_classifier(10)
    m.reset_classifier(10, allow_uncertified=True)
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def _load_hubconf():
    spec = importlib.util.spec_from_file_location("lipzoo_hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_has_an_entry_point_per_architecture():
    hub = _load_hubconf()
    assert set(hub.dependencies) >= {"torch", "timm"}
    for arch in lipzoo.list_models():
        fn = getattr(hub, arch)
        assert callable(fn) and arch in (fn.__doc__ or "")


def test_torch_hub_load_local():
    m = torch.hub.load(str(REPO), "sll_xs", source="local", num_classes=10)
    ref = lipzoo.create_model("sll_xs")
    assert type(m) is type(ref)
    assert [k for k in m.state_dict()] == [k for k in ref.state_dict()]


# ------------------------------------------------------------------------ timm's preprocessing (issue 22, item 1)
def _timm_pipeline(model, images_uint8):
    """What a timm user does: the model's data config, timm's eval transform on each PIL image, stacked."""
    from PIL import Image

    config = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**config)
    return torch.stack([transform(Image.fromarray(img)) for img in images_uint8]), config


@pytest.mark.parametrize("arch", ["sll_xs", "soc_xs", "lot_xs", "sandwich_xs"])
def test_timm_transforms_give_the_raw_unit_interval_images(arch, cifar10_available):
    """lipzoo models take [0, 1] images and normalise inside: timm's resolve_data_config + create_transform must give
    exactly the raw [0, 1] tensor (not subtract the CIFAR mean a second time) and the same predictions."""
    if not cifar10_available:
        pytest.skip("no offline CIFAR-10 copy")
    from lipzoo.data import CIFAR

    ds = CIFAR("cifar10", "test")
    x_raw, y = ds.tensors(np.arange(64))
    torch.manual_seed(0)
    model = lipzoo.create_model(arch).eval()
    x_timm, config = _timm_pipeline(model, ds.images[:64])
    assert config["mean"] == (0.0, 0.0, 0.0) and config["std"] == (1.0, 1.0, 1.0)
    assert config["input_size"] == (3, 32, 32)
    assert torch.equal(x_timm, x_raw)
    with torch.no_grad():
        pred_raw, pred_timm = model(x_raw).argmax(1), model(x_timm).argmax(1)
    assert torch.equal(pred_raw, pred_timm)
    assert float((pred_timm == y).float().mean()) == float((pred_raw == y).float().mean())


@pytest.mark.parametrize("name", ["sll_xs.cifar10", "soc_xs.cifar10"])
def test_pretrained_cfg_describes_the_input_also_with_a_published_config_json(name):
    """A cfg read from a hub config.json (timm's ``hf-hub:`` route passes it as ``pretrained_cfg``) written with the
    dataset's mean still gives mean 0 / std 1, and the registered tagged cfg does too."""
    config = json.loads((REPO / "hub" / "lipzoo" / name / "config.json").read_text())
    arch = config["architecture"]
    model = timm.create_model(arch, pretrained_cfg=config["pretrained_cfg"], num_classes=config["num_classes"])
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["mean"] == (0.0, 0.0, 0.0) and data_config["std"] == (1.0, 1.0, 1.0)
    assert model.pretrained_cfg is model.default_cfg
    assert model.pretrained_cfg.get("tag") == config["pretrained_cfg"]["tag"]
    tagged = timm.create_model(name)  # the registered cfg of the published weights (no download)
    assert timm.data.resolve_data_config({}, model=tagged)["mean"] == (0.0, 0.0, 0.0)
    assert tagged.pretrained_cfg["hf_hub_id"] == f"lipzoo/{name}"
