"""Loading the reference cases recorded from the papers' own code (``../shared/fixtures/reference/``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_reference_case(path: Path, upcast: bool = False) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(spec, state, tensors)`` of the case ``<path>.json`` + ``<path>.safetensors``: the sidecar, the module's
    state dict (the ``state.`` entries) and every recorded tensor. ``upcast`` returns a state stored in float32
    (``spec['state_storage_dtype']``) in float64, the precision the case was run in."""
    path = Path(path)
    spec = json.loads(path.with_suffix(".json").read_text())
    tensors = load_file(str(path.with_suffix(".safetensors")))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    if upcast and spec.get("state_storage_dtype") == "float32":
        state = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    return spec, state, tensors
