"""The "KW-Large" convolutional network of Trockman & Kolter (ICLR 2021, locuslab/orthogonal-convolutions
``models.py``: ``KWLarge``), shared by the Cayley and BCOP families (the paper trains it with each layer type).

``[0,1] image -> subtract the CIFAR mean (std 1, as the authors' certified runs: Normalize(mu, 1.0)) ->
conv(3, c1, 3) -> GS -> conv(c1, c1, 3, stride 2) -> GS -> conv(c1, c2, 3) -> GS -> conv(c2, c2, 3, stride 2) -> GS
-> flatten (c2 * (side/4)^2) -> linear(d1) -> GS -> linear(d2) -> GS -> head linear(classes)``, where GS is GroupSort
with group size 2 pairing channel i with i + C/2 (:class:`~lipzoo.layers.activations.MaxMin` ``"halves"``). The paper's
KWLarge is ``c1 = 32 w``, ``c2 = 64 w``, ``d1 = 512 w``, ``d2 = 512`` with width factor ``w = 1``. Stride 2 is the
authors' emulated striding (space-to-depth, then kernel 3 -> 1). The head is the family's orthogonal linear layer, so
the certificate uses the Lipschitz head rule with the product of the proven per-layer bounds.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..layers.activations import MaxMin
from ..layers.normalize import CIFAR10_MEAN, CIFAR100_MEAN, InputNormalize
from ._base import LipschitzClassifier

__all__ = ["KWLargeNet"]


class KWLargeNet(LipschitzClassifier):
    """KW-Large skeleton; subclasses set ``family`` and implement :meth:`make_conv` and :meth:`make_linear`.

    Args:
        channels: ``(c1, c2)`` conv widths (paper: ``(32 w, 64 w)``).
        dense: ``(d1, d2)`` hidden dense widths (paper: ``(512 w, 512)``).
        num_classes: logits.
        input_size: image side (divisible by 4); the layers state their bounds for it.
        mean: input mean subtracted inside the model (default: CIFAR-10's, CIFAR-100's for 100 classes); std is 1.
        layer_kwargs: passed to every conv and linear layer of the family.
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64),
        dense: Sequence[int] = (512, 512),
        num_classes: int = 10,
        input_size: int = 32,
        mean: Sequence[float] | None = None,
        layer_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for {type(self).__name__}: {sorted(kwargs)}")
        c1, c2 = (int(c) for c in channels)
        d1, d2 = (int(d) for d in dense)
        if input_size % 4:
            raise ValueError(f"{type(self).__name__} needs an input side divisible by 4, got {input_size}")
        for c in (c1, c2, d1, d2):
            if c % 2:
                raise ValueError(f"GroupSort needs even widths, got channels={channels}, dense={dense}")
        self.num_classes = num_classes
        self._layer_kwargs = dict(layer_kwargs or {})
        mean = tuple(mean) if mean is not None else (CIFAR100_MEAN if num_classes == 100 else CIFAR10_MEAN)
        self.normalize = InputNormalize(mean, (1.0, 1.0, 1.0))
        s = input_size
        self.num_features = d2
        self.features = nn.Sequential(
            self.make_conv(3, c1, 3, 1, s), MaxMin("halves"),
            self.make_conv(c1, c1, 3, 2, s), MaxMin("halves"),
            self.make_conv(c1, c2, 3, 1, s // 2), MaxMin("halves"),
            self.make_conv(c2, c2, 3, 2, s // 2), MaxMin("halves"),
            nn.Flatten(),
            self.make_linear(c2 * (s // 4) ** 2, d1), MaxMin("halves"),
            self.make_linear(d1, d2), MaxMin("halves"),
        )
        self.head = self._make_head(num_classes)

    def make_conv(self, c_in: int, c_out: int, kernel_size: int, stride: int, input_size: int) -> nn.Module:
        raise NotImplementedError  # pragma: no cover - per family

    def make_linear(self, in_features: int, out_features: int) -> nn.Module:
        raise NotImplementedError  # pragma: no cover - per family

    def _make_head(self, num_classes: int) -> nn.Module:
        return self.make_linear(self.num_features, num_classes)
