"""The papers' reported numbers (``lipzoo/reported.json``) against a measurement by the shared certifier.

A *reported row* is what one paper printed for one named model on one dataset: clean and certified accuracy (in
percent) at the eps the paper reports, which checkpoint it reports (``"best"``/``"last"`` epoch,
``selected_on_test_set``), the source (paper, table, arXiv id) and ``unverified: true`` where the number was not
checked against the paper itself (quoted by another paper, a rebuttal, third-party notes). A number that could not
be found is absent, never estimated.

>>> from lipzoo import reported
>>> row = reported.row_for("sll_xl", dataset="cifar10")          # or reported.get_row("sll_xl.cifar10")
>>> cmp = reported.verify_against(model, row)                    # certifies the full test set
>>> print(cmp.to_text()); cmp.to_json("report.json")

Verdict of each number, ``d = measured - reported`` in percentage points and ``tol`` the tolerance
(:data:`DEFAULT_TOLERANCE_PP`, stated in every report):

* ``reproduced``: ``|d| <= tol``;
* ``better``: ``d > tol``;
* ``worse``: ``d < -tol`` where the paper reports its last epoch (or did not select on the test set);
* ``test_set_selected``: ``d < -tol`` where the paper reports the epoch that scored best **on the test set**
  (the SOC, improved-SOC and LOT repositories keep ``best.pth`` that way): its number is optimistically biased,
  so a shortfall is not evidence of a broken conversion on its own.

The overall verdict is ``worse`` if any number is worse, else ``test_set_selected`` if any is, else
``reproduced`` if all are, else ``better``. A measurement on a subset (``n`` images) is **not a reproduction**: the
report says so (``reproduction: false``) and its verdicts only exercise the comparison.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["DEFAULT_TOLERANCE_PP", "VERDICTS", "ReportedRowError", "load", "rows", "papers", "get_row", "rows_for",
           "row_for", "resolve_against", "row_eps", "compare", "verify_against", "Comparison", "Entry",
           "format_row", "REPORTED_JSON"]

REPORTED_JSON = Path(__file__).resolve().parent / "reported.json"
DEFAULT_TOLERANCE_PP = 0.5
VERDICTS = ("reproduced", "better", "worse", "test_set_selected")
_VERDICT_TEXT = {
    "reproduced": "reproduced",
    "better": "better than reported",
    "worse": "worse than reported",
    "test_set_selected": "worse, but the paper selected its best epoch on the test set",
    "not_measured": "not measured",
    "not_reported": "(not reported by the paper)",
}


class ReportedRowError(ValueError):
    """An unknown row or paper, an ambiguous choice, or a reported-numbers file that cannot be read."""


# ------------------------------------------------------------------------------------------------ data
def _read(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except ValueError as e:
        raise ReportedRowError(f"reported numbers {path}: not a JSON file ({e})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise ReportedRowError(f"reported numbers {path}: expected an object with a 'rows' list (lipzoo/reported.json "
                               "format)")
    for r in doc["rows"]:
        if not isinstance(r, dict) or not r.get("id") or not r.get("dataset"):
            raise ReportedRowError(f"reported numbers {path}: every row needs an 'id' and a 'dataset'")
    return doc


@lru_cache(maxsize=1)
def _packaged() -> dict[str, Any]:
    return _read(REPORTED_JSON)


def load(path: str | Path | None = None) -> dict[str, Any]:
    """The reported-numbers document: lipzoo's own (``lipzoo/reported.json``) or a file in the same format."""
    return _packaged() if path is None else _read(path)


def rows(path: str | Path | None = None) -> list[dict[str, Any]]:
    return list(load(path)["rows"])


def papers(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    return dict(load(path).get("papers", {}))


def get_row(row_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """The row ``row_id`` (e.g. ``'sll_xl.cifar10'``); :class:`ReportedRowError` naming close ids otherwise."""
    all_rows = rows(path)
    for r in all_rows:
        if r["id"] == row_id:
            return r
    import difflib

    close = difflib.get_close_matches(row_id, [r["id"] for r in all_rows], n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise ReportedRowError(f"no reported row {row_id!r}{' in ' + str(path) if path else ''}.{hint} "
                           "List them with lipzoo.reported.rows().")


def _arch(name: str) -> str:
    return name.split(".", 1)[0].replace("-", "_")


def rows_for(arch: str, dataset: str | None = None, path: str | Path | None = None) -> list[dict[str, Any]]:
    """Every row reported for the architecture ``arch`` (``arch.tag`` and hyphens accepted), optionally on
    ``dataset``."""
    a = _arch(arch)
    return [r for r in rows(path) if r.get("arch") == a and (dataset is None or r["dataset"] == dataset)]


def row_for(arch: str, dataset: str = "cifar10", path: str | Path | None = None) -> dict[str, Any]:
    """The row to compare ``arch`` with on ``dataset``: the only one, else the one marked ``primary``."""
    found = rows_for(arch, dataset, path)
    if len(found) == 1:
        return found[0]
    primary = [r for r in found if r.get("primary")]
    if len(primary) == 1:
        return primary[0]
    if not found:
        others = sorted({r["dataset"] for r in rows_for(arch, None, path)})
        also = f" (rows exist for {', '.join(others)}: pass --dataset)" if others else ""
        raise ReportedRowError(f"no paper reports a number for {_arch(arch)} on {dataset}{also}")
    raise ReportedRowError(f"{len(found)} reported rows for {_arch(arch)} on {dataset}: choose one with "
                           f"paper:ROW, one of {', '.join(r['id'] for r in found)}")


def resolve_against(against: str, arch: str, dataset: str | None = None) -> dict[str, Any]:
    """The row that ``--against`` names for ``arch``: ``paper`` (the row for ``arch`` on ``dataset``, default
    cifar10), ``paper:ROW`` (a row id of lipzoo's data) or ``FILE.json[:ROW]`` (a file in the same format)."""
    text = str(against).strip()
    head, _, row_id = text.partition(":")
    if head == "paper":
        path = None
    else:
        # FILE.json or FILE.json:ROW (the row id never contains a path separator)
        head, sep, tail = text.rpartition(":")
        if sep and not Path(text).exists() and "/" not in tail:
            path, row_id = Path(head), tail
        else:
            path, row_id = Path(text), ""
        if not path.is_file():
            raise ReportedRowError(f"--against {against!r}: expected 'paper', 'paper:ROW' or FILE.json[:ROW] "
                                   f"(no file {path})")
    if row_id:
        row = get_row(row_id, path)
        if row.get("arch") not in (None, _arch(arch)):
            raise ReportedRowError(f"reported row {row_id!r} is for {row['arch']}, not {_arch(arch)}")
        if dataset is not None and row["dataset"] != dataset:
            raise ReportedRowError(f"reported row {row_id!r} is on {row['dataset']}, not {dataset}")
        return row
    return row_for(arch, dataset or "cifar10", path)


def row_eps(row: Mapping[str, Any]) -> dict[str, float]:
    """``{label: eps}`` of the row's certified accuracies, in the row's order (``'36/255' -> 36/255``)."""
    from .certification import parse_eps

    out = {}
    for label in (row.get("certified") or {}):
        try:
            out[label] = parse_eps(label)
        except (ValueError, ZeroDivisionError) as e:
            raise ReportedRowError(f"reported row {row.get('id')!r}: eps label {label!r} is not a number") from e
    return out


def _paper_of(row: Mapping[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    try:
        return dict(load(path).get("papers", {}).get(row.get("paper"), {}))
    except (FileNotFoundError, ReportedRowError):
        return {}


def format_row(row: Mapping[str, Any]) -> str:
    """One line: ``sll_xl.cifar10: SLL X-Large on cifar10 -- clean 73.3, 36/255 65.8, ... (source; unverified)``."""
    parts = [f"clean {row['clean']}" if row.get("clean") is not None else "clean -"]
    parts += [f"{k} {v}" for k, v in (row.get("certified") or {}).items()]
    src = row.get("source") or {}
    where = ", ".join(str(src[k]) for k in ("document", "table") if src.get(k))
    if src.get("arxiv"):
        where += f", arXiv {src['arxiv']}"
    flags = ["UNVERIFIED" if row.get("unverified") else "checked against the paper"]
    if row.get("selected_on_test_set"):
        flags.append("best epoch selected on the test set")
    elif row.get("checkpoint"):
        flags.append(f"{row['checkpoint']} epoch")
    return (f"{row['id']}: {row.get('model')} on {row['dataset']} -- {', '.join(parts)} (%) [{where}; "
            f"{'; '.join(flags)}]")


# ------------------------------------------------------------------------------------------ comparison
@dataclass
class Entry:
    metric: str  # 'clean' or an eps label such as '36/255'
    eps: float | None
    reported: float | None  # percent
    measured: float | None  # percent
    difference: float | None  # measured - reported, percentage points
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "eps": self.eps, "reported": self.reported, "measured": self.measured,
                "difference_pp": self.difference, "verdict": self.verdict}


@dataclass
class Comparison:
    row: dict[str, Any]
    entries: list[Entry]
    tolerance_pp: float
    n: int | None
    subset: str  # 'full' or 'first_N'
    dataset: str
    model: str | None = None
    checkpoint: str | None = None
    checkpoint_format: str | None = None
    notes: list[str] = field(default_factory=list)
    paper: dict[str, Any] = field(default_factory=dict)
    result: Any = field(default=None, repr=False)

    @property
    def reproduction(self) -> bool:
        """Whether this was a reproduction: the full test split, not a subset."""
        return self.subset == "full"

    @property
    def verdict(self) -> str:
        vs = [e.verdict for e in self.entries if e.verdict not in ("not_measured", "not_reported")]
        if not vs:
            return "not_measured"
        for v in ("worse", "test_set_selected"):
            if v in vs:
                return v
        return "reproduced" if all(v == "reproduced" for v in vs) else "better"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "checkpoint": self.checkpoint, "checkpoint_format": self.checkpoint_format,
            "row": self.row.get("id"), "paper": self.row.get("paper"), "reported_model": self.row.get("model"),
            "dataset": self.dataset, "split": "test", "subset": self.subset, "n": self.n,
            "reproduction": self.reproduction, "tolerance_pp": self.tolerance_pp,
            "reported_checkpoint": self.row.get("checkpoint"),
            "selected_on_test_set": self.row.get("selected_on_test_set"),
            "unverified": bool(self.row.get("unverified")), "source": self.row.get("source"),
            "verdict": self.verdict, "entries": [e.to_dict() for e in self.entries], "notes": list(self.notes),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_text(self) -> str:
        r = self.row
        src = r.get("source") or {}
        where = ", ".join(str(src[k]) for k in ("document", "table") if src.get(k))
        if src.get("arxiv"):
            where += f", arXiv {src['arxiv']}"
        lines = []
        if not self.reproduction:
            lines.append(f"*** SUBSET of {self.n} test images ({self.subset}): NOT a reproduction of the paper's "
                         "numbers; the verdicts only exercise the comparison ***")
        lines.append(f"{self.model or r.get('arch')} vs {r.get('paper')}:{r['id']} -- {r.get('model')} on "
                     f"{self.dataset}/test ({self.subset}, n={self.n})")
        lines.append(f"source: {where or 'not stated'}" + ("  [UNVERIFIED: not checked against the paper itself]"
                                                            if r.get("unverified") else ""))
        sel = r.get("checkpoint") or "unknown"
        lines.append(f"paper reports: {sel} epoch" + (" (selected on the test set)" if r.get("selected_on_test_set")
                                                      else ""))
        lines.append(f"tolerance: reproduced iff |measured - reported| <= {self.tolerance_pp:g} percentage points")
        lines.append(f"{'':>10}  {'paper':>8}  {'measured':>8}  {'diff (pp)':>9}  verdict")
        for e in self.entries:
            rep = "-" if e.reported is None else f"{e.reported:.2f}"
            mea = "-" if e.measured is None else f"{e.measured:.2f}"
            dif = "" if e.difference is None else f"{e.difference:+.2f}"
            lines.append(f"{e.metric:>10}  {rep:>8}  {mea:>8}  {dif:>9}  {_VERDICT_TEXT.get(e.verdict, e.verdict)}")
        lines.append(f"verdict: {_VERDICT_TEXT.get(self.verdict, self.verdict)}"
                     + ("" if self.reproduction else " (on a subset: not a reproduction)"))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _verdict(diff: float, tol: float, test_selected: bool) -> str:
    if abs(diff) <= tol + 1e-9:
        return "reproduced"
    if diff > 0:
        return "better"
    return "test_set_selected" if test_selected else "worse"


def _measured_percent(measured: Any, eps: Mapping[str, float]) -> tuple[float | None, dict[str, float | None], int | None, str | None]:
    """(clean %, {label: certified %}, n, dataset) of a CertificationResult or a claims record (fractions)."""
    from .certification import CertificationResult, eps_label

    if isinstance(measured, CertificationResult):
        return (100 * measured.clean_accuracy, {k: 100 * measured.certified_accuracy_at(e) for k, e in eps.items()},
                measured.n, None)
    if isinstance(measured, Mapping):
        from .verification import claimed_eps, load_claims

        claims = load_claims(measured)
        have = claimed_eps(claims)  # label -> value, labels checked against their values
        by_value = {round(v * 255 * 1e6): claims["certified_accuracy"][k] for k, v in have.items()}
        cert = {}
        for label, e in eps.items():
            v = claims["certified_accuracy"].get(label, by_value.get(round(e * 255 * 1e6)))
            if v is None and eps_label(e) in claims["certified_accuracy"]:
                v = claims["certified_accuracy"][eps_label(e)]
            cert[label] = None if v is None else 100 * float(v)
        clean = claims.get("clean_accuracy")
        n = claims.get("n")
        return (None if clean is None else 100 * float(clean), cert, None if n is None else int(n),
                claims.get("dataset"))
    raise TypeError(f"expected a CertificationResult or a claims record, got {type(measured).__name__}")


def compare(measured: Any, row: Mapping[str, Any], tolerance_pp: float = DEFAULT_TOLERANCE_PP,
            subset: str | None = None, dataset: str | None = None) -> Comparison:
    """Compare a :class:`~lipzoo.certification.CertificationResult` or a claims record with a reported ``row``.

    ``subset``: ``'full'`` (default for a claims record: its own ``subset``) or ``'first_N'``; a comparison on a
    subset is not a reproduction. ``dataset`` defaults to the claims' dataset, else the row's; a claims record on
    another dataset than the row is refused.
    """
    if not (isinstance(tolerance_pp, (int, float)) and math.isfinite(tolerance_pp) and tolerance_pp >= 0):
        raise ValueError(f"tolerance must be a finite number of percentage points >= 0, got {tolerance_pp!r}")
    row = dict(row)
    eps = row_eps(row)
    clean, cert, n, claimed_dataset = _measured_percent(measured, eps)
    if claimed_dataset is not None and claimed_dataset != row["dataset"]:
        raise ReportedRowError(f"the measurement is on {claimed_dataset}, the reported row {row['id']!r} on "
                               f"{row['dataset']}")
    if subset is None:
        subset = str(measured.get("subset", "full")) if isinstance(measured, Mapping) else "full"
    test_selected = bool(row.get("selected_on_test_set"))
    entries = []
    for metric, e, rep, mea in [("clean", None, row.get("clean"), clean)] + [
            (label, eps[label], row["certified"][label], cert.get(label)) for label in eps]:
        if rep is None:  # a number the paper did not report: the measurement is shown, without a verdict
            if metric == "clean" and mea is not None:
                entries.append(Entry(metric, e, None, mea, None, "not_reported"))
            continue
        rep = float(rep)
        if mea is None:
            entries.append(Entry(metric, e, rep, None, None, "not_measured"))
            continue
        diff = mea - rep
        entries.append(Entry(metric, e, rep, mea, diff, _verdict(diff, tolerance_pp, test_selected)))
    notes = []
    if row.get("unverified"):
        notes.append("the reported numbers are UNVERIFIED (not checked against the paper itself)")
    notes += list(row.get("notes") or [])
    if row.get("aggregate"):
        notes.append(f"the paper reports the {row['aggregate']}; this is one checkpoint")
    if test_selected:
        notes.append("the paper's code keeps the epoch that scored best on the test set: its numbers are an "
                     "optimistic estimate, and a last-epoch checkpoint may fall short of them")
    return Comparison(row=row, entries=entries, tolerance_pp=float(tolerance_pp), n=n, subset=subset,
                      dataset=dataset or claimed_dataset or row["dataset"], notes=notes, paper=_paper_of(row))


def verify_against(
    model: Any,
    row: Mapping[str, Any] | str,
    data: Any = None,
    n: int | None = None,
    root: str | Path | None = None,
    tolerance_pp: float = DEFAULT_TOLERANCE_PP,
    batch_size: int = 500,
    dtype: Any = None,
    progress: bool = False,
    name: str | None = None,
) -> Comparison:
    """Certify ``model`` with the shared certifier on the row's test set at the row's eps and compare.

    ``row``: a row or a row id of lipzoo's data. ``data``: an ``(images, labels)`` tuple or a ``lipzoo.data.CIFAR``
    replacing the test split (tests). ``n``: only the first ``n`` test images -- **not a reproduction** (the
    report says so). ``dtype`` defaults to float32.
    """
    import torch

    from .certification import certify
    from .data import NUM_CLASSES

    row = get_row(row) if isinstance(row, str) else dict(row)
    dataset = row["dataset"]
    if data is None:
        if dataset not in NUM_CLASSES:
            raise ReportedRowError(f"reported row {row['id']!r} is on {dataset}, which lipzoo.data cannot load "
                                   f"(known: {', '.join(sorted(NUM_CLASSES))})")
        from .data import CIFAR

        images, labels = CIFAR(dataset, "test", root).tensors()
    elif isinstance(data, tuple) and len(data) == 2:
        images, labels = torch.as_tensor(data[0]), torch.as_tensor(data[1]).long()
    elif callable(getattr(data, "tensors", None)):
        images, labels = data.tensors()
    else:
        raise TypeError("data must be None, an (images, labels) tuple or a lipzoo.data.CIFAR")
    num_classes = getattr(model, "num_classes", None)
    if dataset in NUM_CLASSES and num_classes not in (None, NUM_CLASSES[dataset]):
        raise ReportedRowError(f"reported row {row['id']!r} is on {dataset} ({NUM_CLASSES[dataset]} classes) but the "
                               f"model has {num_classes} classes")
    subset = "full"
    if n is not None:
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        images, labels = images[:n], labels[:n]
        subset = f"first_{len(labels)}"
    eps = row_eps(row)
    result = certify(model, images, labels, eps=tuple(eps.values()) or (36 / 255,), batch_size=batch_size,
                     dtype=dtype or torch.float32, progress=progress)
    cmp = compare(result, row, tolerance_pp=tolerance_pp, subset=subset, dataset=dataset)
    if data is not None:
        cmp.notes.append("images supplied by the caller (data=...), not loaded from lipzoo.data")
    cmp.model = name
    cmp.result = result
    return cmp
