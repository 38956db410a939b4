"""Claims (a model card's numbers, a ``results.json``) against a fresh measurement by the shared certifier.

A *claims record* is what :meth:`lipzoo.certification.CertificationResult.to_claims` writes::

    {"dataset": "cifar10", "split": "test", "subset": "full", "n": 10000, "clean_accuracy": 0.7123,
     "certified_accuracy": {"36/255": 0.61, ...}, "eps": {"36/255": 0.1411..., ...},
     "lipschitz_bound": 1.0000038, "head_rule": "lln", "dtype": "float32", "certifier_version": "1.0"}

Which images are measured (``subset`` of the claims, ``mode`` of the call):

* claims on ``"full"``, ``mode="full"``: the whole split. An accuracy passes iff
  ``|measured - claimed| <= 0.001`` (0.1 percentage point).
* claims on ``"full"``, ``mode="quick"``: the fixed stratified subset :func:`quick_subset_indices` (the first
  ``1000 // num_classes`` images of each class in dataset order: 100 per class for CIFAR-10). An accuracy passes
  iff the claim lies in the exact two-sided 99.9% Clopper-Pearson interval of the subset measurement.
* claims on ``"quick"`` (that same subset), ``"subset"`` or ``"first_N"`` (the first ``n`` images of the split):
  exactly those images, with the 0.1 pp tolerance.

Also checked: the claimed dataset/split/n are consistent with the data and with the model's number of classes,
the model's head rule equals the claimed one, and the model's Lipschitz bound measured now equals the claimed one
(relative 1e-5, when certifying in the claimed dtype).

The eps *values* of the record are what is measured; each label must name its value (``'36/255'`` = 36/255,
``'0.5'`` = 0.5, :func:`lipzoo.certification.parse_eps`), else the record is refused with a ``ValueError`` before anything
is measured (:func:`claimed_eps`). The report prints both, e.g. ``certified accuracy @ 36/255 (eps = 0.14117647)``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import nn

from .certification import CERTIFIER_VERSION, CertificationResult, certify, parse_eps

__all__ = ["verify", "VerificationReport", "Check", "load_claims", "claimed_eps", "quick_subset_indices",
           "clopper_pearson", "ACCURACY_TOLERANCE", "QUICK_CONFIDENCE", "QUICK_SIZE", "EPS_LABEL_TOLERANCE"]

ACCURACY_TOLERANCE = 0.001  # 0.1 percentage point
QUICK_CONFIDENCE = 0.999
QUICK_SIZE = 1000
BOUND_RTOL = 1e-5
EPS_LABEL_TOLERANCE = 1e-9  # max |parse_eps(label) - value|; eps_label() writes 'n/255' within 1e-9 / 255 of n/255

Mode = Literal["full", "quick"]


# ------------------------------------------------------------------------------------------- statistics
def _log_binom_pmf(n: int, p: float) -> np.ndarray:
    i = np.arange(n + 1)
    logc = np.concatenate([[0.0], np.cumsum(np.log(n - i[1:] + 1) - np.log(i[1:]))])
    return logc + i * math.log(p) + (n - i) * math.log1p(-p)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, p)``, summed exactly in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    logs = _log_binom_pmf(n, p)[: k + 1]
    m = logs.max()
    return float(min(1.0, math.exp(m) * np.exp(logs - m).sum()))


def _bisect(fn, target: float, increasing: bool) -> float:
    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if (fn(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson(k: int, n: int, confidence: float = QUICK_CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval for a binomial proportion with ``k`` successes in ``n`` trials:
    ``lo`` solves ``P(X >= k | lo) = alpha/2`` and ``hi`` solves ``P(X <= k | hi) = alpha/2``
    (``lo = 0`` if ``k = 0``, ``hi = 1`` if ``k = n``), ``alpha = 1 - confidence``."""
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = (1.0 - confidence) / 2
    lo = 0.0 if k == 0 else _bisect(lambda p: 1.0 - _binom_cdf(k - 1, n, p), a, increasing=True)
    hi = 1.0 if k == n else _bisect(lambda p: _binom_cdf(k, n, p), a, increasing=False)
    return lo, hi


def quick_subset_indices(labels: np.ndarray | torch.Tensor, total: int = QUICK_SIZE) -> np.ndarray:
    """The quick subset: the first ``total // num_classes`` indices of each class in dataset order, sorted
    (100 per class on CIFAR-10, 10 per class on CIFAR-100). Deterministic, no seed."""
    labels = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    classes = np.unique(labels)
    per_class = total // len(classes)
    picks = []
    for c in classes:
        idx = np.flatnonzero(labels == c)[:per_class]
        if len(idx) < per_class:
            raise ValueError(f"class {c} has only {len(idx)} images, the quick subset needs {per_class}")
        picks.append(idx)
    return np.sort(np.concatenate(picks))


# --------------------------------------------------------------------------------------------- report
@dataclass
class Check:
    name: str
    claimed: Any
    measured: Any
    difference: float | None
    criterion: str
    passed: bool
    eps: float | None = None  # the eps value measured, for a certified accuracy (its label is in ``name``)

    def title(self) -> str:
        """The name as printed: with the eps value beside its label for a certified accuracy."""
        return self.name if self.eps is None else f"{self.name} (eps = {self.eps:.8g})"


@dataclass
class VerificationReport:
    model: str
    dataset: str
    split: str
    subset: str  # the images measured: 'full', 'quick', 'first_N'
    mode: str
    n: int
    checks: list[Check]
    notes: list[str] = field(default_factory=list)
    result: CertificationResult | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "result"}
        out["passed"] = self.passed
        out["certifier_version"] = CERTIFIER_VERSION
        return out

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"**lipzoo verify {self.model}: {verdict}** — {self.dataset}/{self.split}, {self.subset} "
                 f"(n={self.n}, mode {self.mode})", "",
                 "| check | claimed | measured | difference | criterion | result |",
                 "|---|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.title()} | {_fmt(c.name, c.claimed)} | {_fmt(c.name, c.measured)} | "
                         f"{_fmt_diff(c.name, c.difference)} | {c.criterion} | {'pass' if c.passed else '**FAIL**'} |")
        if self.notes:
            lines.append("")
            lines += [f"* {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()


def _is_accuracy(name: str) -> bool:
    return "accuracy" in name


def _fmt(name: str, v: Any) -> str:
    if v is None:
        return "-"
    if _is_accuracy(name) and isinstance(v, (int, float)):
        return f"{100 * v:.2f}%"
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)


def _fmt_diff(name: str, d: float | None) -> str:
    if d is None:
        return ""
    if _is_accuracy(name):
        return f"{100 * d:+.2f} pp"
    return f"{d:+.3g}"


# --------------------------------------------------------------------------------------------- claims
def load_claims(claims: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A claims record from a dict or a JSON file: the record itself, or a ``results.json``/wrapper holding it
    under ``"claims"`` (or any top-level value that has ``certified_accuracy``)."""
    if isinstance(claims, (str, Path)):
        claims = json.loads(Path(claims).read_text())
    claims = dict(claims)
    if "certified_accuracy" in claims:
        return claims
    if isinstance(claims.get("claims"), Mapping):
        return dict(claims["claims"])
    for v in claims.values():
        if isinstance(v, Mapping) and "certified_accuracy" in v:
            return dict(v)
    raise ValueError("no claims record found (expected 'certified_accuracy', or a 'claims' entry)")


def _label_value(label: str) -> float:
    """The eps a label names (``'36/255'``, ``'0.5'``); ``ValueError`` if it names no finite number."""
    try:
        value = parse_eps(label)
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"eps label {label!r} is not a number such as '36/255' or '0.5'") from e
    if not math.isfinite(value):
        raise ValueError(f"eps label {label!r} is not a finite number")
    return value


def _eps_value(label: str, raw: Any) -> float:
    """The claimed eps value of ``label``: a finite number >= 0 that equals the label's within
    :data:`EPS_LABEL_TOLERANCE`; ``ValueError`` otherwise."""
    named = _label_value(label)
    try:
        value = float(raw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the eps value of label {label!r} is not a number: {raw!r}") from e
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"the eps value of label {label!r} is {value!r}, not a finite number >= 0")
    if abs(value - named) > EPS_LABEL_TOLERANCE:
        raise ValueError(f"eps label {label!r} means {named!r} but its value is {value!r}")
    return value


def claimed_eps(claims: Mapping[str, Any]) -> dict[str, float]:
    """``{label: eps}`` of every certified accuracy of a claims record, in the record's order.

    The value is ``claims['eps'][label]`` (or the label's own number where ``eps`` has no entry). Every label of
    ``certified_accuracy`` and ``eps`` must name its value (:func:`_eps_value`): a record whose labels and values
    disagree is refused with one ``ValueError`` that lists each such label, what it means and its value.
    """
    accuracies = claims.get("certified_accuracy")
    values = claims.get("eps") or {}
    if not isinstance(accuracies, Mapping) or not isinstance(values, Mapping):
        raise ValueError("claims: 'certified_accuracy' and 'eps' must map eps labels to accuracies and eps values")
    eps: dict[str, float] = {}
    problems: list[str] = []
    for label in dict.fromkeys([*accuracies, *values]):
        try:
            value = _eps_value(label, values[label]) if label in values else _label_value(label)
        except ValueError as e:
            problems.append(str(e))
            continue
        if label in accuracies:
            eps[label] = value
    if problems:
        raise ValueError("claims refused: " + "; ".join(problems) + ". The eps value is what is measured, so a label "
                         "must name it (lipzoo.certification.eps_label(value)); fix the claims record")
    return eps


def _subset_of(claims: Mapping[str, Any]) -> tuple[str, int | None]:
    subset = str(claims.get("subset", "full"))
    if subset in ("full", "quick"):
        return subset, None
    if subset == "subset":
        return f"first_{int(claims['n'])}", int(claims["n"])
    if subset.startswith("first_") and subset[6:].isdigit():
        return subset, int(subset[6:])
    raise ValueError(f"unknown claims subset {subset!r} (expected 'full', 'quick', 'subset' or 'first_N')")


def _load_data(data: Any, dataset: str, split: str, root: str | Path | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(images, labels, supplied_by_caller) of the whole split."""
    if data is None:
        from .data import CIFAR

        return (*CIFAR(dataset, split, root).tensors(), False)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        return torch.as_tensor(x), torch.as_tensor(y).long(), True
    if callable(getattr(data, "tensors", None)):
        return (*data.tensors(), True)
    raise TypeError("data must be None, an (images, labels) tuple or a lipzoo.data.CIFAR")


# --------------------------------------------------------------------------------------------- verify
def _measured_images(claimed_subset: str, first_n: int | None, mode: Mode,
                     labels: Any) -> tuple[str, bool, np.ndarray | None]:
    """(subset measured, whether the comparison is statistical, indices or ``None`` for all) for a claims record."""
    if claimed_subset == "full" and mode == "quick":
        return "quick", True, quick_subset_indices(labels)
    if claimed_subset == "quick":
        return "quick", False, quick_subset_indices(labels)
    if first_n is not None:
        return claimed_subset, False, np.arange(min(first_n, len(labels)))
    return "full", False, None


def _record_checks(model: nn.Module, claims: Mapping[str, Any], dataset: str, claimed_subset: str,
                   first_n: int | None, n_labels: int) -> list[Check]:
    """The consistency of the record with the data and the model: image count, classes, head rule."""
    from .data import NUM_CLASSES

    checks = []
    expected_n = {"full": n_labels, "quick": QUICK_SIZE}.get(claimed_subset, first_n)
    checks.append(Check("n (images claimed)", int(claims.get("n", -1)), expected_n, None,
                        f"= size of {claimed_subset}", int(claims.get("n", -1)) == expected_n))
    num_classes = getattr(model, "num_classes", None)
    if dataset in NUM_CLASSES:
        checks.append(Check("dataset classes", NUM_CLASSES[dataset], num_classes, None, "model.num_classes",
                            num_classes in (None, NUM_CLASSES[dataset])))
    else:
        checks.append(Check("dataset", dataset, None, None, f"one of {sorted(NUM_CLASSES)}", False))
    rule = getattr(model, "head_rule", "lipschitz")
    checks.append(Check("head rule", claims.get("head_rule"), rule, None, "equal",
                        claims.get("head_rule") in (None, rule)))
    return checks


def _bound_checks(result: CertificationResult, claims: Mapping[str, Any], claimed_dtype: str,
                  notes: list[str]) -> list[Check]:
    """The measured Lipschitz bound against the claimed one (a verdict only in the claimed dtype); notes appended."""
    checks = []
    same_dtype = result.dtype == claimed_dtype
    if "lipschitz_bound" in claims:
        cb = float(claims["lipschitz_bound"])
        rel = abs(result.lipschitz_bound - cb) / max(abs(cb), 1e-30)
        checks.append(Check("Lipschitz bound", cb, result.lipschitz_bound, result.lipschitz_bound - cb,
                            f"relative <= {BOUND_RTOL:g}" if same_dtype else "informative (other dtype)",
                            rel <= BOUND_RTOL or not same_dtype))
    if not same_dtype:
        notes.append(f"certified in {result.dtype}, the claims in {claimed_dtype}")
    if claims.get("certifier_version") not in (None, CERTIFIER_VERSION):
        notes.append(f"claims made with certifier {claims.get('certifier_version')}, measured with {CERTIFIER_VERSION}")
    return checks


def _accuracy_checks(result: CertificationResult, claims: Mapping[str, Any], eps: Mapping[str, float],
                     statistical: bool) -> list[Check]:
    """Clean and certified accuracies: within a 99.9% Clopper-Pearson interval (quick re-measurement of a full
    claim) or within :data:`ACCURACY_TOLERANCE`."""
    checks = []
    n = result.n
    rows = [("clean accuracy", claims.get("clean_accuracy"), result.clean_accuracy, None)]
    rows += [(f"certified accuracy @ {label}", claims["certified_accuracy"][label], result.certified_accuracy_at(e), e)
             for label, e in eps.items()]
    for row_name, claimed, measured, row_eps in rows:
        if claimed is None:
            continue
        claimed = float(claimed)
        if statistical:
            lo, hi = clopper_pearson(int(round(measured * n)), n)
            ok = lo <= claimed <= hi
            crit = f"in 99.9% CP [{100 * lo:.2f}, {100 * hi:.2f}]%"
        else:
            ok = abs(measured - claimed) <= ACCURACY_TOLERANCE + 1e-12
            crit = f"within ±{100 * ACCURACY_TOLERANCE:.1f} pp"
        checks.append(Check(row_name, claimed, measured, measured - claimed, crit, ok, row_eps))
    return checks


def verify(
    model: nn.Module,
    claims: Mapping[str, Any] | str | Path,
    data: Any = None,
    mode: Mode = "full",
    root: str | Path | None = None,
    batch_size: int = 500,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    name: str | None = None,
) -> VerificationReport:
    """Re-certify ``model`` on the claimed dataset/split and compare with ``claims`` (see the module docstring).

    ``data`` replaces the split loaded from ``lipzoo.data`` (an ``(images, labels)`` tuple or a ``CIFAR``
    dataset), e.g. in tests; ``root`` is the data root. ``dtype`` defaults to the claims' dtype.
    """
    if mode not in ("full", "quick"):
        raise ValueError(f"mode must be 'full' or 'quick', got {mode!r}")
    claims = load_claims(claims)
    eps = claimed_eps(claims)  # refuses a record whose eps labels and values disagree, before any work
    dataset, split = str(claims.get("dataset", "cifar10")), str(claims.get("split", "test"))
    claimed_subset, first_n = _subset_of(claims)
    claimed_dtype = str(claims.get("dtype", "float32"))
    dtype = dtype or getattr(torch, claimed_dtype)
    notes: list[str] = []
    images, labels, supplied = _load_data(data, dataset, split, root)
    if supplied:
        notes.append("images supplied by the caller (data=...), not loaded from lipzoo.data")

    measured_subset, statistical, idx = _measured_images(claimed_subset, first_n, mode, labels)
    if mode == "full" and claimed_subset != "full":
        notes.append(f"the claims were measured on the {claimed_subset!r} subset: that subset is re-measured")
    checks = _record_checks(model, claims, dataset, claimed_subset, first_n, len(labels))

    x, y = (images, labels) if idx is None else (images[idx], labels[idx])
    result = certify(model, x, y, eps=tuple(eps.values()), batch_size=batch_size, dtype=dtype, progress=progress)
    checks += _bound_checks(result, claims, claimed_dtype, notes)
    checks += _accuracy_checks(result, claims, eps, statistical)

    return VerificationReport(model=name or type(model).__name__, dataset=dataset, split=split,
                              subset=measured_subset, mode=mode, n=result.n, checks=checks, notes=notes, result=result)
