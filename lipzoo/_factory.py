"""The factory (timm's ``_factory``): ``create_model`` and ``model_info``; the names come from the registry
(:mod:`lipzoo.models._registry`). ``create_model`` builds the model, then the hub loads published weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from .models._builder import count_parameters
from .models._registry import (
    ARCHS, NoPretrainedWeightsError, UnknownModelError, _split, list_models, list_pretrained, pretrained_name,
    resolve_name,
)

__all__ = ["create_model", "list_models", "list_pretrained", "model_info", "resolve_name", "UnknownModelError",
           "NoPretrainedWeightsError"]


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
            ``checkpoint_format`` one of the authors' formats the families declare (``'sll'``, ``'lbdn'``, ``'soc'``,
            ...: ``lipzoo.convert.CHECKPOINT_FORMATS``), loaded with ``torch.load(weights_only=True)`` only.
        **kwargs: model arguments (``num_classes`` ...), forwarded to ``timm.create_model``.
    """
    if name.startswith(("hf-hub:", "local-dir:")):
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    full = resolve_name(name)
    if pretrained:
        full = pretrained_name(full)
    model = timm.create_model(full, pretrained=pretrained, **kwargs)
    if checkpoint_path is not None:
        from .convert import load_checkpoint

        load_checkpoint(model, checkpoint_path, checkpoint_format)
    return model


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
        "measured_training": dict(info.measured_training) if info.measured_training else None,
        **info.extra,
    }
