"""Empirical l2 robustness beside the certificate: AutoAttack (``torchattacks``) on the images that are certified.

RobustBench's l2 threat model: AutoAttack's standard set (APGD-CE, APGD-T, FAB-T, Square with 5000 queries; the
maintained implementation of ``torchattacks``, pip ``torchattacks==3.5.1``, extra ``lipzoo[attack]``) on the
first 1,000 test images at ``eps = 36/255`` and ``eps = 0.5`` (:data:`DEFAULT_ATTACK_EPS`).

A sample is **robust at eps** (empirically) iff it is classified correctly and the attack found no ``x'`` in
``[0, 1]^d`` with ``||x' - x||_2 <= eps`` that the model classifies otherwise. An attack can only show that a point
is *not* robust, so the robust accuracy it measures is an upper bound of the true one; the certified accuracy
(:func:`lipzoo.certify`) is a lower bound. On the same images, per sample::

    certified at eps  =>  robust at eps  =>  correct        (so  certified <= robust <= clean)

A certified sample the attack breaks is a **broken certificate** (:func:`check_robustness` counts them). An
"adversarial" image outside the eps ball or outside [0, 1] proves nothing and is not counted as a success.

Floor: beside ``audit`` / ``verify``, above the certifier; ``torchattacks`` is imported only when an attack runs.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ._errors import LipzooUserError
from ._numerics import certification_context

__all__ = [
    "DEFAULT_ATTACK_EPS", "ATTACK_N", "TORCHATTACKS_REQUIREMENT", "AttackResult", "RobustnessCheck",
    "robust_accuracy", "check_robustness", "check_record", "require_torchattacks", "attack_record",
    "attack_dataset",
]

DEFAULT_ATTACK_EPS: tuple[float, ...] = (36 / 255, 0.5)
ATTACK_N = 1000  # RobustBench evaluates the first 1,000 test images
TORCHATTACKS_REQUIREMENT = "torchattacks==3.5.1"
NORM_SLACK = 1e-5  # relative slack on ||x' - x||_2 <= eps (float32 rounding of the projection)


def require_torchattacks() -> Any:
    """The ``torchattacks`` module, or a one-line :class:`LipzooUserError` saying what to install."""
    try:
        import torchattacks
    except ImportError as e:
        raise LipzooUserError(f"AutoAttack needs torchattacks: pip install '{TORCHATTACKS_REQUIREMENT}' (or "
                              "pip install 'lipzoo[attack]')") from e
    return torchattacks


def _eps_label(eps: float) -> str:
    from .certification import eps_label

    return eps_label(eps)


@dataclass
class AttackResult:
    """Per-sample outcome of AutoAttack at each eps on ``n`` images.

    ``correct[i]``: the clean prediction is right; ``robust[label][i]``: correct and not broken at that eps.
    """

    eps: tuple[float, ...]
    correct: torch.Tensor  # bool (N,)
    robust: dict[str, torch.Tensor]  # eps label -> bool (N,)
    seconds: dict[str, float]
    max_perturbation: dict[str, float]  # largest ||x' - x||_2 of a counted attack success
    version: str = "standard"
    seed: int = 0
    torchattacks_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    @property
    def clean_accuracy(self) -> float:
        return float(self.correct.double().mean()) if self.n else float("nan")

    def robust_accuracy_at(self, eps: float) -> float:
        return float(self.robust[_eps_label(eps)].double().mean()) if self.n else float("nan")

    @property
    def robust_accuracy(self) -> dict[str, float]:
        return {_eps_label(e): self.robust_accuracy_at(e) for e in self.eps}

    def to_record(self) -> dict[str, Any]:
        """The JSON record of the attack (cards, ``results/autoattack/*.json``)."""
        return {
            "attack": "autoattack", "implementation": "torchattacks", "torchattacks_version": self.torchattacks_version,
            "version": self.version, "norm": "L2", "seed": self.seed, "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "eps": {_eps_label(e): float(e) for e in self.eps},
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "max_perturbation": self.max_perturbation,
            **self.extra,
        }

    def summary(self) -> str:
        lines = [f"AutoAttack ({self.version}, L2, torchattacks {self.torchattacks_version}) on n={self.n}",
                 f"{'clean':>10}  {100 * self.clean_accuracy:8.2f}%"]
        lines += [f"{k:>10}  {100 * v:8.2f}%  ({self.seconds[k]:.0f} s)" for k, v in self.robust_accuracy.items()]
        return "\n".join(lines)


def _attack_once(atk_cls: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, version: str,
                 n_classes: int, seed: int) -> tuple[torch.Tensor, float]:
    """``(broken, max_norm)``: which of ``x`` AutoAttack moves to a wrong class inside the eps ball and [0, 1]."""
    torch.manual_seed(seed)
    attack = atk_cls(model, norm="L2", eps=float(eps), version=version, n_classes=n_classes, seed=seed)
    adv = attack(x, y).detach()
    with torch.no_grad():
        wrong = model(adv).argmax(dim=1) != y
    norms = (adv - x).flatten(1).norm(dim=1).double()
    inside = (norms <= eps * (1 + NORM_SLACK)) & (adv.amin(dim=(1, 2, 3)) >= 0) & (adv.amax(dim=(1, 2, 3)) <= 1)
    broken = wrong & inside
    return broken.cpu(), float(norms[broken].max()) if broken.any() else 0.0


def robust_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    eps: float | Sequence[float] = DEFAULT_ATTACK_EPS,
    *,
    version: str = "standard",
    batch_size: int = 250,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> AttackResult:
    """AutoAttack (l2, ``version``) on ``images`` (N, C, H, W) in [0, 1] with ``labels``, at each ``eps``.

    Runs in eval mode, float32, autocast off, with the parameters frozen (the caller's train mode and
    ``requires_grad`` flags are restored), deterministically (``torch.manual_seed(seed)`` and AutoAttack's
    ``seed`` for every batch). ``device``: where to attack (a copy of the model is moved there); default the
    model's device. Only clean-correct images are attacked. Raises :class:`LipzooUserError` if torchattacks is
    missing.
    """
    from . import _progress

    ta = require_torchattacks()
    eps_values = (float(eps),) if isinstance(eps, (int, float)) else tuple(float(e) for e in eps)
    if not eps_values or any(not (e > 0 and math.isfinite(e)) for e in eps_values):
        raise ValueError(f"eps must be positive and finite, got {eps_values}")
    images = torch.as_tensor(images)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"need images (N, C, H, W) and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}")
    if len(images) and (images.amin() < 0 or images.amax() > 1):
        raise ValueError("images must lie in [0, 1] (the model normalises inside)")
    param = next(model.parameters(), None)
    if device is not None and param is not None and torch.device(device) != param.device:
        model = copy.deepcopy(model).to(device)
    dev = next(model.parameters()).device if param is not None else torch.device(device or "cpu")
    was_training, flags = model.training, [(p, p.requires_grad) for p in model.parameters()]
    n_classes = int(getattr(model, "num_classes", 0) or 0)
    results: dict[str, list[torch.Tensor]] = {_eps_label(e): [] for e in eps_values}
    seconds = {k: 0.0 for k in results}
    max_norm = {k: 0.0 for k in results}
    correct_parts = []
    model.eval()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with certification_context():
            batches = range(0, len(images), batch_size)
            bar = _progress.bar(len(batches) * len(eps_values), "AutoAttack", show=progress, unit="batch")
            for start in batches:
                # contiguous: FAB .view()s input gradients, which follow the (maybe channels-last) input's strides
                x = images[start:start + batch_size].to(dev, torch.float32).contiguous()
                y = labels[start:start + batch_size].to(dev)
                with torch.no_grad():
                    logits = model(x)
                n_classes = n_classes or int(logits.shape[1])
                correct = (logits.argmax(dim=1) == y).cpu()
                correct_parts.append(correct)
                idx = correct.nonzero().flatten()
                for e, key in zip(eps_values, results):
                    robust = correct.clone()
                    t0 = time.perf_counter()
                    if len(idx):
                        broken, m = _attack_once(ta.AutoAttack, model, x[idx.to(dev)], y[idx.to(dev)], e, version,
                                                 n_classes, seed)
                        robust[idx[broken]] = False
                        max_norm[key] = max(max_norm[key], m)
                    seconds[key] += time.perf_counter() - t0
                    results[key].append(robust)
                    bar.update(1)
            bar.close()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)
    empty = torch.zeros(0, dtype=torch.bool)
    return AttackResult(
        eps=eps_values, correct=torch.cat(correct_parts) if correct_parts else empty,
        robust={k: torch.cat(v) if v else empty for k, v in results.items()}, seconds=seconds,
        max_perturbation=max_norm, version=version, seed=seed, torchattacks_version=getattr(ta, "__version__", "?"),
        extra={"device": dev.type if dev.type != "cpu" else f"cpu ({torch.get_num_threads()} threads)"},
    )


# ----------------------------------------------------------------------------------- certified <= robust <= clean
@dataclass
class RobustnessCheck:
    """certified <= robust <= clean at each eps on the same images; ``broken[label]`` counts the certified samples
    the attack broke (per-sample check; a count-only check sets it to ``None``)."""

    n: int
    clean: float
    certified: dict[str, float]
    robust: dict[str, float]
    broken: dict[str, int | None]

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        """One line per violated inequality (empty when the check passes)."""
        out = []
        for key, rob in self.robust.items():
            cert = self.certified.get(key)
            if self.broken.get(key):
                out.append(f"{self.broken[key]} certified sample(s) broken by AutoAttack at {key}: a broken certificate")
            if cert is not None and cert > rob + 1e-12:
                out.append(f"certified {100 * cert:.2f}% > robust {100 * rob:.2f}% at {key}: a broken certificate")
            if rob > self.clean + 1e-12:
                out.append(f"robust {100 * rob:.2f}% > clean {100 * self.clean:.2f}% at {key}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "clean": self.clean, "certified": self.certified, "robust": self.robust,
                "broken": self.broken, "passed": self.passed}


def check_robustness(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    attack: AttackResult | None = None,
    *,
    eps: float | Sequence[float] = DEFAULT_ATTACK_EPS,
    **attack_kwargs: Any,
) -> tuple[RobustnessCheck, AttackResult]:
    """Certify ``model`` on ``images`` with the shared certifier (:func:`lipzoo.certify`) at the attack's eps and
    compare per sample with ``attack`` (run here with ``attack_kwargs`` when ``None``): every certified sample must
    survive the attack and every robust one be correct. Returns the check and the attack result."""
    from .certification import certify

    if attack is None:
        attack = robust_accuracy(model, images, labels, eps, **attack_kwargs)
    cert = certify(model, images, labels, eps=attack.eps)
    if cert.n != attack.n:
        raise ValueError(f"the attack ran on {attack.n} images, the certificate on {cert.n}: not the same images")
    certified, broken = {}, {}
    for e in attack.eps:
        key = _eps_label(e)
        is_cert = cert.correct.cpu() & (cert.radii.cpu() > e)
        certified[key] = float(is_cert.double().mean()) if cert.n else float("nan")
        broken[key] = int((is_cert & ~attack.robust[key]).sum())
    if not torch.equal(cert.correct.cpu(), attack.correct):
        raise ValueError("the certifier and the attack disagree on which images are classified correctly; "
                         "the model is not deterministic on these images")
    return RobustnessCheck(attack.n, attack.clean_accuracy, certified, attack.robust_accuracy, broken), attack


def check_record(record: Mapping[str, Any], certified: Mapping[str, float] | None = None) -> RobustnessCheck:
    """Count-only check of a stored attack record (:meth:`AttackResult.to_record`): ``certified`` (default the
    record's own ``certified_accuracy`` on the attacked images) <= ``robust_accuracy`` <= ``clean_accuracy``."""
    robust = {str(k): float(v) for k, v in record["robust_accuracy"].items()}
    cert = dict(certified if certified is not None else record.get("certified_accuracy") or {})
    broken = record.get("broken") or {}
    return RobustnessCheck(int(record["n"]), float(record["clean_accuracy"]),
                           {k: float(v) for k, v in cert.items() if k in robust}, robust,
                           {k: broken.get(k) for k in robust})


def attack_record(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                  eps: float | Sequence[float] = DEFAULT_ATTACK_EPS, **attack_kwargs: Any) -> dict[str, Any]:
    """AutoAttack and the certificate on the same images as one JSON record (what cards, ``lipzoo verify
    --attack`` and ``results/autoattack/`` store): :meth:`AttackResult.to_record` plus ``certified_accuracy`` on
    these images, ``broken`` (certified samples the attack broke) and ``passed`` (certified <= robust <= clean)."""
    check, result = check_robustness(model, images, labels, eps=eps, **attack_kwargs)
    return {**result.to_record(), "certified_accuracy": check.certified, "broken": check.broken,
            "passed": check.passed}


def attack_dataset(model: nn.Module, dataset: str = "cifar10", n: int = ATTACK_N,
                   eps: float | Sequence[float] = DEFAULT_ATTACK_EPS, *, root: Any = None, split: str = "test",
                   **attack_kwargs: Any) -> dict[str, Any]:
    """:func:`attack_record` on the first ``n`` images of a CIFAR split (RobustBench: the first 1,000 test
    images), with ``dataset``, ``split`` and ``subset`` (``'first_<n>'``) in the record. This is what ``lipzoo
    publish`` stores on the card and ``lipzoo verify --attack`` re-runs."""
    from .data import CIFAR

    images, labels = CIFAR(dataset, split, root=root).tensors()
    images, labels = images[:n], labels[:n]
    return {"dataset": dataset, "split": split, "subset": f"first_{len(labels)}",
            **attack_record(model, images, labels, eps, **attack_kwargs)}
