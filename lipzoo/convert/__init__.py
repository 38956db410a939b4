"""Authors' checkpoints and reference modules -> lipzoo modules.

* :func:`from_reference` builds the lipzoo equivalent of one of the authors' modules from a fixture sidecar
  (``spec``: repo, class, constructor arguments) and the authors' state dict (their key names).
* :func:`load_checkpoint` loads a checkpoint file into a lipzoo model: a lipzoo ``.safetensors`` state dict, or
  a file saved by a paper's code (``checkpoint_format``), read with ``torch.load(weights_only=True)`` only.

Each family registers a converter module ``lipzoo.convert._<family>`` with
``from_reference(spec, state) -> nn.Module`` and ``convert_state_dict(state, fmt, model) -> dict``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["from_reference", "load_checkpoint", "CHECKPOINT_FORMATS", "ConversionError"]

# checkpoint_format -> converter module
CHECKPOINT_FORMATS = {
    "sll": "_sll", "sll-legacy": "_sll",
    "lbdn": "_sandwich",
    "soc": "_soc", "soc-improved": "_soc",
    "lot": "_lot",
}
# fixture/spec family -> converter module
_FAMILY_MODULES = {"sll": "_sll", "sandwich": "_sandwich", "soc": "_soc", "improved": "_soc", "lot": "_lot"}


class ConversionError(ValueError):
    pass


def _converter(module_name: str):
    return importlib.import_module(f"{__name__}.{module_name}")


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The lipzoo module equivalent to the authors' ``spec['class']`` built with ``spec['constructor']``,
    with ``state`` (authors' key names) loaded, in the state's dtype."""
    family = spec.get("family")
    if family not in _FAMILY_MODULES:
        raise ConversionError(f"no converter for family {family!r} (known: {sorted(_FAMILY_MODULES)})")
    return _converter(_FAMILY_MODULES[family]).from_reference(spec, state)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConversionError(
            f"{path} could not be loaded with torch.load(weights_only=True) ({type(e).__name__}: {e}). lipzoo never "
            "unpickles arbitrary objects; re-save the checkpoint as a plain state dict or as .safetensors"
        ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"{path} does not hold a state dict of tensors")
    return obj


def load_checkpoint(model: nn.Module, path: str | Path, checkpoint_format: str | None = None, strict: bool = True) -> nn.Module:
    """Load ``path`` into ``model`` (in place) and return it.

    ``checkpoint_format=None``: a lipzoo state dict (``.safetensors`` preferred). Otherwise one of
    :data:`CHECKPOINT_FORMATS`; the authors' key names and conventions are mapped by the family converter.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = _read_state(path)
    if checkpoint_format is not None:
        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ConversionError(f"unknown checkpoint_format {checkpoint_format!r}; one of {sorted(CHECKPOINT_FORMATS)}")
        state = _converter(CHECKPOINT_FORMATS[checkpoint_format]).convert_state_dict(state, checkpoint_format, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise ConversionError(
            f"checkpoint {path} does not match {type(model).__name__}: missing keys {missing[:8]}, unexpected "
            f"keys {unexpected[:8]}" + ("" if checkpoint_format else "; pass checkpoint_format= for an authors' checkpoint")
        )
    return model
