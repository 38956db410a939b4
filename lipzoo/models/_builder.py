"""Registration helpers: timm ``register_model`` + ``generate_default_cfgs`` with lipzoo metadata.

Every architecture is registered into **timm's** registry (so ``timm.create_model('sll_xs')`` works after
``import lipzoo``) and into lipzoo's own table of architectures (family, paper, notes) used by
``lipzoo.list_models`` / ``model_info``. Published weights (tags) come from ``lipzoo/hub/published.json``,
which ``lipzoo publish`` generates; it is never edited by hand.
"""
from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .._errors import LipzooUserError
from .._hooks import pretrained_loader

__all__ = ["ArchInfo", "ARCHS", "register", "default_cfgs_for", "build", "build_record", "published_weights",
           "PUBLISHED_JSON", "BUILD_RECORD_ATTR", "count_parameters", "resolve_name",
           "list_models", "list_pretrained", "pretrained_name", "UnknownModelError", "NoPretrainedWeightsError"]

# The attribute where :func:`build` records how a model was constructed (see :func:`build_record`).
BUILD_RECORD_ATTR = "lipzoo_build"

# ``LIPZOO_PUBLISHED_JSON`` points the registry at another file (tests, scratch publishing); read at import.
PUBLISHED_JSON = Path(os.environ.get("LIPZOO_PUBLISHED_JSON") or Path(__file__).resolve().parent.parent / "hub" / "published.json")


@dataclass
class ArchInfo:
    name: str
    family: str
    paper: str
    description: str = ""
    paper_params: float | None = None  # parameters reported by the paper (millions), where one exists
    paper_params_note: str = ""
    compact: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, ArchInfo] = {}


def published_weights() -> dict[str, dict[str, Any]]:
    """``{'arch.tag': {'hf_hub_id', 'revision', 'sha256', 'num_classes', 'dataset', ...}}`` of published weights."""
    if not PUBLISHED_JSON.exists():
        return {}
    return json.loads(PUBLISHED_JSON.read_text())


# What a lipzoo model expects as input, in timm's terms: images in [0, 1], so timm's transforms must not normalise
# (``resolve_data_config`` + ``create_transform`` then give exactly ``ToTensor()``'s [0, 1] tensor). The dataset
# normalisation happens inside the model (``model.normalize``), where the certificate accounts for it.
INPUT_MEAN = (0.0, 0.0, 0.0)
INPUT_STD = (1.0, 1.0, 1.0)


def _base_cfg(**kwargs) -> dict[str, Any]:
    cfg = dict(
        input_size=(3, 32, 32),
        fixed_input_size=True,
        crop_pct=1.0,
        interpolation="bilinear",
        num_classes=10,
        first_conv="",
        classifier="head",
        license="mit",
    )
    cfg.update(kwargs)
    cfg.update(mean=INPUT_MEAN, std=INPUT_STD)
    return cfg


def with_input_stats(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with ``mean``/``std`` of the model's input (:data:`INPUT_MEAN`, :data:`INPUT_STD`): also when the cfg
    came from a hub ``config.json`` written with the dataset's statistics."""
    return {**cfg, "mean": INPUT_MEAN, "std": INPUT_STD}


def default_cfgs_for(archs: list[str], **cfg_kwargs) -> dict:
    """timm ``default_cfgs`` for ``archs``: one tag per published weight, else an untagged cfg without weights.

    ``mean``/``std`` of a cfg describe the model's *input* for timm's data pipeline: lipzoo models take [0, 1]
    images and normalise inside the model, so every cfg has mean 0 and std 1 whatever the family passes (the
    dataset statistics a family hands in are the ones its model applies internally).
    """
    cfg_kwargs.pop("mean", None)
    cfg_kwargs.pop("std", None)
    published = published_weights()
    entries: dict[str, dict[str, Any]] = {}
    for arch in archs:
        tags = {k: v for k, v in published.items() if k.split(".", 1)[0] == arch}
        for full, meta in sorted(tags.items()):
            entries[full] = _base_cfg(
                hf_hub_id=meta["hf_hub_id"],
                num_classes=meta.get("num_classes", 10),
                **cfg_kwargs,
            )
        if not tags:
            entries[arch] = _base_cfg(**cfg_kwargs)
    return generate_default_cfgs(entries)


def register(info: ArchInfo) -> Callable[[Callable], Callable]:
    """Decorator: register an entrypoint in timm and record its :class:`ArchInfo`."""

    def deco(fn: Callable) -> Callable:
        if fn.__name__ != info.name:
            raise ValueError(f"entrypoint {fn.__name__} registered as {info.name}")
        ARCHS[info.name] = info
        return register_model(fn)

    return deco


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


# ------------------------------------------------------------------------------------ names and weights
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
