"""Registry: lipzoo API, timm registration, aliases, unknown names, pretrained errors, torch.hub."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

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
