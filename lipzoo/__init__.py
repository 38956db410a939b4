"""lipzoo: pretrained, certifiably robust 1-Lipschitz CNNs (SOC, LOT, Sandwich, SLL).

>>> import lipzoo
>>> model = lipzoo.create_model('sll-xs')              # random weights
>>> lipzoo.list_models('sll*')

``import lipzoo`` is cheap (it imports neither torch nor timm, so ``lipzoo --help`` answers at once): the public
API is imported on first use, and every architecture is registered into timm's registry as soon as timm is
imported (at once if it already is), so ``import lipzoo, timm; timm.create_model('sll_xs')`` works as before.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

from ._version import __version__  # noqa: E402

from ._errors import LipzooUserError  # noqa: E402  (no torch)
from ._hooks import set_pretrained_loader as _set_pretrained_loader  # noqa: E402


def _load_pretrained(*args, **kwargs):
    """The models' builder loads published weights through this (lipzoo._hooks): the hub is imported on first use."""
    from .hub.download import load_pretrained

    return load_pretrained(*args, **kwargs)


_set_pretrained_loader(_load_pretrained)

__all__ = [
    "__version__", "create_model", "list_models", "list_pretrained", "model_info", "resolve_name",
    "UnknownModelError", "NoPretrainedWeightsError", "LipzooUserError", "certify", "audit", "verify",
]

# public name -> the submodule that defines it (imported on first access)
_LAZY = {
    "create_model": "_factory", "list_models": "_factory", "list_pretrained": "_factory",
    "model_info": "_factory", "resolve_name": "_factory", "UnknownModelError": "_factory",
    "NoPretrainedWeightsError": "_factory",
    # plain functions, defined in modules named otherwise (lipzoo.certify is the function, never a module)
    "certify": "certification", "audit": "auditing", "verify": "verification",
}
_SUBMODULES = ("models", "layers", "hub", "train", "convert", "data", "cli", "reported", "certification",
               "auditing", "verification", "attack")


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'lipzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_SUBMODULES))


# ------------------------------------------------------------------------------- registration into timm
def _register_with_timm() -> None:
    """Import ``lipzoo.models``, which registers every architecture in timm's registry (idempotent)."""
    if "lipzoo.models" not in sys.modules:  # present (maybe half-imported): it registers itself
        importlib.import_module("lipzoo.models")


class _RegisterWhenTimmIsImported(importlib.abc.MetaPathFinder):
    """A one-shot import hook: after the module ``timm`` has executed, register lipzoo's architectures."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm":
            return None
        self.remove()
        spec = importlib.util.find_spec("timm")  # the real finder, now that this one is gone
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_with_timm()

        spec.loader.exec_module = exec_then_register
        return spec

    def remove(self) -> None:
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass


if "timm" in sys.modules:
    _register_with_timm()
elif not any(isinstance(f, _RegisterWhenTimmIsImported) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmIsImported())
