"""What the certifier accepts: images in [0, 1], integer labels, float32/float64, and the prepared model."""
from __future__ import annotations

import copy
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["IMAGE_RANGE_TOLERANCE", "PreparedModel", "as_images", "as_labels", "batches_from_tensors", "check_dtype",
           "check_images", "check_labels", "input_range_of", "to_model_input"]


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype`` if it is float32 or float64 (certificates are never computed in a reduced precision)."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"certify in float32 or float64, never {dtype}")
    return dtype


class PreparedModel:
    """The model in eval mode and in the certifying dtype (a cast copy when needed); restores train mode."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.orig, self.dtype = model, dtype
        params = [p for p in model.parameters() if p.is_floating_point()]
        if params and any(p.dtype != dtype for p in params):
            self.model = copy.deepcopy(model).to(dtype)
        else:
            self.model = model
        self.was_training = model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        if self.model is self.orig and self.was_training:
            self.orig.train()

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")


IMAGE_RANGE_TOLERANCE = 1e-6


def as_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Images as a float tensor: numpy arrays converted, uint8 (NCHW or NHWC) divided by 255."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not torch.is_tensor(images):
        raise TypeError(f"expected images as a tensor or numpy array, got {type(images).__name__}")
    if images.dtype == torch.uint8:
        if images.dim() == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)
        images = images.float().div(255)
    if not torch.is_floating_point(images):
        raise TypeError(f"expected float images in [0, 1] (or uint8 in [0, 255]), got {images.dtype}")
    return images


def check_images(images: torch.Tensor, input_range: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """Refuse what cannot be certified: a single image without its batch dimension, non-finite values, and values
    outside ``input_range`` (beyond :data:`IMAGE_RANGE_TOLERANCE`; a lipzoo model's ``input_range`` is [0, 1]:
    certificates are radii in [0, 1] pixel space and the model normalises its input itself; ``None`` accepts
    every finite input)."""
    if images.dim() == 3:
        raise ValueError(f"expected a batch of images (N, C, H, W), got one tensor of shape {tuple(images.shape)}; "
                         "pass images[None] to certify a single image")
    if images.dim() < 2:
        raise ValueError(f"expected a batch of inputs (N, ...), got shape {tuple(images.shape)}")
    if images.numel() == 0:
        return
    if not bool(torch.isfinite(images).all()):
        raise ValueError("the images contain NaN or inf values; certify finite images in [0, 1]")
    if input_range is None:
        return
    lo, hi = float(images.min()), float(images.max())
    if lo < input_range[0] - IMAGE_RANGE_TOLERANCE or hi > input_range[1] + IMAGE_RANGE_TOLERANCE:
        raise ValueError(
            f"images must be in [{input_range[0]:g}, {input_range[1]:g}], got values in [{lo:.4g}, {hi:.4g}]; divide "
            "0-255 images by 255 and do not normalise them (lipzoo models normalise their input themselves)")


def input_range_of(model: nn.Module) -> tuple[float, float] | None:
    """The inputs ``model``'s certificate covers (``model.input_range``, default [0, 1]; ``None``: any)."""
    return getattr(model, "input_range", (0.0, 1.0))


def as_labels(labels: Any, n: int) -> torch.Tensor:
    """``n`` integer class indices as an int64 CPU tensor; ``ValueError`` otherwise."""
    t = labels if torch.is_tensor(labels) else torch.as_tensor(np.asarray(labels))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got {t.dtype}")
    t = t.long().cpu()
    if t.dim() != 1 or len(t) != n:
        raise ValueError(f"expected {n} labels (one per image, shape ({n},)), got shape {tuple(t.shape)}")
    return t


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """``ValueError`` unless every label is a class index of a ``num_classes``-class model."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes - 1}] for this {num_classes}-class model, "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")


def batches_from_tensors(images: torch.Tensor, labels: torch.Tensor,
                         batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive ``(images, labels)`` batches of ``batch_size``."""
    for i in range(0, len(labels), batch_size):
        yield images[i:i + batch_size], labels[i:i + batch_size]


def to_model_input(x: torch.Tensor, model: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One batch, validated on its own device, then moved to the model's device and dtype (channels-last)."""
    x = as_images(x)
    check_images(x, input_range_of(model))
    x = x.to(device=device, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
