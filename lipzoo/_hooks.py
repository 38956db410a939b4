"""Hooks that let a lower floor call into a higher one without importing it (the ground floor: no imports).

The models' builder loads published weights through :func:`pretrained_loader`; the package root installs a
loader that imports the hub on first use. So ``models`` never imports ``hub``, and ``timm.create_model(...,
pretrained=True)`` works in any import order.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["set_pretrained_loader", "pretrained_loader"]

PretrainedLoader = Callable[..., Any]
_PRETRAINED_LOADER: PretrainedLoader | None = None


def set_pretrained_loader(loader: PretrainedLoader) -> None:
    """Install ``loader(model, pretrained_cfg, verify=, revision=, cache_dir=)``."""
    global _PRETRAINED_LOADER
    _PRETRAINED_LOADER = loader


def pretrained_loader() -> PretrainedLoader:
    if _PRETRAINED_LOADER is None:
        raise RuntimeError("no loader of published weights is installed: import lipzoo first")
    return _PRETRAINED_LOADER
