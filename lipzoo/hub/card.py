"""Model cards: ``README.md`` of a published repo, rendered from the package's ``templates/model_card.md``.

The front matter is built with ``huggingface_hub.ModelCardData`` and ``EvalResult``: ``library_name: timm``,
license, tags, datasets, and a ``model-index`` with the clean accuracy (``type: accuracy``) and one
``type: certified_accuracy`` metric per eps (``args: {norm: L2, eps: <float>, eps_label: '36/255'}``). Values
are fractions in [0, 1], exactly as in the claims record, so :func:`claims_from_card` gives the claims back.
A model published with AutoAttack (:mod:`lipzoo.attack`) adds one ``type: robust_accuracy`` metric per eps
(``args: {attack: autoattack, norm: L2, eps: <float>, eps_label}``) on the attacked images, and a row per eps with
how it was measured and how long it took.

The template is package data (found with ``importlib.resources``), so ``lipzoo publish`` works from a wheel.
A card is read by Hub users on other machines: it carries no local path (:func:`portable_path`).
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .. import _checkout

__all__ = ["TEMPLATE", "DATASET_NAMES", "LABEL_NAMES", "DEFAULT_REPO_URL", "claims_to_eval_results",
           "claims_from_eval_results", "claims_from_card", "model_stats", "render_card", "template_text",
           "default_repo_url", "portable_path", "training_summary", "attack_to_eval_results", "attack_rows"]

TEMPLATE = ("templates", "model_card.md")  # inside the lipzoo package
DEFAULT_REPO_URL = "https://github.com/lipzoo/lipzoo"  # when neither pyproject.toml nor the metadata name one
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
# class names by output index, as timm's ``save_for_hf`` writes them (``label_names`` in config.json)
LABEL_NAMES = {"cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")}
CERTIFIED = "certified_accuracy"
ROBUST = "robust_accuracy"


def _radius_rule(name: str | None) -> tuple[str, str]:
    """(the radius formula, what the stated bound covers) of a claims record's head rule, as the certifier's
    :class:`~lipzoo.certification.HeadRule` states them (an unknown name is shown as it is)."""
    from ..certification.rules import HEAD_RULES

    rule = HEAD_RULES.get(name or "")
    if rule is None:
        return name or "", "input normalisation and body"
    return rule.card_text, "whole network" if rule.covers_head else "input normalisation and body"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def template_text(path: str | os.PathLike | None = None) -> str:
    """The card template: ``path``, else ``templates/model_card.md`` of the installed lipzoo package."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    return resources.files("lipzoo").joinpath(*TEMPLATE).read_text(encoding="utf-8")


def default_repo_url() -> str:
    """The project's repository URL: ``[project.urls]`` of the checkout's ``pyproject.toml`` (Repository, Source or
    Homepage), else the same entry of the installed package's metadata, else :data:`DEFAULT_REPO_URL`."""
    keys = ("repository", "source", "homepage")
    root = _checkout.project_root()
    try:
        import tomllib

        urls = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {}).get("urls", {}) if root else {}
        found = {k.lower(): v for k, v in urls.items()}
    except (ImportError, ValueError, OSError):  # Python 3.10, or an unreadable file
        found = {}
    if not found:
        from importlib.metadata import PackageNotFoundError, metadata

        try:
            entries = metadata("lipzoo").get_all("Project-URL") or []
        except PackageNotFoundError:
            entries = []
        found = {k.strip().lower(): v.strip() for k, _, v in (e.partition(",") for e in entries)}
    return next((found[k] for k in keys if found.get(k)), DEFAULT_REPO_URL)


def portable_path(path: str | os.PathLike) -> str:
    """How a card, config or claims record names a local file or folder of the publishing machine: relative to the
    project when inside it (``runs/sll_xs.cifar10``), else only the run folder's name (a folder, or a file's
    folder and name: ``sll_xs.cifar10/model.safetensors``). Never an absolute path."""
    p, root = Path(os.path.abspath(path)), _checkout.project_root()
    if root is not None and p.is_relative_to(root):
        return p.relative_to(root).as_posix()
    if p.is_file() and p.parent.name:
        return f"{p.parent.name}/{p.name}"
    return p.name or "."


def training_summary(log: list[Mapping[str, Any]], record: Mapping[str, Any] | None = None,
                     hardware: str | None = None) -> tuple[str | None, str | None]:
    """``(training time, hardware)`` lines of a card from a run's ``log.jsonl`` records (one per epoch: ``seconds``,
    ``images_per_s``, optional ``cpu_seconds``) and its ``results.json`` (``platform``, ``torch``, optional
    ``hardware``/``device``). ``hardware`` overrides what the record says. ``None`` for what is not recorded."""
    epochs = [r for r in log if not r.get("partial") and isinstance(r.get("seconds"), (int, float))]
    time_line = None
    if epochs:
        wall = sum(float(r["seconds"]) for r in epochs)
        time_line = f"{wall / 3600:.2f} h wall clock for {len(epochs)} epochs ({wall / len(epochs):.0f} s per epoch"
        speeds = sorted(float(r["images_per_s"]) for r in epochs if r.get("images_per_s"))
        if speeds:
            time_line += f", median {speeds[len(speeds) // 2]:.0f} images/s"
        cpu = [float(r["cpu_seconds"]) for r in epochs if isinstance(r.get("cpu_seconds"), (int, float))]
        if len(cpu) == len(epochs):
            time_line += f"; {sum(cpu) / 3600:.2f} h CPU time of the training process"
        time_line += "), from the run's log.jsonl"
    record = record or {}
    parts = [hardware or record.get("hardware") or record.get("device")]
    if record.get("platform"):
        parts.append(f"platform {record['platform']}")
    if record.get("torch"):
        parts.append(f"torch {record['torch']}")
    hardware_line = ", ".join(str(p) for p in parts if p) or None
    return time_line, hardware_line


def claims_to_eval_results(claims: Mapping[str, Any]) -> list[EvalResult]:
    """The claims record as ``EvalResult``s: clean accuracy, then one certified accuracy per eps, each with its
    label and its value (``metric_args``). A record whose eps labels and values disagree is refused with a
    ``ValueError`` (:func:`lipzoo.verification.claimed_eps`): a card never shows a label for another eps."""
    from ..verification import claimed_eps

    eps_values = claimed_eps(claims)
    common = dict(
        task_type="image-classification", task_name="Certified robust image classification (L2)",
        dataset_type=claims["dataset"], dataset_name=DATASET_NAMES.get(claims["dataset"], claims["dataset"]),
        dataset_split=claims.get("split", "test"), dataset_args={"subset": claims.get("subset", "full"), "n": claims["n"]},
    )
    out = [EvalResult(metric_type="accuracy", metric_value=float(claims["clean_accuracy"]),
                      metric_name="Clean accuracy", **common)]
    for label, acc in claims["certified_accuracy"].items():
        eps = eps_values[label]
        out.append(EvalResult(metric_type=CERTIFIED, metric_value=float(acc),
                              metric_name=f"Certified robust accuracy (L2, eps={label})",
                              metric_args={"norm": "L2", "eps": eps, "eps_label": label}, **common))
    return out


def attack_to_eval_results(record: Mapping[str, Any]) -> list[EvalResult]:
    """One ``robust_accuracy`` metric per eps of an AutoAttack record (:func:`lipzoo.attack.attack_dataset`), on the
    attacked images (``dataset_args: {subset: first_<n>, n}``)."""
    dataset = record["dataset"]
    common = dict(
        task_type="image-classification", task_name="Empirical robust image classification (L2, AutoAttack)",
        dataset_type=dataset, dataset_name=DATASET_NAMES.get(dataset, dataset), dataset_split=record.get("split", "test"),
        dataset_args={"subset": record.get("subset"), "n": record["n"]},
    )
    return [EvalResult(metric_type=ROBUST, metric_value=float(acc),
                       metric_name=f"Empirical robust accuracy (AutoAttack, L2, eps={label})",
                       metric_args={"attack": "autoattack", "norm": "L2", "eps": float(record["eps"][label]),
                                    "eps_label": label}, **common)
            for label, acc in record["robust_accuracy"].items()]


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def attack_rows(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The card's rows of an AutoAttack record: robust accuracy per eps, how it was measured and how long it took,
    beside the certified accuracy on the same images."""
    device = f" on {record['device']}" if record.get("device") else ""
    return [{"name": f"Empirical robust accuracy, AutoAttack L2, eps={label} ({float(record['eps'][label]):.4f})",
             "value": _pct(acc),
             "method": f"torchattacks {record.get('torchattacks_version', '?')} AutoAttack ({record.get('version')}: "
                       f"APGD-CE, APGD-T, FAB-T, Square), the first {record['n']} test images, "
                       f"{_duration(float(record['seconds'][label]))}{device}; certified on the same images: "
                       f"{_pct(record['certified_accuracy'][label])}"}
            for label, acc in record["robust_accuracy"].items()]


def claims_from_eval_results(results: list[EvalResult]) -> dict[str, Any]:
    """The measurable part of a claims record (dataset, split, subset, n, clean and certified accuracies, eps)."""
    if not results:
        raise ValueError("the model card has no model-index results")
    first = results[0]
    args = first.dataset_args or {}
    claims: dict[str, Any] = {"dataset": first.dataset_type, "split": first.dataset_split,
                              "subset": args.get("subset"), "n": args.get("n"),
                              "clean_accuracy": None, "certified_accuracy": {}, "eps": {}}
    for r in results:
        if r.metric_type == "accuracy":
            claims["clean_accuracy"] = r.metric_value
        elif r.metric_type == CERTIFIED:
            margs = r.metric_args or {}
            label = margs.get("eps_label") or repr(float(margs["eps"]))
            claims["certified_accuracy"][label] = r.metric_value
            claims["eps"][label] = float(margs["eps"])
    return claims


def claims_from_card(card: ModelCard | str | Path) -> dict[str, Any]:
    """:func:`claims_from_eval_results` of a card (a ``ModelCard``, a README path, or a repo id)."""
    if not isinstance(card, ModelCard):
        card = ModelCard.load(card)
    return claims_from_eval_results(card.data.eval_results or [])


def model_stats(model) -> dict[str, Any]:
    """Parameters, GMACs of one 32x32 image (conv/linear/matmul, counted by ``torch.utils.flop_counter`` on a
    second eval forward, so cached parametrisations are not counted; ``None`` if counting fails), the
    Lipschitz bound and the input normalisation with its Lipschitz factor ``1 / min(std)``."""
    import torch

    from ..models._builder import count_parameters

    stats: dict[str, Any] = {"params": count_parameters(model), "gmacs": None}
    was_training = model.training
    model.eval()
    try:
        from torch.utils.flop_counter import FlopCounterMode

        size = tuple(model.pretrained_cfg.get("input_size", (3, 32, 32)))
        x = torch.rand(1, *size)
        with torch.no_grad():
            model(x)
            counter = FlopCounterMode(display=False)
            with counter:
                model(x)
        stats["gmacs"] = counter.get_total_flops() / 2e9
    except Exception:  # an op the counter does not know: leave GMACs out rather than guess
        pass
    finally:
        model.train(was_training)
    stats["lipschitz_bound"] = float(model.lipschitz_bound())
    norm = getattr(model, "normalize", None)
    mean = norm.mean.flatten().tolist() if norm is not None else [0.0, 0.0, 0.0]
    std = norm.std.flatten().tolist() if norm is not None else [1.0, 1.0, 1.0]
    stats.update(mean=[round(m, 6) for m in mean], std=[round(s, 6) for s in std], norm_factor=1.0 / min(std))
    stats["input_size"] = list(model.pretrained_cfg.get("input_size", (3, 32, 32)))
    return stats


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) or "-"
    return str(value).replace("|", "\\|")


def _card_data(model_id: str, family: str, dataset: str, claims: Mapping[str, Any], license: str,
               attack: Mapping[str, Any] | None) -> ModelCardData:
    """The front matter: timm library, tags, datasets and the ``model-index`` (claims, then AutoAttack metrics)."""
    return ModelCardData(
        library_name="timm", license=license, pipeline_tag="image-classification",
        tags=["image-classification", "timm", "lipzoo", "certified-robustness", "lipschitz", "1-lipschitz", family, dataset],
        datasets=[dataset], metrics=["accuracy", CERTIFIED] + ([ROBUST] if attack else []), model_name=model_id,
        eval_results=claims_to_eval_results(claims) + (attack_to_eval_results(attack) if attack else []),
    )


def _summary(family: str, arch: str, dataset: str, claims: Mapping[str, Any], cert: Mapping[str, float]) -> str:
    """The card's first paragraph: clean accuracy and the certified accuracy at the smallest eps."""
    first = next(iter(cert), None)
    return (f"A certifiably robust {family.upper()} network (`{arch}`) trained on "
            f"{DATASET_NAMES.get(dataset, dataset)}: clean accuracy {_pct(claims['clean_accuracy'])}"
            + (f", certified l2 robust accuracy {_pct(cert[first])} at eps={first}" if first else "")
            + ". Every accuracy on this card was measured by lipzoo's certifier and is re-checked on download.")


def _reproduce_command(model_id: str, dataset: str, claims: Mapping[str, Any], subset: str) -> str:
    """``lipzoo certify`` for the full test set or its first n images; a Python snippet for the quick subset."""
    if subset == "full" or subset.startswith("first_"):
        return f"lipzoo certify {model_id} --pretrained" + (f" --n {claims['n']}" if subset != "full" else "")
    return "\n".join([  # lipzoo.verify's stratified quick subset
        "python - <<'EOF'",
        "import lipzoo",
        "from lipzoo import certify",
        "from lipzoo.data import CIFAR",
        "from lipzoo.verification import quick_subset_indices",
        f"model = lipzoo.create_model({model_id!r}, pretrained=True)",
        f"images, labels = CIFAR({dataset!r}, 'test').tensors()",
        "idx = quick_subset_indices(labels)",
        f"print(certify(model, images[idx], labels[idx]).to_claims({dataset!r}, 'test', 'quick'))",
        "EOF",
    ])


def _model_values(info: Mapping[str, Any], stats: Mapping[str, Any], claims: Mapping[str, Any],
                  dataset: str) -> dict[str, Any]:
    """The template's model section: family, paper, size, the proven bound, its scope and the radius rule, and the
    input normalisation's effect on the radius (a normalisation with std ``s`` scales it by ``1 / min(s)``)."""
    family = info.get("family", "")
    radius_rule, scope = _radius_rule(claims.get("head_rule"))
    norm = float(stats["norm_factor"])
    norm_effect = ("the std is 1, so the normalisation does not change the radius." if abs(norm - 1) < 1e-12 else
                   f"without it, radii in normalised space would be {norm:.4g} times larger than the pixel-space "
                   "radii reported here.")
    return dict(
        family_upper=family.upper(), description=info.get("description", ""), paper=info.get("paper", ""),
        bibtex=info.get("bibtex"), dataset_name=DATASET_NAMES.get(dataset, dataset), num_classes=claims.get("num_classes") or
        {"cifar10": 10, "cifar100": 100}.get(dataset, "?"),
        params_m=f"{stats['params'] / 1e6:.2f}", gmacs=f"{stats['gmacs']:.3f}" if stats.get("gmacs") is not None else "n/a",
        image_size="x".join(str(s) for s in stats.get("input_size", [3, 32, 32])[1:]),
        lipschitz_bound=f"{float(claims.get('lipschitz_bound', stats['lipschitz_bound'])):.8g}", bound_scope=scope,
        radius_rule=radius_rule,
        mean=_fmt(stats["mean"]), std=_fmt(stats["std"]), norm_factor=f"{norm:.4g}", norm_effect=norm_effect,
    )


def render_card(
    *,
    repo_id: str,
    arch: str,
    tag: str,
    claims: Mapping[str, Any],
    info: Mapping[str, Any],
    stats: Mapping[str, Any],
    sha256: str,
    code_revision: str | None,
    publish_command: str,
    code_dirty: bool = False,
    training: Mapping[str, Any] | None = None,
    train_command: str | None = None,
    training_revision: str | None = None,
    license: str = "mit",
    template_path: str | Path | None = None,
    repo_url: str | None = None,
    label_names: list[str] | None = None,
    training_time: str | None = None,
    hardware: str | None = None,
    extra_metrics: list[Mapping[str, str]] | None = None,
    card_note: str | None = None,
    attack: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Render the model card of one published repo.

    ``info``: ``family``, ``paper``, ``description`` and optionally ``bibtex`` of the architecture;
    ``stats``: :func:`model_stats`; ``training``: the recipe (flat mapping) or ``None``; ``training_time`` and
    ``hardware``: :func:`training_summary`; ``repo_url``: the code's repository (default :func:`default_repo_url`);
    ``label_names``: class names by output index; ``extra_metrics``: more rows (``name``, ``value``, ``method``),
    e.g. an empirical robust accuracy; ``attack``: an AutoAttack record (its metrics and rows are added).
    Commands and paths must already be portable (:func:`portable_path`).
    """
    from .server import DEFAULT_PORT

    model_id = f"{arch}.{tag}"
    dataset, family = claims["dataset"], info.get("family", "")
    card_data = _card_data(model_id, family, dataset, claims, license, attack)
    extra_metrics = list(extra_metrics or []) + (attack_rows(attack) if attack else [])
    eps = claims.get("eps", {})
    cert = dict(sorted(claims["certified_accuracy"].items(), key=lambda kv: float(eps.get(kv[0], 0))))  # by radius
    subset = claims.get("subset", "full")
    rows = [{"label": k, "value": f"{float(claims['eps'][k]):.4f}", "accuracy": _pct(v)} for k, v in cert.items()]
    return ModelCard.from_template(
        card_data, template_str=template_text(template_path), dataset=dataset, repo_url=repo_url or default_repo_url(),
        label_names=list(label_names or []), training_time=training_time, hardware=hardware,
        extra_metrics=list(extra_metrics or []), card_note=card_note, local_hub_port=DEFAULT_PORT,
        model_id=model_id, repo_id=repo_id, arch=arch, summary=_summary(family, arch, dataset, claims, cert),
        quick_subset=subset != "full",
        subset_description="lipzoo.verify's quick subset (100 images per class)" if subset == "quick"
        else f"the first {claims['n']} test images",
        **_model_values(info, stats, claims, dataset),
        license=license, split=claims.get("split", "test"), n=claims["n"], subset=subset,
        certifier_version=claims.get("certifier_version", "?"), dtype=claims.get("dtype", "float32"),
        clean_accuracy=_pct(claims["clean_accuracy"]), certified_rows=rows,
        training=[(k, _fmt(v)) for k, v in (training or {}).items()], train_command=train_command,
        reproduce_command=_reproduce_command(model_id, dataset, claims, subset), publish_command=publish_command,
        sha256=sha256,
        code_revision=(f"`{code_revision}`" + (" (with uncommitted changes)" if code_dirty else ""))
        if code_revision else "unknown",
        training_revision=f"`{training_revision}`" if training_revision else "unknown",
    )
