"""Helpers shared by the per-family converters: reading a reference sidecar and loading a state exactly."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["spec_parts", "load_exact"]


def spec_parts(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[str, list, dict, torch.dtype]:
    """``(class, args, kwargs, dtype)`` of a reference sidecar: the dtype the case ran in (float64 cases, else the
    state's own dtype)."""
    c = spec.get("constructor", {})
    dtype = torch.float64 if spec.get("dtype") == "float64" else next(iter(state.values())).dtype
    return spec["class"], list(c.get("args", [])), dict(c.get("kwargs", {})), dtype


def load_exact(module: nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> nn.Module:
    """``module`` in ``dtype`` with ``state`` (lipzoo key names) loaded strictly."""
    module = module.to(dtype)
    module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True)
    return module
