"""The registry (timm's ``_registry``): families, their architectures, names and published tags.

A family is a declaration: each ``lipzoo/models/<family>.py`` ends with one :class:`Family` (its model class, a
variant table of :class:`Variant` rows, its checkpoint formats and recipes) passed to :func:`register_family`, which

* registers one timm entry point per variant (``timm.create_model('sll_xs')``, ``arch.tag`` pretrained cfgs from
  :mod:`lipzoo._manifest`),
* records the variant's :class:`ArchInfo` in :data:`ARCHS` (``lipzoo.list_models`` / ``model_info``) and the family
  in :data:`FAMILIES` (the command line, the converters, benchmarks and scripts read these instead of lists).

:func:`discover_families` imports every non-underscore module of a package and refuses one that declares no
family; a clash of names is refused before anything is registered.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from timm.models import register_model

from .. import _manifest
from .._errors import LipzooUserError
from ._builder import build, default_cfgs_for

__all__ = ["Variant", "Family", "ArchInfo", "ARCHS", "FAMILIES", "register_family", "discover_families",
           "family_of", "checkpoint_formats", "cpu_training", "resolve_name", "list_models", "list_pretrained", "pretrained_name",
           "published_weights", "UnknownModelError", "NoPretrainedWeightsError", "RegistryError"]


class RegistryError(RuntimeError):
    """A family declaration that cannot be registered (no declaration, a name clash, a malformed variant)."""


class UnknownModelError(LipzooUserError, ValueError):
    pass


class NoPretrainedWeightsError(LipzooUserError, ValueError):
    pass


@dataclass(frozen=True)
class Variant:
    """One row of a family's variant table: a registered architecture.

    ``args``: the model class's constructor arguments (the caller's keywords override them). ``paper_params``: the
    parameter count (millions) a paper reports, with ``paper_params_note`` saying where from and how it compares.
    ``compact``: a ``*_xs`` model that trains on a 2-core CPU. ``model``: another class of the family (default: the
    family's). ``measured_training``: the measured training speed (see the family module for its source).
    ``targets``: the project's targets per published tag, ``{'cifar10': (clean, certified at 36/255)}``.
    """

    description: str
    args: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    paper_params: float | None = None
    paper_params_note: str = ""
    compact: bool = False
    model: type | None = None
    measured_training: Mapping[str, Any] | None = None
    targets: Mapping[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    """A model family: everything lipzoo knows about it, as data.

    ``module``: the declaring module (``__name__``); the entry points become its attributes. ``checkpoint_formats``:
    the authors' formats, format name -> converter module (dotted path, imported only on use, so the models floor
    never imports ``lipzoo.convert``). ``reference_converter``: the converter of the authors' reference modules
    (``lipzoo.convert.from_reference``), also for ``reference_aliases`` (other spec family names, e.g. a second repo).
    ``recipes``: the family's training recipes as plain data, name -> ``lipzoo.train.Recipe`` fields (the name is the
    key; ``lipzoo.train.recipes`` builds ``RECIPES`` from every family's), the compact CPU recipe first.
    ``bench_layers``: name -> constructor of a representative CIFAR-sized layer (64 channels in and out, 32x32).
    ``convnet_conv``: ``(channels, kernel_size, input_size) -> module``, the family's square "same" convolution
    (stride 1, ``channels -> channels``, for an ``input_size`` map) that the 1LLC ConvNet (``convnet_*``,
    ``conv=<family>``) is built from; ``None`` for a family without one.
    """

    name: str
    paper: str
    model: type
    module: str
    variants: Mapping[str, Variant]
    checkpoint_formats: Mapping[str, str] = field(default_factory=dict)
    reference_converter: str | None = None
    reference_aliases: tuple[str, ...] = ()
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    bench_layers: Mapping[str, Callable[[], Any]] = field(default_factory=dict)
    convnet_conv: Callable[[int, int, int], Any] | None = None

    @property
    def compact(self) -> list[str]:
        """The compact (CPU) variants."""
        return [n for n, v in self.variants.items() if v.compact]


@dataclass
class ArchInfo:
    """What ``model_info`` and ``list_models`` report of one registered architecture."""

    name: str
    family: str
    paper: str
    description: str = ""
    paper_params: float | None = None  # parameters reported by the paper (millions), where one exists
    paper_params_note: str = ""
    compact: bool = False
    measured_training: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, ArchInfo] = {}
FAMILIES: dict[str, Family] = {}
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _check(family: Family) -> None:
    """Refuse a declaration before anything of it is registered."""
    if family.name in FAMILIES:
        raise RegistryError(f"family {family.name!r} is declared twice ({FAMILIES[family.name].module}, {family.module})")
    if not family.variants:
        raise RegistryError(f"family {family.name!r} ({family.module}) declares no variant")
    for name, variant in family.variants.items():
        if name in ARCHS:
            raise RegistryError(f"variant {name!r} of family {family.name!r} clashes with the registered "
                                f"{name!r} of family {ARCHS[name].family!r}")
        if not _NAME.fullmatch(name) or not name.startswith(family.name + "_"):
            raise RegistryError(f"variant {name!r} of family {family.name!r}: names are lower-case identifiers "
                                f"starting with '{family.name}_'")
        if not isinstance(variant, Variant):
            raise RegistryError(f"variant {name!r} of family {family.name!r} is not a Variant")
    _refuse_taken(family, "checkpoint formats", lambda f: f.checkpoint_formats)
    _refuse_taken(family, "recipes", lambda f: f.recipes)


def _refuse_taken(family: Family, what: str, names: Callable[[Family], Mapping[str, Any]]) -> None:
    """Refuse ``names(family)`` that a registered family already declares (formats and recipes are global names)."""
    taken = {n: f.name for f in FAMILIES.values() for n in names(f)}
    clash = sorted(set(names(family)) & set(taken))
    if clash:
        raise RegistryError(f"{what} {clash} of family {family.name!r} are declared by {taken[clash[0]]!r}")


def _entry_point(family: Family, name: str, variant: Variant) -> Callable[..., Any]:
    model_cls = variant.model or family.model

    def entry(pretrained: bool = False, **kwargs: Any):
        return build(model_cls, name, pretrained, **{**variant.args, **kwargs})

    entry.__name__ = entry.__qualname__ = name
    entry.__module__ = family.module
    entry.__doc__ = variant.doc or variant.description
    return entry


def register_family(family: Family) -> Family:
    """Register ``family``: one timm entry point per variant (with its published ``arch.tag`` cfgs), its
    :class:`ArchInfo` rows and the family record. Raises :class:`RegistryError` on a clash, registering nothing."""
    _check(family)
    module = sys.modules[family.module]
    # timm's register_model reads the pretrained cfgs from the module's ``default_cfgs``
    module.default_cfgs = {**getattr(module, "default_cfgs", {}), **default_cfgs_for(family.variants)}
    for name, variant in family.variants.items():
        setattr(module, name, register_model(_entry_point(family, name, variant)))
        ARCHS[name] = ArchInfo(name, family.name, family.paper, variant.description, variant.paper_params,
                               variant.paper_params_note, variant.compact, variant.measured_training)
    FAMILIES[family.name] = family
    return family


def discover_families(package: str) -> list[Family]:
    """Import every non-underscore module of ``package`` (each must register exactly one family; an import error
    propagates) and return the families in module order."""
    pkg = importlib.import_module(package)
    found = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        declared = [f for f in FAMILIES.values() if f.module == module.__name__]
        if len(declared) != 1:
            raise RegistryError(f"{module.__name__} must declare exactly one family with register_family(Family(...)); "
                                f"it declares {len(declared)}")
        found.append(declared[0])
    return found


def family_of(name: str) -> Family:
    """The family of an architecture (``'sll_xs'``, ``'sll-xs.cifar10'``) or the family itself (``'sll'``)."""
    if name in FAMILIES:
        return FAMILIES[name]
    return FAMILIES[ARCHS[_split(resolve_name(name))[0]].family]


def checkpoint_formats() -> dict[str, str]:
    """Every declared checkpoint format: format name -> converter module (dotted path)."""
    return {fmt: conv for f in FAMILIES.values() for fmt, conv in f.checkpoint_formats.items()}


# The measured CPU training speed of the compact models: ``python scripts/bench.py models`` (results/bench_models.json)
BENCH_HOW = "python scripts/bench.py models (batch 256, bf16 autocast, channels_last, 2 threads, torch 2.14.1+cu130)"


def cpu_training(images_per_s: float, how: str = BENCH_HOW) -> dict[str, Any]:
    """``Variant.measured_training`` from a measured training speed: images/s and the CIFAR-10 epoch (50,000
    images) in minutes."""
    return {"train_images_per_s": images_per_s, "epoch_minutes": round(50000 / images_per_s / 60, 2), "how": how}


# ------------------------------------------------------------------------------------ names and weights
def published_weights() -> dict[str, dict[str, Any]]:
    """``{'arch.tag': {'hf_hub_id', 'revision', 'sha256', 'num_classes', 'dataset', ...}}`` of published weights
    (read through :mod:`lipzoo._manifest` on each call)."""
    return _manifest.read()


def _split(name: str) -> tuple[str, str | None]:
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def resolve_name(name: str) -> str:
    """Map an alias to the registered name: ``'sll-xl'`` -> ``'sll_xl'``, ``'SLL-XS.cifar10'`` -> ``'sll_xs.cifar10'``.

    Raises :class:`UnknownModelError` listing the closest known names for an unknown architecture.
    """
    if not isinstance(name, str) or not name:
        raise UnknownModelError(f"model name must be a non-empty string, got {name!r}")
    arch, tag = _split(name.strip())
    arch = arch.lower().replace("-", "_")
    if arch not in ARCHS:
        close = difflib.get_close_matches(arch, list(ARCHS), n=5, cutoff=0.4)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise UnknownModelError(f"unknown lipzoo model {name!r}.{hint} See lipzoo.list_models() or `lipzoo list`.")
    return f"{arch}.{tag}" if tag else arch


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*") -> list[str]:
    """Registered lipzoo architectures matching a shell-style ``pattern`` (hyphens accepted), natural order."""
    pattern = pattern.lower().replace("-", "_")
    return sorted((a for a in ARCHS if fnmatch.fnmatch(a, pattern)), key=_natural_key)


def list_pretrained(pattern: str = "*") -> list[str]:
    """Published ``arch.tag`` weights matching ``pattern``."""
    pattern = pattern.lower().replace("-", "_")
    return sorted(k for k in published_weights() if fnmatch.fnmatch(k, pattern) or fnmatch.fnmatch(k.split(".")[0], pattern))


def pretrained_name(name: str) -> str:
    """``arch.tag`` of the published weights ``name`` asks for (``'sll_xs'`` -> ``'sll_xs.cifar10'``); raises
    :class:`NoPretrainedWeightsError` listing what is published."""
    arch, tag = _split(name)
    published = [k for k in published_weights() if k.split(".")[0] == arch]
    if tag is None:
        if not published:
            raise NoPretrainedWeightsError(
                f"no pretrained weights are published for {arch!r}. Published: "
                f"{', '.join(list_pretrained()) or 'none yet'}. Use pretrained=False, or train one with `lipzoo train`."
            )
        preferred = [k for k in published if k.endswith(".cifar10")]
        return (preferred or sorted(published))[0]
    if name not in published:
        raise NoPretrainedWeightsError(
            f"no pretrained weights {name!r}. Published for {arch}: {', '.join(sorted(published)) or 'none'}; "
            f"all published: {', '.join(list_pretrained()) or 'none yet'}."
        )
    return name
