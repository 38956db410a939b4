"""The builder (timm's ``_builder``): construct a registered architecture, its pretrained cfgs, its parameter count.

* :func:`build` calls timm's ``build_model_with_cfg`` without timm's weight loading, records how the model was
  constructed (:func:`build_record`) and then asks the installed loader (:mod:`lipzoo._hooks`) for published weights:
  the models floor never imports the hub.
* :func:`default_cfgs_for` gives timm ``default_cfgs`` with one tag per published weight, read through
  :mod:`lipzoo._manifest` (``published.json``) when a family registers.

The registry of names (:mod:`lipzoo.models._registry`) sits above this module and uses it; nothing here imports it.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from timm.models import build_model_with_cfg, generate_default_cfgs

from .. import _manifest
from .._hooks import pretrained_loader

__all__ = ["build", "build_record", "default_cfgs_for", "count_parameters", "with_input_stats", "BUILD_RECORD_ATTR",
           "INPUT_MEAN", "INPUT_STD"]

# The attribute where :func:`build` records how a model was constructed (see :func:`build_record`).
BUILD_RECORD_ATTR = "lipzoo_build"

# What a lipzoo model expects as input, in timm's terms: images in [0, 1], so timm's transforms must not normalise
# (``resolve_data_config`` + ``create_transform`` then give exactly ``ToTensor()``'s [0, 1] tensor). The dataset
# normalisation happens inside the model (``model.normalize``), where the certificate accounts for it.
INPUT_MEAN = (0.0, 0.0, 0.0)
INPUT_STD = (1.0, 1.0, 1.0)


def _base_cfg(**kwargs: Any) -> dict[str, Any]:
    cfg = dict(input_size=(3, 32, 32), fixed_input_size=True, crop_pct=1.0, interpolation="bilinear",
               num_classes=10, first_conv="", classifier="head", license="mit")
    cfg.update(kwargs)
    cfg.update(mean=INPUT_MEAN, std=INPUT_STD)
    return cfg


def with_input_stats(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``mean``/``std`` of the model's input (:data:`INPUT_MEAN`, :data:`INPUT_STD`): also when the cfg
    came from a hub ``config.json`` written with the dataset's statistics."""
    return {**cfg, "mean": INPUT_MEAN, "std": INPUT_STD}


def default_cfgs_for(archs: Iterable[str]) -> dict:
    """timm ``default_cfgs`` for ``archs``: one ``arch.tag`` cfg per published weight (``hf_hub_id``, ``num_classes``
    from the manifest), else one untagged cfg without weights.

    ``mean``/``std`` of a cfg describe the model's *input* for timm's data pipeline: lipzoo models take [0, 1] images
    and normalise inside the model, so every cfg has mean 0 and std 1.
    """
    published = _manifest.read()
    entries: dict[str, dict[str, Any]] = {}
    for arch in archs:
        tags = {k: v for k, v in published.items() if k.split(".", 1)[0] == arch}
        for full, meta in sorted(tags.items()):
            entries[full] = _base_cfg(hf_hub_id=meta["hf_hub_id"], num_classes=meta.get("num_classes", 10))
        if not tags:
            entries[arch] = _base_cfg()
    return generate_default_cfgs(entries)


def build_record(model) -> dict[str, Any] | None:
    """How :func:`build` constructed ``model``: ``{'architecture': variant, 'constructor': 'module.Class',
    'model_args': {the exact keyword arguments the class received}}``; ``None`` for a model built otherwise.

    Together with the weights this defines the function a checkpoint computes; the verification cache is keyed on
    it. It describes the model as built, not later changes to its attributes."""
    record = getattr(model, BUILD_RECORD_ATTR, None)
    return dict(record) if isinstance(record, dict) else None


def _recording(model_cls: type, received: dict[str, Any]) -> Callable[..., Any]:
    """A constructor that calls ``model_cls`` and copies the keyword arguments it got into ``received``."""

    def construct(**kwargs):
        received.update(kwargs)
        return model_cls(**kwargs)

    return construct


def build(model_cls: type, variant: str, pretrained: bool = False, **kwargs):
    """timm ``build_model_with_cfg`` without timm's weight loading; lipzoo loads and verifies weights itself.

    The model records its architecture and the exact constructor arguments (:func:`build_record`) before any
    pretrained weights are loaded."""
    verify = kwargs.pop("verify", None)
    revision = kwargs.pop("revision", None)
    cache_dir = kwargs.pop("cache_dir", None)
    in_chans = kwargs.pop("in_chans", 3)
    img_size = kwargs.pop("img_size", None)
    if in_chans != 3:
        raise ValueError(f"lipzoo models take RGB images (in_chans=3), got in_chans={in_chans}")
    if img_size not in (None, 32, (32, 32)):
        raise ValueError(f"lipzoo CIFAR models are built for 32x32 inputs, got img_size={img_size}")
    received: dict[str, Any] = {}
    model = build_model_with_cfg(_recording(model_cls, received), variant, pretrained=False,
                                 kwargs_filter=("in_chans", "img_size", "global_pool"), **kwargs)
    setattr(model, BUILD_RECORD_ATTR, {"architecture": variant,
                                       "constructor": f"{model_cls.__module__}.{model_cls.__qualname__}",
                                       "model_args": received})
    model.pretrained_cfg = model.default_cfg = with_input_stats(model.pretrained_cfg)
    if pretrained:
        # the models floor never imports the hub: the package root installs the loader (lipzoo._hooks)
        pretrained_loader()(model, model.pretrained_cfg, verify=verify, revision=revision, cache_dir=cache_dir)
    return model


def count_parameters(model) -> int:
    """Counting rule: every tensor in ``model.parameters()`` (trainable or not), no buffers."""
    return sum(p.numel() for p in model.parameters())
