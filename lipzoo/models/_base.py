"""The base class of every lipzoo classifier: timm's model contract plus the certification contract."""
from __future__ import annotations

import torch
from torch import nn

from ..layers.base import in_certification_context, lipschitz_bound_of
from ..layers.heads import bound_covers_head, head_rule_of

__all__ = ["LipschitzClassifier", "HeadReplacementError"]


class HeadReplacementError(RuntimeError):
    pass


class LipschitzClassifier(nn.Module):
    """``logits = head(features(normalize(x)))`` for images ``x`` in [0, 1] (NCHW).

    Subclasses set ``self.normalize`` (an :class:`~lipzoo.layers.normalize.InputNormalize`), ``self.features``
    (an ``nn.Sequential`` of modules with proven bounds) and ``self.head``, plus ``num_classes`` and
    ``num_features``. :attr:`head_rule` is derived from the head (:func:`~lipzoo.layers.heads.head_rule_of`).

    * :meth:`lipschitz_bound` — proven l2 bound of ``x -> features`` (``"lln"``/``"mlp_curvature"`` heads) or of
      the whole network (``"lipschitz"`` head): the product of the parts' proven bounds, normalisation included.
    * The certifier reads ``head_rule`` and, for LLN/MLP heads, ``get_classifier()``.
    """

    family: str = ""
    # the inputs the certificate covers: images in [0, 1]; the certifier refuses anything else (None: any input)
    input_range: tuple[float, float] | None = (0.0, 1.0)
    num_classes: int
    num_features: int
    normalize: nn.Module
    features: nn.Module
    head: nn.Module

    @property
    def head_rule(self) -> str:
        """The certifier's rule for this model, named by its head: ``"lln"`` for an :class:`~lipzoo.layers.LLN`,
        ``"mlp_curvature"`` for an :class:`~lipzoo.layers.MLPHead`, ``"lipschitz"`` for any other head."""
        return head_rule_of(self._modules.get("head"))

    def _bounded_parts(self) -> list[tuple[str, nn.Module]]:
        """The top-level parts whose proven bounds multiply to :meth:`lipschitz_bound`, in order."""
        parts = [("normalize", self.normalize)]
        parts += [(f"features.{name}", m) for name, m in self.features.named_children()]
        if bound_covers_head(self.head_rule):
            parts.append(("head", self.head))
        return parts

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"expected float images in [0, 1], got dtype {x.dtype}; divide uint8 images by 255")
        return self.features(self.normalize(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return x.flatten(1)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, *args, allow_uncertified: bool = False, **kwargs) -> None:
        """Refused by default: a new head voids the certificate of a pretrained model.

        Pass ``allow_uncertified=True`` to rebuild the head (it is then untrained, but still 1-Lipschitz by
        construction, so the model can be fine-tuned and re-certified).
        """
        if not allow_uncertified:
            raise HeadReplacementError(
                "replacing the head of a lipzoo model voids its certificate; call "
                "reset_classifier(num_classes, allow_uncertified=True) if you mean it, then retrain and re-certify"
            )
        self.head = self._make_head(num_classes)
        self.num_classes = num_classes

    def _make_head(self, num_classes: int) -> nn.Module:  # pragma: no cover - per family
        raise NotImplementedError

    @in_certification_context
    def lipschitz_bound(self) -> float:
        bound = lipschitz_bound_of(self.normalize) * lipschitz_bound_of(self.features)
        if bound_covers_head(self.head_rule):
            bound *= lipschitz_bound_of(self.head)
        return bound

    @in_certification_context
    def layer_bounds(self) -> list[tuple[str, float]]:
        """(name, proven bound) of each top-level part, in order; used by the audit."""
        return [(name, lipschitz_bound_of(m)) for name, m in self._bounded_parts()]
