"""lipzoo: pretrained, certifiably robust 1-Lipschitz CNNs (SOC, LOT, Sandwich, SLL).

>>> import lipzoo
>>> model = lipzoo.create_model('sll-xs')              # random weights
>>> lipzoo.list_models('sll*')
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import models  # noqa: F401  (registers every architecture into timm)
from ._registry import (
    NoPretrainedWeightsError,
    UnknownModelError,
    create_model,
    list_models,
    list_pretrained,
    model_info,
    resolve_name,
)

__all__ = [
    "__version__", "create_model", "list_models", "list_pretrained", "model_info", "resolve_name",
    "UnknownModelError", "NoPretrainedWeightsError",
]


def __getattr__(name: str):
    # certify / audit / verify are imported lazily (they pull in data and plotting code)
    if name == "certify":
        from .certify import certify
        return certify
    if name == "audit":
        from .audit import audit
        return audit
    if name == "verify":
        from .verify import verify
        return verify
    raise AttributeError(f"module 'lipzoo' has no attribute {name!r}")
