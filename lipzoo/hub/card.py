"""Model cards: ``README.md`` of a published repo, rendered from ``model_cards/template.md``.

The front matter is built with ``huggingface_hub.ModelCardData`` and ``EvalResult``: ``library_name: timm``,
license, tags, datasets, and a ``model-index`` with the clean accuracy (``type: accuracy``) and one
``type: certified_accuracy`` metric per eps (``args: {norm: L2, eps: <float>, eps_label: '36/255'}``). Values
are fractions in [0, 1], exactly as in the claims record, so :func:`claims_from_card` gives the claims back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .snapshot import REPO_ROOT

__all__ = ["TEMPLATE", "DATASET_NAMES", "claims_to_eval_results", "claims_from_eval_results", "claims_from_card",
           "model_stats", "render_card"]

TEMPLATE = REPO_ROOT / "model_cards" / "template.md"
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
CERTIFIED = "certified_accuracy"
_RULES = {
    "lln": "LLN head: min over all classes j != top of (z_top - z_j) / (||w_top - w_j|| L)",
    "lipschitz": "1-Lipschitz head: (z_top - z_second) / (sqrt(2) L)",
    "mlp_curvature": "curvature-bounded MLP head (Singla et al., NeurIPS 2022), divided by L",
}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def claims_to_eval_results(claims: Mapping[str, Any]) -> list[EvalResult]:
    """The claims record as ``EvalResult``s: clean accuracy, then one certified accuracy per eps, each with its
    label and its value (``metric_args``). A record whose eps labels and values disagree is refused with a
    ``ValueError`` (:func:`lipzoo.verify.claimed_eps`): a card never shows a label for another eps."""
    from ..verify import claimed_eps

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
) -> ModelCard:
    """Render the model card of one published repo.

    ``info``: ``family``, ``paper``, ``description`` and optionally ``bibtex`` of the architecture;
    ``stats``: :func:`model_stats`; ``training``: the recipe (flat mapping) or ``None``.
    """
    template = Path(template_path or TEMPLATE)
    if not template.is_file():
        raise FileNotFoundError(f"model card template {template} not found; pass template_path= or run from a lipzoo checkout")
    model_id = f"{arch}.{tag}"
    dataset = claims["dataset"]
    family = info.get("family", "")
    card_data = ModelCardData(
        library_name="timm", license=license, pipeline_tag="image-classification",
        tags=["image-classification", "timm", "lipzoo", "certified-robustness", "lipschitz", "1-lipschitz", family, dataset],
        datasets=[dataset], metrics=["accuracy", CERTIFIED], model_name=model_id,
        eval_results=claims_to_eval_results(claims),
    )
    cert = claims["certified_accuracy"]
    first = next(iter(cert), None)
    summary = (f"A certifiably robust {family.upper()} network (`{arch}`) trained on "
               f"{DATASET_NAMES.get(dataset, dataset)}: clean accuracy {_pct(claims['clean_accuracy'])}"
               + (f", certified l2 robust accuracy {_pct(cert[first])} at eps={first}" if first else "")
               + ". Every number on this card was measured by lipzoo's certifier and is re-checked on download.")
    subset = claims.get("subset", "full")
    rows = [{"label": k, "value": f"{float(claims['eps'][k]):.4f}", "accuracy": _pct(v)} for k, v in cert.items()]
    if subset == "full" or subset.startswith("first_"):
        reproduce = f"lipzoo certify {model_id} --pretrained" + (f" --n {claims['n']}" if subset != "full" else "")
    else:  # lipzoo.verify's stratified quick subset
        reproduce = "\n".join([
            "python - <<'EOF'",
            "import lipzoo",
            "from lipzoo.certify import certify",
            "from lipzoo.data import CIFAR",
            "from lipzoo.verify import quick_subset_indices",
            f"model = lipzoo.create_model({model_id!r}, pretrained=True)",
            f"images, labels = CIFAR({dataset!r}, 'test').tensors()",
            "idx = quick_subset_indices(labels)",
            f"print(certify(model, images[idx], labels[idx]).to_claims({dataset!r}, 'test', 'quick'))",
            "EOF",
        ])
    scope = "input normalisation and body" if claims.get("head_rule", "lln") != "lipschitz" else "whole network"
    norm = float(stats["norm_factor"])
    norm_effect = ("the std is 1, so the normalisation does not change the radius." if abs(norm - 1) < 1e-12 else
                   f"without it, radii in normalised space would be {norm:.4g} times larger than the pixel-space "
                   "radii reported here.")
    card = ModelCard.from_template(
        card_data, template_path=str(template),
        model_id=model_id, repo_id=repo_id, arch=arch, summary=summary, quick_subset=subset != "full",
        subset_description="lipzoo.verify's quick subset (100 images per class)" if subset == "quick"
        else f"the first {claims['n']} test images",
        family_upper=family.upper(), description=info.get("description", ""), paper=info.get("paper", ""),
        bibtex=info.get("bibtex"), dataset_name=DATASET_NAMES.get(dataset, dataset), num_classes=claims.get("num_classes") or
        {"cifar10": 10, "cifar100": 100}.get(dataset, "?"),
        params_m=f"{stats['params'] / 1e6:.2f}", gmacs=f"{stats['gmacs']:.3f}" if stats.get("gmacs") is not None else "n/a",
        image_size="x".join(str(s) for s in stats.get("input_size", [3, 32, 32])[1:]),
        lipschitz_bound=f"{float(claims.get('lipschitz_bound', stats['lipschitz_bound'])):.8g}", bound_scope=scope,
        radius_rule=_RULES.get(claims.get("head_rule", ""), claims.get("head_rule", "")),
        mean=_fmt(stats["mean"]), std=_fmt(stats["std"]), norm_factor=f"{norm:.4g}", norm_effect=norm_effect,
        license=license, split=claims.get("split", "test"), n=claims["n"], subset=subset,
        certifier_version=claims.get("certifier_version", "?"), dtype=claims.get("dtype", "float32"),
        clean_accuracy=_pct(claims["clean_accuracy"]), certified_rows=rows,
        training=[(k, _fmt(v)) for k, v in (training or {}).items()], train_command=train_command,
        reproduce_command=reproduce, publish_command=publish_command, sha256=sha256,
        code_revision=(f"`{code_revision}`" + (" (with uncommitted changes)" if code_dirty else ""))
        if code_revision else "unknown",
        training_revision=f"`{training_revision}`" if training_revision else "unknown",
    )
    return card
