"""Public registry API: ``create_model``, ``list_models``, ``list_pretrained``, ``model_info``."""
from __future__ import annotations

import difflib
import fnmatch
import re
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ._errors import LipzooUserError
from .models._builder import ARCHS, published_weights

__all__ = ["create_model", "list_models", "list_pretrained", "model_info", "resolve_name", "UnknownModelError",
           "NoPretrainedWeightsError"]


class UnknownModelError(LipzooUserError, ValueError):
    pass


class NoPretrainedWeightsError(LipzooUserError, ValueError):
    pass


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


def _pretrained_tag(name: str) -> str:
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


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | Path | None = None,
    checkpoint_format: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a lipzoo model, timm-style.

    Args:
        name: architecture (``'sll_xs'``, alias ``'sll-xs'``) or ``arch.tag`` of published weights.
        pretrained: download (``huggingface_hub``), sha256-check and, on first download, verify the weights.
            Extra keywords: ``verify`` (``'full'|'quick'|False``), ``revision``, ``cache_dir``.
        checkpoint_path: a local checkpoint to load after construction: a lipzoo ``.safetensors`` file, or with
            ``checkpoint_format`` one of the authors' formats (``'sll'``, ``'sll-legacy'``, ``'lbdn'``, ``'soc'``,
            ``'soc-improved'``, ``'lot'``), loaded with ``torch.load(weights_only=True)`` only.
        **kwargs: model arguments (``num_classes`` ...), forwarded to ``timm.create_model``.
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    full = resolve_name(name)
    if pretrained:
        full = _pretrained_tag(full)
    model = timm.create_model(full, pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        from .convert import load_checkpoint

        load_checkpoint(model, checkpoint_path, checkpoint_format)
    return model


def _measured() -> dict[str, Any]:
    """Epoch times measured by ``scripts/bench.py models`` (``lipzoo/measured.json``)."""
    import json

    path = Path(__file__).resolve().parent / "measured.json"
    return json.loads(path.read_text()) if path.exists() else {}


def count_parameters(model: nn.Module) -> int:
    """Counting rule: every tensor in ``model.parameters()`` (trainable or not), no buffers."""
    return sum(p.numel() for p in model.parameters())


def model_info(name: str, num_classes: int = 10) -> dict[str, Any]:
    """Family, paper, parameter count, input size, head rule, published tags and notes of an architecture."""
    full = resolve_name(name)
    arch, _ = _split(full)
    info = ARCHS[arch]
    with torch.device("meta"):
        try:
            model = timm.create_model(arch, num_classes=num_classes)
        except Exception:  # constructors that need real tensors (e.g. init-time power iterations)
            model = None
    if model is None:
        model = timm.create_model(arch, num_classes=num_classes)
    cfg = model.pretrained_cfg
    return {
        "name": arch,
        "family": info.family,
        "paper": info.paper,
        "description": info.description,
        "num_classes": num_classes,
        "params": count_parameters(model),
        "paper_params_millions": info.paper_params,
        "paper_params_note": info.paper_params_note,
        "input_size": tuple(cfg.get("input_size", (3, 32, 32))),
        "head_rule": getattr(model, "head_rule", None),
        "input_std": getattr(getattr(model, "normalize", None), "std", torch.ones(1)).flatten().tolist()
        if getattr(model, "normalize", None) is not None and model.normalize.std.device.type != "meta" else None,
        "compact": info.compact,
        "pretrained_tags": [k for k in list_pretrained(arch)],
        "measured_training": _measured().get(arch),
        **info.extra,
    }
