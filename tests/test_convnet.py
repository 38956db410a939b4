"""The 1LLC ConvNet (``convnet_{xs,s,m,l}``) with every family's convolution (issue "Beyond the four").

Expected values come from the 1LLC paper (Table 7 widths, Table 8 parameter counts) and from the structure the
paper describes, not from lipzoo's code."""
from __future__ import annotations

import pytest
import torch

import lipzoo
from lipzoo._numerics import cache_scope
from lipzoo.auditing import audit
from lipzoo.models.convnet import ConvNet, convnet_families

CI_AUDIT = dict(n_probe=1, power_iters=3, pgd_steps=4, restarts=1, n_attack=2, pair_steps=1)


def test_every_family_declares_its_convolution():
    assert convnet_families() == sorted(["aol", "bcop", "cayley", "cpl", "lot", "sandwich", "sll", "soc"])


@pytest.mark.parametrize("size, width, paper_millions", [("xs", 16, 1.57), ("s", 32, 6.28), ("m", 64, 25.12),
                                                         ("l", 128, 100.46)])
def test_sizes_match_the_paper(size, width, paper_millions):
    """With a plain (AOL) kernel the four sizes have the paper's Table 8 counts (to its 2 decimals)."""
    info = lipzoo.model_info(f"convnet_{size}")
    assert info["paper_params_millions"] == paper_millions
    assert round(info["params"] / 1e6, 2) == paper_millions


def test_structure_ends_at_one_pixel_with_32w_channels():
    model = lipzoo.create_model("convnet_xs", conv="aol").eval()
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 3, 32, 32))
    assert tuple(feats.shape) == (2, 32 * 16, 1, 1)
    convs = [m for m in model.features if type(m).__name__ == "AOLConv2d"]
    assert len(convs) == 1 + 5 * 5  # the 1x1 stem and five blocks of five
    assert all(c.weight.shape[-1] == 1 for c in convs[-5:]) and all(c.weight.shape[-1] == 3 for c in convs[1:-5])


@pytest.mark.parametrize("family", convnet_families())
def test_each_family_builds_certifies_and_passes_the_audit(family):
    """A narrow ConvNet (width 4) with the family's convolution: 10 and 100 classes, a bound near 1, the audit."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    with cache_scope():
        model = ConvNet(conv=family, width=4).eval()
        assert model.head_rule == "lipschitz"
        with torch.no_grad():
            assert tuple(model(x).shape) == (2, 10)
        assert 0.9 < model.lipschitz_bound() < 1.01
        report = audit(model, x, torch.tensor([0, 1]), progress=False, **CI_AUDIT)
        assert report.ok, report
    wide = ConvNet(conv=family, width=4, num_classes=100)
    assert tuple(wide(x).shape) == (2, 100)


def test_registered_names_take_any_family():
    model = lipzoo.create_model("convnet-xs", conv="cpl", width=4)
    assert model.conv == "cpl" and type(model.features[1]).__name__ == "CPLConv2d"


def test_unknown_convolution_names_the_families():
    with pytest.raises(ValueError, match="aol.*soc"):
        ConvNet(conv="orthogonal")
