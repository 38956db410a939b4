"""Contracts shared by every 1-Lipschitz building block.

* :class:`LipschitzModule` — a module that states a *proven* upper bound of its l2 Lipschitz constant
  (``lipschitz_bound()``), computed from its current weights in float64.
* :class:`ParametrizationCache` — eval-time cache of a weight parametrisation (orthogonalised kernel, SLL
  rescaling, FFT shift matrices ...). The cache key covers every parameter and buffer (storage pointer and
  version counter, i.e. any in-place change, ``load_state_dict`` or ``.to()``), the dtype/device and an
  extra key given by the layer (e.g. the input's spatial size). ``train()`` and ``load_state_dict`` clear it
  as well (``eval()`` keeps it). In training mode nothing is cached, so gradients flow to the parameters; in
  eval mode the cached value is computed without autograd (gradients still flow to the *input*, as the audit
  needs).
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import torch
from torch import nn

__all__ = ["LipschitzModule", "ParametrizationCache", "float_rounding_slack", "lipschitz_bound_of"]

# Relative slack added to bounds that are exact in real arithmetic (orthogonal maps, SLL rescaling):
# float32 evaluation of a d-term dot product has relative error <= d * 2^-24 (Higham, Thm 3.5); we state
# the bound in float64 and add this slack per layer so that "1 up to float error" is explicit.
def float_rounding_slack(inner_dim: int, dtype: torch.dtype = torch.float32) -> float:
    """Upper bound on the relative rounding error of a length-``inner_dim`` dot product in ``dtype``."""
    u = torch.finfo(dtype).eps / 2
    n = max(int(inner_dim), 1)
    return n * u / max(1.0 - n * u, 1e-12)


class LipschitzModule(nn.Module):
    """Base class: a module with a proven l2 Lipschitz bound.

    Subclasses implement :meth:`lipschitz_bound`. It must be an *upper* bound of
    ``sup ||f(x) - f(y)||_2 / ||x - y||_2`` over all inputs of the module's domain (all real tensors unless
    the docstring says otherwise), computed from the current weights, never estimated from below.
    """

    def lipschitz_bound(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    # Cache invalidation hooks: any ParametrizationCache attribute is cleared on train(True)/load/_apply.
    # eval() keeps a cache: its key still detects any change of the weights, so a model switched to eval
    # twice (e.g. by the audit) does not recompute an expensive parametrisation.
    def _lipzoo_clear_caches(self) -> None:
        for value in self.__dict__.values():
            if isinstance(value, ParametrizationCache):
                value.clear()

    def train(self, mode: bool = True):
        if mode:
            self._lipzoo_clear_caches()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._lipzoo_clear_caches()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._lipzoo_clear_caches()
        return super()._load_from_state_dict(*args, **kwargs)


class ParametrizationCache:
    """Caches ``compute()`` in eval mode; recomputes whenever anything it depends on may have changed."""

    def __init__(self, module: nn.Module):
        # keep a plain attribute (not a submodule); the module owns us
        self._module_ref = module
        self._key: Hashable | None = None
        self._value: Any = None

    def clear(self) -> None:
        self._key = None
        self._value = None

    def _state_key(self, extra: Hashable) -> Hashable:
        m = self._module_ref
        tensors = list(m.parameters(recurse=False)) + [b for b in m.buffers(recurse=False) if b is not None]
        return (
            tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors),
            extra,
        )

    def get(self, compute: Callable[[], Any], extra: Hashable = None) -> Any:
        """Return ``compute()``; cached across calls in eval mode for an unchanged state and ``extra`` key."""
        m = self._module_ref
        if m.training:
            self.clear()
            return compute()
        key = self._state_key(extra)
        if self._key != key or self._value is None:
            with torch.no_grad():
                value = compute()
            self._key, self._value = key, value
        return self._value


def lipschitz_bound_of(module: nn.Module) -> float:
    """Bound of a module: its own ``lipschitz_bound()`` or 1.0 for known parameter-free 1-Lipschitz maps."""
    fn = getattr(module, "lipschitz_bound", None)
    if callable(fn):
        return float(fn())
    if isinstance(module, (nn.Identity, nn.Flatten, nn.ReLU, nn.PixelUnshuffle, nn.Dropout)):
        return 1.0
    if isinstance(module, nn.Sequential):
        out = 1.0
        for child in module:
            out *= lipschitz_bound_of(child)
        return out
    raise TypeError(
        f"{type(module).__name__} states no Lipschitz bound; wrap it in a LipschitzModule or remove it"
    )
