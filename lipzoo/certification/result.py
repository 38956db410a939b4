"""The result of a certification: per-sample radii, the derived accuracies and the claims record."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .eps import eps_label

__all__ = ["CERTIFIER_VERSION", "CertificationResult"]

CERTIFIER_VERSION = "1.0"


@dataclass
class CertificationResult:
    """Per-sample certified radii of the predictions and the derived accuracies.

    ``radii[i]`` is the certified l2 radius (pixel space, [0, 1] images) of the prediction, 0 when misclassified;
    a sample is certified at ``eps`` iff ``correct[i] and radii[i] > eps``.
    """

    radii: torch.Tensor  # float64 (N,)
    correct: torch.Tensor  # bool (N,)
    predictions: torch.Tensor  # int64 (N,)
    labels: torch.Tensor  # int64 (N,)
    eps: tuple[float, ...]
    lipschitz_bound: float
    head_rule: str
    dtype: str
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.radii.numel())

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.double().mean()) if self.n else float("nan")

    def certified_accuracy_at(self, eps: float) -> float:
        """Fraction of samples that are correct with ``radius > eps``."""
        if not self.n:
            return float("nan")
        return float((self.correct & (self.radii > eps)).double().mean())

    @property
    def certified_accuracy(self) -> dict[float, float]:
        return {float(e): self.certified_accuracy_at(e) for e in self.eps}

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": {eps_label(e): a for e, a in self.certified_accuracy.items()},
            "eps": {eps_label(e): float(e) for e in self.eps},
            "lipschitz_bound": self.lipschitz_bound,
            "head_rule": self.head_rule,
            "dtype": self.dtype,
            "certifier_version": CERTIFIER_VERSION,
            "seconds": self.seconds,
        }
        if samples:
            out["radii"] = self.radii.tolist()
            out["correct"] = self.correct.tolist()
            out["predictions"] = self.predictions.tolist()
        return out

    def to_json(self, path: str | Path | None = None, samples: bool = False) -> str:
        text = json.dumps(self.to_dict(samples=samples), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_claims(self, dataset: str = "cifar10", split: str = "test", subset: str = "full") -> dict[str, Any]:
        """The claims record (results.json, model cards, ``lipzoo.verify``)."""
        return {
            "dataset": dataset,
            "split": split,
            "subset": subset,
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "certified_accuracy": {eps_label(e): a for e, a in self.certified_accuracy.items()},
            "eps": {eps_label(e): float(e) for e in self.eps},
            "lipschitz_bound": float(self.lipschitz_bound),
            "head_rule": self.head_rule,
            "dtype": self.dtype,
            "certifier_version": CERTIFIER_VERSION,
        }

    def summary(self) -> str:
        lines = [f"n={self.n}  head_rule={self.head_rule}  L={self.lipschitz_bound:.7g}  dtype={self.dtype}  "
                 f"({self.seconds:.1f} s)",
                 f"{'eps':>10}  {'certified':>9}", f"{'clean':>10}  {100 * self.clean_accuracy:8.2f}%"]
        lines += [f"{eps_label(e):>10}  {100 * a:8.2f}%" for e, a in self.certified_accuracy.items()]
        return "\n".join(lines)
