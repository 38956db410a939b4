"""Families are declarations (issue 21, item 1): discovery refuses a module without one, registration refuses a
clash before registering anything, and what the declarations say holds (recipes, converters, measured speeds)."""
from __future__ import annotations

import hashlib
import importlib
import json
import math
from pathlib import Path

import pytest
import timm

import lipzoo
from lipzoo.models import FAMILIES
from lipzoo.models._registry import ARCHS, Family, RegistryError, Variant, discover_families, register_family
from lipzoo.models.sll import SLLNet

REPO = Path(__file__).resolve().parents[1]


def _package(tmp_path: Path, monkeypatch, name: str, modules: dict[str, str]) -> str:
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("")
    for module, text in modules.items():
        (root / f"{module}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_family_module_without_a_declaration_is_an_error(tmp_path, monkeypatch):
    pkg = _package(tmp_path, monkeypatch, "famless_pkg", {"forgot": "X = 1\n", "_helper": "Y = 2\n"})
    with pytest.raises(RegistryError, match=r"famless_pkg\.forgot must declare exactly one family"):
        discover_families(pkg)


def test_a_family_module_that_fails_to_import_is_not_skipped(tmp_path, monkeypatch):
    pkg = _package(tmp_path, monkeypatch, "broken_pkg", {"broken": "import a_module_that_does_not_exist\n"})
    with pytest.raises(ModuleNotFoundError, match="a_module_that_does_not_exist"):
        discover_families(pkg)


def _family(name: str, variants: dict[str, Variant], **kw) -> Family:
    return Family(name=name, paper="test", model=SLLNet, module=__name__, variants=variants, **kw)


@pytest.mark.parametrize("family, message", [
    (_family("clash", {"clash_a": Variant("a"), "sll_xs": Variant("b")}), "'sll_xs' of family 'clash' clashes"),
    (_family("sll", {"sll_new": Variant("a")}), "family 'sll' is declared twice"),
    (_family("odd", {"odd_a": Variant("a"), "other_b": Variant("b")}), "starting with 'odd_'"),
    (_family("fmt", {"fmt_a": Variant("a")}, checkpoint_formats={"sll": "x"}), r"\['sll'\] of family 'fmt'"),
    (_family("rcp", {"rcp_a": Variant("a")}, recipes={"sll_cpu": {}}), r"recipes \['sll_cpu'\] of family 'rcp' are "
     "declared by 'sll'"),
])
def test_a_clashing_declaration_registers_nothing(family, message):
    archs, families, timm_names = dict(ARCHS), dict(FAMILIES), set(timm.list_models())
    with pytest.raises(RegistryError, match=message):
        register_family(family)
    assert ARCHS == archs and FAMILIES == families and set(timm.list_models()) == timm_names
    assert ARCHS["sll_xs"].family == "sll"


def test_every_module_of_the_models_package_declares_its_family():
    modules = {f.module.rsplit(".", 1)[1] for f in FAMILIES.values()}
    on_disk = {p.stem for p in (REPO / "lipzoo" / "models").glob("*.py") if not p.stem.startswith("_")}
    assert modules == on_disk
    assert sorted(ARCHS) == sorted(n for f in FAMILIES.values() for n in f.variants)
    for family in FAMILIES.values():
        assert family.compact, f"{family.name} has no compact variant"
        assert all(lipzoo.model_info(n)["family"] == family.name for n in family.variants)


def test_declared_recipes_exist_and_train_the_family():
    from lipzoo.train.recipes import RECIPES, compact_runs

    declared = {r: f.name for f in FAMILIES.values() for r in f.recipes}
    assert set(declared) == set(RECIPES)  # every recipe belongs to exactly one family's declaration
    for recipe, family in declared.items():
        assert RECIPES[recipe].model in FAMILIES[family].variants, recipe
    assert ("sll_xs", "sll_cpu") in compact_runs() and ("cayley_xs", "cayley_cpu") in compact_runs()
    assert len(compact_runs()) == 5


# sha256 (first 16 hex digits) of json.dumps(Recipe.to_dict(), sort_keys=True) of every recipe, recorded from the
# recipes as lipzoo/train/recipes.py wrote them before they moved into the declarations (issue 21); a resumed run
# (runs/sandwich_cpu_long) refuses a changed recipe
_RECIPE_FINGERPRINTS = {
    "cayley_cpu": "fd1375d99c944482",  # recorded from runs/cayley_xs.cifar10/recipe.json when the run started
    "lot_cpu": "64f037965b153181",
    "lot_paper": "11e2f9d670326406",
    "sandwich_cpu": "3c10174c734545b7",
    "sandwich_cpu_long": "930dbbb249609bcd",
    "sandwich_paper": "52346c689f0f452e",
    "sll_cpu": "7fc481540b1baa9b",
    "sll_paper": "2cba20f7c9d6659a",
    "soc_cpu": "6c25ab7b4c0ee664",
    "soc_improved_paper": "44c1aaedd880a58b",
    "soc_paper": "fb69a106cb602f5d",
}


def test_declared_recipes_are_the_recipes_field_by_field():
    from lipzoo.train.recipes import RECIPES, family_recipes

    def fingerprint(recipe) -> str:
        return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    assert {name: fingerprint(r) for name, r in RECIPES.items()} == _RECIPE_FINGERPRINTS
    long = RECIPES["sandwich_cpu_long"]  # spelled out: the fields a resumed run compares
    assert (long.model, long.epochs, long.lr, long.betas, long.offset, long.temperature, long.ema_decay,
            long.val_split, long.augment, long.pad_mode, long.fast) == (
        "sandwich_xs", 200, 0.01, (0.9, 0.999), 1.0607, 0.125, 0.999, 5000, "crop_flip", "reflect", True)
    assert [r.name for r in family_recipes("sll")] == ["sll_cpu", "sll_paper"]  # the declaration's order


def test_a_recipe_with_an_unknown_field_is_refused_by_name():
    from lipzoo.train.recipes import recipe_from_declaration

    with pytest.raises(ValueError, match=r"recipe 'myfam_cpu' of family 'myfam' declares unknown fields \['epoch'\]"):
        recipe_from_declaration("myfam_cpu", {"epoch": 3}, "myfam")
    with pytest.raises(ValueError, match=r"unknown fields \['name'\].*its name is the key"):
        recipe_from_declaration("myfam_cpu", {"name": "other"})
    assert recipe_from_declaration("myfam_cpu", {"epochs": 3}).name == "myfam_cpu"


def test_declared_converters_import_and_convert():
    from lipzoo.convert import CHECKPOINT_FORMATS

    assert {"sll", "sll-legacy", "lbdn", "soc", "soc-improved", "lot"} <= set(CHECKPOINT_FORMATS)
    for fmt, module in CHECKPOINT_FORMATS.items():
        assert callable(importlib.import_module(module).convert_state_dict), fmt
    for family in FAMILIES.values():
        if family.reference_converter:
            assert callable(importlib.import_module(family.reference_converter).from_reference), family.name


def test_measured_training_is_the_benchmark_record():
    """The variant tables carry the epoch times of ``scripts/bench.py models`` (results/bench_models.json)."""
    rows = json.loads((REPO / "results" / "bench_models.json").read_text())["models"]
    for row in rows:
        info = lipzoo.model_info(row["model"])["measured_training"]
        assert info["train_images_per_s"] == round(row["train_images_per_s"], 1)
        assert math.isclose(info["epoch_minutes"], round(row["epoch_seconds"] / 60, 2))
    measured = {a for a in ARCHS if ARCHS[a].measured_training}
    assert measured == {row["model"] for row in rows}


def test_shared_pieces_serve_every_family():
    """One activation factory and one LipConvNet skeleton: SOC's ICML'21 net and LOT's LipConvNet have the same
    conv shapes, strides and activations at every block."""
    from lipzoo.layers.activations import HouseHolder, HouseHolder2, MaxMin, create_activation
    from lipzoo.layers.lot import LOTConv2d
    from lipzoo.layers.soc import SOCConv2d

    assert isinstance(create_activation("maxmin", 4), MaxMin)
    hh2 = create_activation("hh2", 4, "adjacent")
    assert isinstance(hh2, HouseHolder2) and hh2.pairing == "adjacent"
    assert isinstance(create_activation("hh1", 4), HouseHolder)
    with pytest.raises(ValueError, match="activation must be one of"):
        create_activation("relu", 4)

    def convs(model, cls):
        return [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in model.modules() if isinstance(m, cls)]

    soc = lipzoo.create_model("soc_lipconvnet10", init_channels=8, head="lln")
    lot = lipzoo.create_model("lot_lipconvnet10", init_channels=8, lln=True)
    assert convs(soc, SOCConv2d) == convs(lot, LOTConv2d) and len(convs(soc, SOCConv2d)) == 10
