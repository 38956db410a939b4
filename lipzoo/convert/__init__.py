"""Authors' checkpoints and reference modules -> lipzoo modules.

* :func:`from_reference` builds the lipzoo equivalent of one of the authors' modules from a fixture sidecar
  (``spec``: repo, class, constructor arguments) and the authors' state dict (their key names).
* :func:`load_checkpoint` loads a checkpoint file into a lipzoo model: a lipzoo ``.safetensors`` state dict, or
  a file saved by a paper's code (``checkpoint_format``), read with ``torch.load(weights_only=True)`` only (or a
  format's own reader that unpickles nothing: ``aol-tf`` reads ``.npz`` and Keras ``.h5``).

Each family declares its converter module (``lipzoo.convert._<family>``, with ``from_reference(spec, state) ->
nn.Module``, ``convert_state_dict(state, fmt, model) -> dict`` and optionally ``read_checkpoint(path, fmt) -> dict |
None`` for file forms other than safetensors / torch state dicts) and its checkpoint formats in its
``lipzoo/models/<family>.py`` declaration; nothing here lists families.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .._errors import LipzooUserError

if TYPE_CHECKING:  # torch is imported on use: the command line reads CHECKPOINT_FORMATS before it loads torch
    import torch
    from torch import nn

__all__ = ["from_reference", "load_checkpoint", "CHECKPOINT_FORMATS", "ConversionError"]

class _DeclaredFormats(Mapping[str, str]):
    """``checkpoint_format -> converter module`` (dotted path), as the families declare them
    (``Family.checkpoint_formats`` in ``lipzoo/models/<family>.py``). Read from the registry on first use, so the
    command line can build its parser without importing torch; iterates in sorted order."""

    def _formats(self) -> dict[str, str]:
        from ..models._registry import checkpoint_formats
        import lipzoo.models  # noqa: F401  (registers the families)

        return checkpoint_formats()

    def __getitem__(self, name: str) -> str:
        return self._formats()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._formats()))

    def __len__(self) -> int:
        return len(self._formats())

    def __repr__(self) -> str:
        return f"CHECKPOINT_FORMATS({dict(self)})"


CHECKPOINT_FORMATS: Mapping[str, str] = _DeclaredFormats()


def _reference_converter(family: str | None) -> str | None:
    """The converter of the authors' reference modules of ``family`` (a family name or one of its aliases)."""
    from ..models import FAMILIES

    for f in FAMILIES.values():
        if f.reference_converter and family in (f.name, *f.reference_aliases):
            return f.reference_converter
    return None


class ConversionError(LipzooUserError, ValueError):
    """A checkpoint that cannot be read, or that does not fit the model; the message names the file."""


def _converter(module_name: str):
    return importlib.import_module(module_name)


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The lipzoo module equivalent to the authors' ``spec['class']`` built with ``spec['constructor']``,
    with ``state`` (authors' key names) loaded, in the state's dtype."""
    family = spec.get("family")
    converter = _reference_converter(family)
    if converter is None:
        from ..models import FAMILIES

        known = sorted(n for f in FAMILIES.values() if f.reference_converter for n in (f.name, *f.reference_aliases))
        raise ConversionError(f"no converter for family {family!r} (known: {known})")
    return _converter(converter).from_reference(spec, state)


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (``None`` if its layout looks right): an 8-byte
    little-endian header length, a JSON header, then the tensor bytes the header's ``data_offsets`` describe."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"not a safetensors file ({size} bytes, shorter than a safetensors header)"
        n = int.from_bytes(head, "little")
        first = f.read(1)
        if first != b"{" or n > 100 * 2**20:
            return "not a safetensors file (no safetensors header at its start)"
        if 8 + n > size:
            return f"a truncated safetensors file (its header alone is {8 + n} bytes, the file has {size})"
        try:
            header = json.loads(first + f.read(n - 1))
        except ValueError:
            return "not a safetensors file (its header is not JSON)"
    ends = [int(v["data_offsets"][1]) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and len(v.get("data_offsets") or ()) == 2]
    if 8 + n + max(ends, default=0) > size:
        return f"a truncated safetensors file ({8 + n + max(ends)} bytes expected, the file has {size})"
    return None


def _looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100 * 2**20


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise ConversionError(f"checkpoint {path} is a folder without model.safetensors: pass the weights file")
        path = path / "model.safetensors"
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        problem = _safetensors_problem(path)
        if problem is not None:
            hint = ("copy or download it again" if "truncated" in problem else
                    "pass a lipzoo .safetensors state dict, or --checkpoint-format for an authors' checkpoint")
            raise ConversionError(f"checkpoint {path} is {problem}: {hint}")
        try:
            return load_file(str(path))
        except SafetensorError as e:
            raise ConversionError(f"checkpoint {path} is not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConversionError(
            f"checkpoint {path} could not be read with torch.load(weights_only=True) ({type(e).__name__}: {first}): "
            "it is truncated, not a checkpoint, or holds pickled objects, which lipzoo never unpickles; pass a "
            "lipzoo .safetensors file or a plain state dict"
        ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConversionError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj


def load_checkpoint(model: nn.Module, path: str | Path, checkpoint_format: str | None = None, strict: bool = True) -> nn.Module:
    """Load ``path`` into ``model`` (in place) and return it.

    ``checkpoint_format=None``: a lipzoo state dict (``.safetensors`` preferred). Otherwise one of
    :data:`CHECKPOINT_FORMATS`; the authors' key names and conventions are mapped by the family converter.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if checkpoint_format is not None and checkpoint_format not in CHECKPOINT_FORMATS:
        raise ConversionError(f"unknown checkpoint_format {checkpoint_format!r}; one of {sorted(CHECKPOINT_FORMATS)}")
    converter = _converter(CHECKPOINT_FORMATS[checkpoint_format]) if checkpoint_format is not None else None
    read = getattr(converter, "read_checkpoint", None)  # a format's own file forms (e.g. aol-tf: .npz, Keras .h5)
    state = read(path, checkpoint_format) if read is not None else None
    if state is None:
        state = _read_state(path)
    if converter is not None:
        state = converter.convert_state_dict(state, checkpoint_format, model)
    what = _describe(model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches: another class count or another width
        sizes = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        raise ConversionError(
            f"checkpoint {path} does not fit {what}: {sizes[0] if sizes else str(e).splitlines()[0]}"
            f"{f' (and {len(sizes) - 1} more)' if len(sizes) > 1 else ''}; it was trained for another architecture "
            "or number of classes (--dataset / num_classes)"
        ) from e
    if strict and (missing or unexpected):
        raise ConversionError(
            f"checkpoint {path} does not match {what}: missing keys {missing[:8]}, unexpected "
            f"keys {unexpected[:8]}" + ("" if checkpoint_format else "; pass checkpoint_format= for an authors' checkpoint")
        )
    return model


def _describe(model: nn.Module) -> str:
    """``'sll_xs (10 classes)'``: the architecture and class count a checkpoint must fit."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture") or type(model).__name__
    n = getattr(model, "num_classes", None)
    return f"{arch} ({n} classes)" if isinstance(n, int) else str(arch)
