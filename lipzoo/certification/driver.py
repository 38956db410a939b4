"""The certifier's driver: certified radii and certified accuracy of a model on images, under its head rule.

A sample is certified at ``eps`` iff the prediction is correct and ``radius > eps`` (strict). Misclassified samples
get radius 0. Radii are computed by the model's :class:`~lipzoo.certification.rules.HeadRule` for ``L = 1`` and
divided by the proven bound of the map evaluated, ``model.lipschitz_bound()``. Certify in float64 with
``dtype=torch.float64`` (the model is copied and cast) for the tightest numbers.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .._numerics import certification_context
from .eps import DEFAULT_EPS
from .inputs import (PreparedModel, as_images, as_labels, batches_from_tensors, check_dtype, check_images,
                     check_labels, input_range_of, to_model_input)
from .margins import lowest_precision
from .result import CertificationResult
from .rules import HeadRule, rule_of

__all__ = ["certify", "certify_dataset", "certified_radius", "label_radii", "mlp_curvature_penalty"]


class _Radii:
    """Radii of the predictions of one model (one certify call): the rule's constants computed once.

    :meth:`__call__` returns radii for a 1-Lipschitz body (``L = 1``); the caller divides by the bound of the map
    actually evaluated. Everything kept lives on the CPU in float64, whatever the model's device.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.model, self.dtype = model, dtype
        self.rule: HeadRule = rule_of(model)
        self.state = self.rule.prepare(model)
        self.width = 0

    def num_classes(self) -> int:
        """The model's class count (``num_classes``, else the logits' width seen so far)."""
        return int(getattr(self.model, "num_classes", 0) or self.width)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(radius of the prediction for ``L = 1`` (float64, CPU), prediction, finite) for a batch.

        ``finite`` is False for samples with a non-finite logit or head input: their radius is 0.
        """
        logits, feats = self.rule.logits_and_features(self.model, x)
        self.width = int(logits.shape[1])
        z = logits.detach().double().cpu()
        f = None if feats is None else feats.detach().flatten(1).double().cpu()
        finite = torch.isfinite(z).all(dim=1)
        if f is not None:
            finite &= torch.isfinite(f).all(dim=1)
            f = torch.where(finite[:, None], f, torch.zeros_like(f))
        z = torch.where(finite[:, None], z, torch.zeros_like(z))
        pred = z.argmax(dim=1)
        # the slack of the lowest precision the forward used (a model that computes in bf16 gets bf16's slack)
        slack = self.rule.slack(z, f, lowest_precision(self.dtype, logits.dtype))
        r = self.rule.radii(self.state, z, f, pred, slack)
        r = torch.where(finite & ~torch.isnan(r), r, torch.zeros_like(r))
        return r, pred, finite


def _divide_by_bound(radii: torch.Tensor, bound: float) -> torch.Tensor:
    """Radii for ``L = 1`` divided by the proven bound; all 0 when the bound is not a positive finite number."""
    if not math.isfinite(bound) or bound <= 0:
        return torch.zeros_like(radii)
    return radii / bound


def _cat(parts: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=dtype)


def _run(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int | None,
         eps: Sequence[float], dtype: torch.dtype, progress: bool,
         lipschitz_bound: float | None) -> CertificationResult:
    dtype = check_dtype(dtype)
    eps = tuple(float(e) for e in eps)
    start = time.perf_counter()
    prep = PreparedModel(model, dtype)
    radii, preds, labs, finite = [], [], [], []
    # the bound is computed after the forwards, in the same scope: it is the bound of the map evaluated (the
    # input size and precision of the forward enter some layers' bounds, e.g. LOT's)
    with certification_context(), prep as m, torch.no_grad():
        radii_of = _Radii(m, dtype)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="certify", unit="img")
        for x, y in batches:
            x = to_model_input(x, m, prep.device, dtype)
            y = as_labels(y, len(x))
            r, p, ok = radii_of(x)
            check_labels(y, radii_of.num_classes())
            radii.append(r)
            preds.append(p)
            labs.append(y)
            finite.append(ok)
            if bar is not None:
                bar.update(len(p))
        if bar is not None:
            bar.close()
        bound = float(m.lipschitz_bound()) if lipschitz_bound is None else float(lipschitz_bound)
    if not math.isfinite(bound) or bound <= 0:
        warnings.warn(f"the model's Lipschitz bound is {bound}: nothing can be certified", RuntimeWarning, stacklevel=3)
    radii_t = _divide_by_bound(_cat(radii, torch.float64), bound)
    preds_t, labs_t = _cat(preds, torch.long), _cat(labs, torch.long)
    finite_t = _cat(finite, torch.bool)
    correct = (preds_t == labs_t) & finite_t  # a non-finite logit is never a correct prediction
    radii_t = torch.where(correct, radii_t, torch.zeros_like(radii_t))
    return CertificationResult(radii=radii_t, correct=correct, predictions=preds_t, labels=labs_t, eps=eps,
                               lipschitz_bound=bound, head_rule=radii_of.rule.name,
                               dtype=str(dtype).replace("torch.", ""), seconds=time.perf_counter() - start,
                               extra={"non_finite": int((~finite_t).sum())})


def certify(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int],
    eps: Sequence[float] = DEFAULT_EPS,
    batch_size: int = 500,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    lipschitz_bound: float | None = None,
) -> CertificationResult:
    """Certify ``model`` on ``images`` (N, C, H, W) in [0, 1] (uint8 is divided by 255) with ``labels``.

    Runs in eval mode without autograd, channels-last, in ``dtype`` (float32 or float64; a cast copy of the
    model is used when its parameters have another dtype), on the model's device (batches are moved there), in
    :func:`lipzoo._numerics.certification_context`: autocast off, IEEE float32 matmuls and convolutions (no
    TF32), the caller's settings restored, every parametrisation and bound recomputed from the current
    parameters. ``lipschitz_bound`` overrides ``model.lipschitz_bound()`` (only for models that do not state
    one). The model's train/eval mode is restored.

    Raises ``ValueError`` for images outside [0, 1], non-finite images, a single image without a batch
    dimension, and labels that are not class indices of the model. A sample whose logits are not finite is
    never counted correct or certified (``result.extra["non_finite"]`` counts them).
    """
    images = as_images(images)
    check_images(images, input_range_of(model))
    labels = as_labels(labels, len(images))
    return _run(model, batches_from_tensors(images, labels, batch_size), len(labels), eps, dtype, progress,
                lipschitz_bound)


def certify_dataset(
    model: nn.Module,
    dataset_or_loader: Any,
    eps: Sequence[float] = DEFAULT_EPS,
    batch_size: int = 500,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    indices: np.ndarray | Sequence[int] | None = None,
) -> CertificationResult:
    """Certify on a dataset: a :class:`lipzoo.data.CIFAR` (uses ``.tensors(indices)``), any map-style dataset of
    ``(image, label)``, a ``DataLoader`` yielding ``(images, labels)`` batches, or an ``(images, labels)`` tuple."""
    obj = dataset_or_loader
    if isinstance(obj, tuple) and len(obj) == 2:
        images, labels = obj
        if indices is not None:
            images, labels = images[indices], labels[indices]
        return certify(model, images, labels, eps, batch_size, dtype, progress)
    if callable(getattr(obj, "tensors", None)):
        images, labels = obj.tensors(None if indices is None else np.asarray(indices))
        return certify(model, images, labels, eps, batch_size, dtype, progress)
    if isinstance(obj, torch.utils.data.DataLoader):
        if indices is not None:
            raise ValueError("indices cannot be combined with a DataLoader; subset the dataset instead")
        total = len(obj.dataset) if hasattr(obj.dataset, "__len__") else None
        return _run(model, iter(obj), total, eps, dtype, progress, None)
    if indices is not None:
        obj = torch.utils.data.Subset(obj, list(indices))
    loader = torch.utils.data.DataLoader(obj, batch_size=batch_size, shuffle=False)
    return _run(model, iter(loader), len(obj), eps, dtype, progress, None)


def certified_radius(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None,
                     return_predictions: bool = False, lipschitz_bound: float | None = None,
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Certified l2 radius (float64, pixel space, CPU) of the model's *prediction* for each image of ``x`` (no
    labels needed; misclassification is not known here). ``dtype`` defaults to float32; ``lipschitz_bound``
    defaults to ``model.lipschitz_bound()`` (pass it to avoid recomputing an expensive bound). Same context and
    input checks as :func:`certify`; a sample with non-finite logits gets radius 0."""
    dtype = check_dtype(dtype or torch.float32)
    prep = PreparedModel(model, dtype)
    with certification_context(), prep as m, torch.no_grad():
        r, p, _ = _Radii(m, dtype)(to_model_input(x, m, prep.device, dtype))
        bound = float(m.lipschitz_bound()) if lipschitz_bound is None else float(lipschitz_bound)
    r = _divide_by_bound(r, bound)
    return (r, p) if return_predictions else r


def label_radii(model: nn.Module, logits: torch.Tensor, labels: torch.Tensor, features: torch.Tensor | None = None,
                lipschitz: float = 1.0) -> torch.Tensor:
    """Differentiable certified radius of the *label* class under the model's head rule, divided by
    ``lipschitz`` (the body's bound, or the whole network's for ``"lipschitz"``). ``<= 0`` when the label is not
    the prediction. The MLP rule needs ``features`` and uses the curvature *estimate* (a training signal, not a
    certificate). No rounding slack: use :func:`certify` for certificates."""
    return rule_of(model).margins(model, logits, labels, features) / lipschitz


def mlp_curvature_penalty(model: nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """``mean_n mean_{j != y_n} K[y_n, j]`` with the differentiable curvature estimate (the improved-techniques
    curvature regulariser); 0 for models whose head rule is not ``"mlp_curvature"``."""
    return rule_of(model).penalty(model, labels)
