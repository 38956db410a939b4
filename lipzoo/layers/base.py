"""Contracts shared by every 1-Lipschitz building block.

* :class:`LipschitzModule` — a module that states a *proven* upper bound of its l2 Lipschitz constant
  (``lipschitz_bound()``), computed from its current weights in float64.
* :class:`ParametrizationCache` — eval-time cache of a weight parametrisation (orthogonalised kernel, SLL
  rescaling, FFT shift matrices ...). The cache key covers every parameter and buffer (storage pointer and
  version counter, i.e. any in-place change, ``load_state_dict`` or ``.to()``), the dtype/device, every plain
  attribute of the module (``scale``, iteration counts, ``eps``, the last input size and dtype ...) and an
  extra key given by the layer (e.g. the input's spatial size). ``train()`` and ``load_state_dict`` clear it
  as well (``eval()`` keeps it). In training mode nothing is cached, so gradients flow to the parameters; in
  eval mode the cached value is computed without autograd (gradients still flow to the *input*, as the audit
  needs). Writes through ``.data`` change no key: inside :func:`lipzoo._numerics.certification_context`
  (every certificate, ``lipschitz_bound()``, audit and verification) each cache recomputes once from the
  current parameters before it is reused, so a proof never rests on a cached value.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Hashable

import torch
from torch import nn

import torch.nn.functional as F

from .._numerics import (
    activation_dtype, certification_context, current_cache_scope, float_rounding_slack, spectral_norm_bound,
)

__all__ = ["LipschitzModule", "ParametrizationCache", "RealisedMatrixLinear", "float_rounding_slack",
           "lipschitz_bound_of"]

# ``float_rounding_slack`` (from ``lipzoo._numerics``) is the relative slack added to bounds that are exact in real
# arithmetic (orthogonal maps, SLL rescaling): the bound is stated in float64 plus this slack per layer, so
# that "1 up to float error" is explicit.


def in_certification_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` in :func:`~lipzoo._numerics.certification_context` (IEEE float32, no autocast, fresh caches)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with certification_context():
            return fn(*args, **kwargs)

    wrapper.__lipzoo_certification_context__ = True  # type: ignore[attr-defined]
    return wrapper


class LipschitzModule(nn.Module):
    """Base class: a module with a proven l2 Lipschitz bound.

    Subclasses implement :meth:`lipschitz_bound`. It must be an *upper* bound of
    ``sup ||f(x) - f(y)||_2 / ||x - y||_2`` over all inputs of the module's domain (all real tensors unless
    the docstring says otherwise), computed from the current weights, never estimated from below.
    """

    def lipschitz_bound(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # every subclass's bound is computed in the certification context, whoever calls it
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("lipschitz_bound")
        if callable(fn) and not getattr(fn, "__lipzoo_certification_context__", False):
            cls.lipschitz_bound = in_certification_context(fn)

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
        self._scope: int | None = None

    def clear(self) -> None:
        self._key = None
        self._value = None
        self._scope = None

    def _state_key(self, extra: Hashable) -> Hashable:
        m = self._module_ref
        tensors = list(m.parameters(recurse=False)) + [b for b in m.buffers(recurse=False) if b is not None]
        return (
            tuple((t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape)) for t in tensors),
            _plain_attributes(m),
            extra,
        )

    def get(self, compute: Callable[[], Any], extra: Hashable = None) -> Any:
        """Return ``compute()``; cached across calls in eval mode for an unchanged state and ``extra`` key, and
        recomputed once on first use inside each certification scope."""
        m = self._module_ref
        if m.training:
            self.clear()
            return compute()
        key, scope = self._state_key(extra), current_cache_scope()
        if self._key != key or self._value is None or (scope is not None and self._scope != scope):
            with torch.no_grad():
                value = compute()
            self._key, self._value, self._scope = key, value, scope
        return self._value


class RealisedMatrixLinear(LipschitzModule):
    """``y = W x + b`` with ``W = _compute_matrix()`` realised from the parameters (cached in eval mode) and a bound
    measured on that realised matrix (:func:`~lipzoo._numerics.spectral_norm_bound`, float64 plus rounding slack):
    the families whose dense layer is orthogonal by construction or by iteration state no bound they do not
    measure. Subclasses set ``weight``, ``bias`` (or ``None``), ``in_features``, ``out_features`` and implement
    ``_compute_matrix``. Inputs ``(N, ...)`` are flattened."""

    def __init__(self) -> None:
        super().__init__()
        self._cache = ParametrizationCache(self)
        self._bound_cache = ParametrizationCache(self)

    def _compute_matrix(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matrix(self) -> torch.Tensor:
        """The realised ``(out, in)`` matrix of the forward pass (cached in eval mode)."""
        return self._cache.get(self._compute_matrix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.matrix()
        x = x.flatten(1)
        dt = activation_dtype(x, w.dtype)
        return F.linear(x.to(dt), w.to(dt), None if self.bias is None else self.bias.to(dt))

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        return self._bound_cache.get(lambda: spectral_norm_bound(self.matrix()))


_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def _plain_attributes(module: nn.Module) -> tuple:
    """``(name, value)`` of the module's plain-valued attributes (numbers, strings, dtypes, tuples of them):
    everything besides tensors that can enter a parametrisation (``scale``, iteration counts, ``eps``, sizes)."""
    def plain(v: Any) -> bool:
        return isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(plain(e) for e in v))

    return tuple(sorted((k, v) for k, v in vars(module).items() if k != "training" and plain(v)))


def lipschitz_bound_of(module: nn.Module) -> float:
    """Bound of a module: its own ``lipschitz_bound()`` or 1.0 for known parameter-free 1-Lipschitz maps."""
    fn = getattr(module, "lipschitz_bound", None)
    if callable(fn):
        with certification_context():
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
