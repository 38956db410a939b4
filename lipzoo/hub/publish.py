"""``lipzoo publish``: certify a checkpoint, write its hub repo, upload it, record it in ``published.json``.

One published model ``<arch>.<tag>`` is the repo ``lipzoo/<arch>.<tag>`` (timm's ``save_for_hf`` layout):

* ``model.safetensors``: the state dict (the only weights file; no pickle);
* ``config.json``: timm's config (``architecture``, ``num_classes``, ``num_features``, ``model_args``,
  ``pretrained_cfg``) plus a ``lipzoo`` block: family, paper, the claims record, the training recipe, the
  code revision and the sha256 of ``model.safetensors``;
* ``README.md``: the model card (:mod:`lipzoo.hub.card`) and ``certified_accuracy.png``.

The claims are always **measured** here, with the shared certifier on the full test set (``quick=True``
measures ``lipzoo.verify``'s quick subset, or the first ``quick_n`` images, for tests only). The repo folder is
written to ``<hub_dir>/<org>/<name>`` by building it beside the old one and swapping it in, so an existing repo is
never left half-written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .. import _checkout, _manifest
from .snapshot import HISTORY, GitUnavailableError, check_repo_id, hub_dir, replace_dir, sha256_file, snapshot_revision

__all__ = ["publish", "PublishResult", "PublishError", "record_published", "published_json_path", "resolve_endpoint"]

LOCAL_TOKEN = "lipzoo-local-hub"  # sent to loopback hubs instead of a real token
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class PublishError(RuntimeError):
    pass


@dataclass
class PublishResult:
    """What :func:`publish` did. ``revision`` is the snapshot sha the local hub serves (``None`` without git);
    ``hub_revision`` the commit made by an upload to another hub, when it differs."""

    model_id: str
    repo_id: str
    folder: Path
    sha256: str
    claims: dict[str, Any]
    revision: str | None
    hub_revision: str | None = None
    endpoint: str | None = None
    uploaded: bool = False
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"published {self.model_id} -> {self.folder}", f"  sha256   {self.sha256}",
                 f"  revision {self.revision}"]
        if self.hub_revision:
            lines.append(f"  hub revision {self.hub_revision}")
        lines.append(f"  clean {100 * self.claims['clean_accuracy']:.2f}%  " + "  ".join(
            f"{k}: {100 * v:.2f}%" for k, v in self.claims["certified_accuracy"].items()) + f"  (n={self.claims['n']})")
        return "\n".join(lines + [f"  {m}" for m in self.messages])


def published_json_path() -> Path:
    """The manifest publish writes (``$LIPZOO_PUBLISHED_JSON`` or ``lipzoo/hub/published.json``)."""
    return _manifest.manifest_path()


def record_published(model_id: str, entry: Mapping[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Add or replace ``model_id`` in the manifest (:func:`lipzoo._manifest.record`: locked, atomic); an
    unreadable manifest is a :class:`PublishError`, and is left as it is."""
    try:
        return _manifest.record(model_id, entry, path)
    except _manifest.ManifestError as e:
        raise PublishError(f"{e} before publishing") from e


def resolve_endpoint(endpoint: str | None = None, token: str | None = None) -> tuple[str, str | None]:
    """``(endpoint, token)`` of the upload: ``endpoint`` > ``$HF_ENDPOINT`` > the Hugging Face Hub when a token
    is set > the local hub on its default port. Loopback hubs never get a real Hugging Face token: they get the
    local hub's write token (``$LIPZOO_HUB_TOKEN``, else the one the server on that port wrote), else a
    placeholder the hub refuses with a message saying what to do."""
    from huggingface_hub import get_token

    from .server import DEFAULT_PORT

    token = token or get_token()
    ep = endpoint or os.environ.get("HF_ENDPOINT") or ("https://huggingface.co" if token else f"http://127.0.0.1:{DEFAULT_PORT}")
    if _is_loopback(ep):
        token = _local_token(ep)
    return ep.rstrip("/"), token


def _local_token(endpoint: str) -> str:
    """The write token for the local hub at ``endpoint``: ``$LIPZOO_HUB_TOKEN``, the server's token file, or
    :data:`LOCAL_TOKEN`."""
    from .server import TOKEN_ENV, read_token

    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    return os.environ.get(TOKEN_ENV) or read_token(port) or LOCAL_TOKEN


def _local_hub_read_only(endpoint: str) -> bool:
    """Whether ``endpoint`` is a lipzoo local hub started without ``--allow-writes`` (``False`` if unknown)."""
    import urllib.request

    from .server import STATUS_ROUTE

    try:
        with urllib.request.urlopen(endpoint + STATUS_ROUTE, timeout=5) as r:
            return json.loads(r.read()).get("writes") is False
    except (OSError, ValueError, AttributeError):  # not a lipzoo hub, or an older one
        return False


def _is_loopback(endpoint: str) -> bool:
    return (urlsplit(endpoint).hostname or "") in ("127.0.0.1", "localhost", "::1")


def _is_project_data(registry: Path, hub_root: Path) -> bool:
    """Whether publishing would write the project's own manifest or its checkout's ``hub/`` folder."""
    root = _checkout.project_root()
    return (registry.resolve() == _manifest.PACKAGED_PATH.resolve()
            or (root is not None and hub_root.resolve() == (root / "hub").resolve()))


def _load_weights(model, checkpoint: Path) -> Path | None:
    """Load ``checkpoint`` into ``model``; returns the training run directory when there is one."""
    from ..convert import load_checkpoint

    if checkpoint.is_dir():
        weights = checkpoint / "model.safetensors"
        if not weights.is_file():
            found = ", ".join(sorted(p.name for p in checkpoint.iterdir())) or "nothing"
            raise PublishError(f"{checkpoint} holds no model.safetensors (found: {found}); pass the weights file, or "
                               "finish the training run (it exports model.safetensors at the end)")
        load_checkpoint(model, weights)
        return checkpoint
    if not checkpoint.is_file():
        raise PublishError(f"checkpoint {checkpoint} does not exist")
    load_checkpoint(model, checkpoint)
    return checkpoint.parent


def _training_record(results: str | os.PathLike | None, run_dir: Path | None) -> dict[str, Any] | None:
    path = Path(results) if results else (run_dir / "results.json" if run_dir else None)
    if path is None or not path.is_file():
        if results:
            raise PublishError(f"training results file {results} does not exist")
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PublishError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise PublishError(f"{path} must hold a JSON object (the training run's results.json)")
    return record


def _cli_value(value: Any) -> str:
    """A recipe value as ``lipzoo train`` parses it: tuples comma-separated, dicts as quoted JSON."""
    if isinstance(value, dict):
        return "'" + json.dumps(value) + "'"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _train_command(recipe: Mapping[str, Any], model_id: str, initial: Mapping[str, Any] | None = None) -> str | None:
    """The ``lipzoo train`` command that reruns ``recipe``: the named recipe plus an override per training field
    that differs from its current defaults (the free-text ``description`` changes nothing and is left out), and
    ``--initial-checkpoint`` when the run started from given weights (``initial``: their file name and sha256)."""
    name = recipe.get("name")
    if not name:
        return None
    parts = ["lipzoo train", f"--recipe {name}"]
    try:
        from ..train.recipes import get_recipe

        base = json.loads(json.dumps(get_recipe(name).to_dict()))
        for key, value in recipe.items():
            if key not in ("name", "description") and base.get(key) != value:
                parts.append(f"--{key.replace('_', '-')} {_cli_value(value)}")
    except Exception:  # an unknown or changed recipe: show the recipe table only
        pass
    if initial:
        origin = published_origin(str(initial.get("sha256")))
        parts.append("--initial-checkpoint " + (f"hub/{origin.split('@')[0]}/model.safetensors" if origin
                                                  else str(initial.get("file"))))
    return " ".join(parts + [f"--out runs/{model_id}"])


def published_origin(sha256: str, manifest: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
    """``'lipzoo/<arch>.<tag>@<revision>'``: the published revision whose weights have ``sha256`` (current or
    previous revisions of ``published.json``), or ``None``."""
    for entry in (manifest if manifest is not None else _manifest.read()).values():
        for rev in [entry, *(entry.get("previous") or [])]:
            if rev.get("sha256") == sha256:
                return f"{entry.get('hf_hub_id')}@{rev.get('revision')}"
    return None


def _initial_checkpoint_text(initial: Mapping[str, Any]) -> str:
    """The card's line for a run that started from given weights: the file, its sha256 and where it was published."""
    origin = published_origin(str(initial.get("sha256")))
    return (f"{initial.get('file')} (sha256 {str(initial.get('sha256'))[:16]}...)"
            + (f", the published weights of {origin}" if origin else ", not published weights"))


def _accuracies(claims: Mapping[str, Any]) -> dict[str, float]:
    """Clean and certified accuracies of a claims record, rounded to 1e-9 for comparison."""
    acc = {"clean": claims.get("clean_accuracy", -1.0), **claims.get("certified_accuracy", {})}
    return {k: round(float(v), 9) for k, v in acc.items()}


def _upload(folder: Path, repo_id: str, model_id: str, sha: str, endpoint: str, token: str | None) -> str:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token, library_name="lipzoo")
    api.create_repo(repo_id, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), delete_patterns="*",
                             ignore_patterns=f"{HISTORY}/*",  # kept old revisions are the local hub's business
                             commit_message=f"Publish {model_id} (model.safetensors sha256 {sha[:16]})")
    return info.oid


def publish(
    checkpoint: str | os.PathLike,
    arch: str,
    tag: str,
    *,
    repo_id: str | None = None,
    endpoint: str | None = None,
    results: str | os.PathLike | None = None,
    hub: str | os.PathLike | None = None,
    quick: bool = False,
    quick_n: int | None = None,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 250,
    upload: bool = True,
    token: str | None = None,
    license: str = "mit",
    repo_url: str | None = None,
    hardware: str | None = None,
    attack: bool | None = None,
    attack_n: int | None = None,
) -> PublishResult:
    """Certify ``checkpoint`` as ``<arch>.<tag>``, write its repo into the hub folder, upload it, record it.

    Args:
        checkpoint: a lipzoo ``.safetensors`` state dict, a training run directory holding ``model.safetensors``,
            or another lipzoo checkpoint file (read with ``torch.load(weights_only=True)``).
        arch: a registered architecture (``'sll_xs'``; hyphens accepted).
        tag: ``<dataset>[_<recipe>]``, e.g. ``'cifar10'``; the dataset (cifar10/cifar100) is certified on.
        repo_id: default ``'lipzoo/<arch>.<tag>'``.
        endpoint: upload target (see :func:`resolve_endpoint`). ``upload=False`` or an unreachable endpoint
            skips the upload (with a message); the repo folder and ``published.json`` are written anyway.
        results: the training run's ``results.json`` (recipe, git revision); default: next to the checkpoint.
            Its claims are never copied: they are compared with the measurement.
        hub: the hub folder (default ``$LIPZOO_HUB_DIR`` or the project's ``hub/``).
        quick: certify only ``lipzoo.verify``'s quick subset (1000 stratified test images; subset ``"quick"``)
            or, with ``quick_n``, the first ``quick_n`` images (subset ``"first_<n>"``). For tests: refused for
            the project's own ``hub/`` and ``published.json``.
        repo_url: the code's repository named on the card (default: ``[project.urls]`` of ``pyproject.toml``).
        hardware: what the run was trained on, for the card (default: what ``results.json`` records).
        attack: run AutoAttack (:func:`lipzoo.attack.attack_dataset`, needs ``lipzoo[attack]``) on the first
            ``attack_n`` (default 1000) test images; default on, off for ``quick``. A model that the attack breaks
            at a certified image (certified > robust accuracy there: a broken certificate) is refused.

    The card's training time comes from the run's ``log.jsonl`` when there is one. No local path is written
    into the card or ``config.json``: the checkpoint is named relative to the project, or by its run folder.
    """
    import timm

    from ..certification import plot_certified_accuracy
    from ..data import NUM_CLASSES
    from ..models._registry import resolve_name
    from .card import DATASET_NAMES, portable_path

    arch, dataset = _arch_and_dataset(arch, tag)
    model_id = f"{arch}.{tag}"
    repo_id = repo_id or f"lipzoo/{model_id}"
    check_repo_id(repo_id)
    hub_root = hub_dir(hub)
    registry = published_json_path()
    if quick and _is_project_data(registry, hub_root):
        raise PublishError("--quick claims are for tests only: point LIPZOO_PUBLISHED_JSON and --hub-dir (or "
                           "LIPZOO_HUB_DIR) at scratch locations, or publish without --quick")
    messages: list[str] = []

    # 1. weights
    model = timm.create_model(arch, num_classes=NUM_CLASSES[dataset])
    run_dir = _load_weights(model, Path(checkpoint))
    model.eval()
    record = _training_record(results, run_dir)
    if record and record.get("arch") and resolve_name(str(record["arch"])) != arch:
        raise PublishError(f"the training results are for {record['arch']!r}, not {arch!r}")

    # 2. claims: measured, never copied
    result, claims = _measure(model, dataset, data_root, quick, quick_n, batch_size)
    trained = (record or {}).get("claims") or {}
    if trained.get("subset") == claims["subset"] == "full" and _accuracies(trained) != _accuracies(claims):
        messages.append("note: the training run's results.json reports other accuracies than this measurement; "
                        "the card uses the measurement")
    autoattack = _autoattack(model, model_id, dataset, data_root, not quick if attack is None else attack, attack_n,
                             batch_size)

    # 3. the repo folder, built beside the old one
    command = f"lipzoo publish {portable_path(checkpoint)} --arch {arch} --tag {tag}"
    command += f" --repo-id {repo_id}" if repo_id != f"lipzoo/{model_id}" else ""
    command += (" --quick" + (f" --quick-n {quick_n}" if quick_n else "")) if quick else ""
    command += " --no-attack" if autoattack is None and not quick else ""
    command += f" --attack-n {attack_n}" if autoattack is not None and attack_n else ""
    provenance = _provenance(command, run_dir, record, repo_url, hardware)
    try:
        replaced = _manifest.read(registry).get(model_id)  # the entry this publish replaces
    except _manifest.ManifestError as e:
        raise PublishError(f"{e} before publishing") from e

    def fill(staging: Path) -> str:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        sha = sha256_file(staging / "model.safetensors")
        plot_certified_accuracy(result, staging / "certified_accuracy.png",
                                title=f"{model_id}: {DATASET_NAMES[dataset]} test, n={claims['n']}")
        write_config_and_card(staging, model, repo_id=repo_id, arch=arch, tag=tag, claims=claims, sha256=sha,
                              provenance=provenance, license=license, attack=autoattack)
        keep_replaced_revision(hub_root / repo_id, staging, repo_id, (replaced or {}).get("revision"), messages)
        return sha

    folder, sha, revision = _build_repo(hub_root, repo_id, fill, messages)

    # 4. upload, then record (the hub folder is the offline truth even when the upload fails)
    out = PublishResult(model_id, repo_id, folder, sha, claims, revision, messages=messages)
    entry = {"hf_hub_id": repo_id, "revision": revision, "sha256": sha, "num_classes": NUM_CLASSES[dataset],
             "dataset": dataset, "claims": claims, **previous_revisions(replaced, revision)}
    return _upload_and_record(out, entry, hub_root, registry, upload=upload, endpoint=endpoint, token=token)


def _arch_and_dataset(arch: str, tag: str) -> tuple[str, str]:
    """The registered architecture and the dataset a ``tag`` names; :class:`PublishError` for a bad pair."""
    from ..data import NUM_CLASSES
    from ..models._registry import resolve_name

    arch = resolve_name(arch)
    if "." in arch:
        raise PublishError(f"pass the architecture without a tag (got {arch!r}); the tag goes in --tag")
    if not _TAG.match(tag or ""):
        raise PublishError(f"invalid tag {tag!r}: use letters, digits, '_' and '-', e.g. 'cifar10' or 'cifar10_sllcpu'")
    dataset = tag.split("_")[0].lower()
    if dataset not in NUM_CLASSES:
        raise PublishError(f"the tag must start with the dataset it was trained on ({', '.join(NUM_CLASSES)}), got {tag!r}")
    return arch, dataset


def _measure(model, dataset: str, data_root: str | None, quick: bool, quick_n: int | None, batch_size: int):
    """``(certification result, claims)`` of ``model`` on the test set: full, or (tests only) ``lipzoo.verify``'s
    quick subset or the first ``quick_n`` images."""
    import torch

    from ..certification import certify
    from ..data import CIFAR

    images, labels = CIFAR(dataset, "test", root=data_root).tensors()
    subset = "full"
    if quick and quick_n:
        images, labels, subset = images[:quick_n], labels[:quick_n], f"first_{min(quick_n, len(labels))}"
    elif quick:
        from ..verification import quick_subset_indices

        idx = torch.from_numpy(quick_subset_indices(labels))
        images, labels, subset = images[idx], labels[idx], "quick"
    result = certify(model, images, labels, batch_size=batch_size)
    return result, result.to_claims(dataset, "test", subset)


def _autoattack(model, model_id: str, dataset: str, data_root: str | None, run: bool, n: int | None,
                batch_size: int) -> dict[str, Any] | None:
    """The AutoAttack record of ``model`` on the first ``n`` test images (``None`` when not ``run``);
    :class:`PublishError` when the attack breaks a certified image."""
    if not run:
        return None
    from ..attack import ATTACK_N, attack_dataset

    record = attack_dataset(model, dataset, n or ATTACK_N, root=data_root, batch_size=batch_size, progress=True)
    if not record["passed"]:
        raise PublishError(
            f"refused: AutoAttack broke certified images of {model_id} on the first {record['n']} test images "
            f"(broken {record['broken']}, certified {record['certified_accuracy']} vs robust "
            f"{record['robust_accuracy']}): a broken certificate. Check lipschitz_bound() and the certifier")
    return record


def _provenance(command: str, run_dir: Path | None, record: Mapping[str, Any] | None, repo_url: str | None,
                hardware: str | None) -> "Provenance":
    """The provenance of a new publish: this code's revision, ``command``, and the training run's record."""
    from .._version import __version__
    from .card import default_repo_url, training_summary

    code_revision, dirty = _checkout.code_revision()
    training_time, hardware = training_summary(_run_log(run_dir), record, hardware)
    return Provenance(
        code_revision=code_revision, code_dirty=dirty, lipzoo_version=__version__, publish_command=command,
        repo_url=repo_url or default_repo_url(), training_time=training_time, hardware=hardware,
        training={"recipe": record.get("recipe") or None, "git_revision": record.get("git_revision"),
                  "torch": record.get("torch"),
                  **({"initial_checkpoint": record["initial_checkpoint"]} if record.get("initial_checkpoint") else {})}
        if record else None)


@dataclass
class Provenance:
    """Where a published repo comes from, as its ``config.json`` (``lipzoo`` block) and card state it. Every path
    in it is portable (:func:`lipzoo.hub.card.portable_path`). ``card_code_revision``: the code that rewrote the
    card and config of an existing repo (``lipzoo publish --card-only``), when it is not the publishing code."""

    code_revision: str | None
    code_dirty: bool
    lipzoo_version: str
    publish_command: str
    repo_url: str
    training: dict[str, Any] | None = None
    training_time: str | None = None
    hardware: str | None = None
    card_code_revision: str | None = None


def write_config_and_card(folder: Path, model, *, repo_id: str, arch: str, tag: str, claims: Mapping[str, Any],
                          sha256: str, provenance: Provenance, license: str = "mit",
                          attack: Mapping[str, Any] | None = None) -> None:
    """Write ``config.json`` (timm's ``save_config_for_hf`` layout with ``label_names``, plus the ``lipzoo`` block)
    and the ``README.md`` model card of ``model`` (its weights hash ``sha256``) into ``folder``; ``attack``: the
    AutoAttack record (``lipzoo.autoattack`` in config.json, metrics and rows on the card)."""
    from timm.models._hub import save_config_for_hf

    from ..models._registry import ARCHS
    from .card import LABEL_NAMES, model_stats, render_card

    info = ARCHS[arch]
    labels = LABEL_NAMES.get(claims["dataset"])
    p = provenance
    block = {
        "family": info.family, "arch": arch, "tag": tag, "paper": info.paper, "claims": dict(claims),
        "sha256": sha256, "code_revision": p.code_revision, "code_dirty": p.code_dirty,
        "lipzoo_version": p.lipzoo_version, "repo_url": p.repo_url, "publish_command": p.publish_command,
        "training": {**p.training, "time": p.training_time, "hardware": p.hardware} if p.training else None,
    }
    if p.card_code_revision:
        block["card_code_revision"] = p.card_code_revision
    if attack:
        block["autoattack"] = dict(attack)
    model_config: dict[str, Any] = {
        "pretrained_cfg": {"tag": tag, "license": license, "paper_name": info.paper, "description": info.description},
        "lipzoo": block,
    }
    if labels and len(labels) == model.num_classes:
        model_config["label_names"] = list(labels)
    save_config_for_hf(model, str(folder / "config.json"), model_config=model_config)
    recipe = (p.training or {}).get("recipe") or None
    initial = (p.training or {}).get("initial_checkpoint")
    model_id = f"{arch}.{tag}"
    card = render_card(
        repo_id=repo_id, arch=arch, tag=tag, claims=claims, stats=model_stats(model), sha256=sha256,
        info={"family": info.family, "paper": info.paper, "description": info.description,
              "bibtex": info.extra.get("bibtex")},
        code_revision=p.code_revision, code_dirty=p.code_dirty, publish_command=p.publish_command,
        training={**recipe, **({"initial weights": _initial_checkpoint_text(initial)} if initial else {})}
        if recipe else None, license=license,
        train_command=_train_command(recipe, model_id, initial) if recipe else None,
        training_revision=(p.training or {}).get("git_revision"), repo_url=p.repo_url, label_names=labels,
        training_time=p.training_time, hardware=p.hardware,
        card_note=f"card and config.json rewritten by code revision `{p.card_code_revision}` "
                  "(`lipzoo publish --card-only`); weights and claims unchanged" if p.card_code_revision else None,
        attack=attack,
    )
    card.save(str(folder / "README.md"))


def _run_log(run_dir: Path | None) -> list[dict[str, Any]]:
    """The epoch records of a training run's ``log.jsonl`` (empty when there is none or a line is not JSON)."""
    path = run_dir / "log.jsonl" if run_dir else None
    if path is None or not path.is_file():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError:
        return []


def keep_replaced_revision(folder: Path, staging: Path, repo_id: str, old_revision: str | None,
                           messages: list[str]) -> None:
    """Carry the kept revisions of the repo ``folder`` into ``staging`` and keep the revision ``staging`` replaces
    (all its files, weights included), so that revisions pinned before stay servable after every restart of the
    local hub (:mod:`lipzoo.hub.history`)."""
    from .history import keep_revision

    if not folder.is_dir():
        return
    if (folder / HISTORY).is_dir() and not (staging / HISTORY).exists():
        shutil.copytree(folder / HISTORY, staging / HISTORY)
    if old_revision and snapshot_revision(staging, repo_id) != old_revision:
        if not keep_revision(folder, repo_id, old_revision, into=staging):
            messages.append(f"{folder} is not at the pinned revision {old_revision}: that revision is not kept")


def previous_revisions(replaced: Mapping[str, Any] | None, revision: str | None) -> dict[str, Any]:
    """``{'previous': [...]}`` for the manifest entry that replaces ``replaced``: the revisions published before,
    newest first, each with the sha256 of its weights, so that ``load_pretrained(..., revision=<old>)`` checks the
    old weights against their own pin (``{}`` when there are none)."""
    replaced = replaced or {}
    kept = [dict(p) for p in replaced.get("previous") or []]
    old = replaced.get("revision")
    if old and old != revision and replaced.get("sha256"):
        kept.insert(0, {k: replaced[k] for k in ("revision", "hub_revision", "sha256") if replaced.get(k)})
    kept = [p for i, p in enumerate(kept) if p.get("revision") != revision
            and p.get("revision") not in [q.get("revision") for q in kept[:i]]]
    return {"previous": kept} if kept else {}


def _build_repo(hub_root: Path, repo_id: str, fill, messages: list[str]) -> tuple[Path, str, str | None]:
    """Build the repo folder of ``repo_id`` beside the old one (``fill(staging)`` writes the files and returns the
    weights' sha256), compute its snapshot revision and swap it in. Returns ``(folder, sha256, revision)``."""
    org, name = check_repo_id(repo_id)
    hub_root.joinpath(org).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.staging-", dir=hub_root / org))
    try:
        sha = fill(staging)
        try:
            revision = snapshot_revision(staging, repo_id)
        except GitUnavailableError as e:
            revision = None
            messages.append(f"no revision recorded: {e}")
        folder = hub_root / org / name
        replace_dir(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, sha, revision


def _upload_and_record(out: PublishResult, entry: dict[str, Any], hub_root: Path, registry: Path, *, upload: bool,
                       endpoint: str | None, token: str | None) -> PublishResult:
    """Upload ``out.folder`` when a writable hub answers, then record ``entry`` in the manifest (also when the
    upload fails: the hub folder is the offline truth); a failed upload is raised after the record."""
    messages, folder, repo_id, model_id = out.messages, out.folder, out.repo_id, out.model_id
    upload_error: Exception | None = None
    if upload:
        from .server import endpoint_reachable

        ep, tok = resolve_endpoint(endpoint, token)
        out.endpoint = ep
        if not endpoint_reachable(ep):
            messages.append(f"no hub reachable at {ep}: upload skipped. The repo is in {hub_root}; `lipzoo hub serve` "
                            "serves it, or publish again with --endpoint")
        elif _is_loopback(ep) and _local_hub_read_only(ep):
            messages.append(f"the local hub at {ep} is read-only: upload skipped. The repo is in {hub_root}; restart "
                            "`lipzoo hub serve` to serve it, or start it with --allow-writes and publish again")
        else:
            try:
                oid = _upload(folder, repo_id, model_id, out.sha256, ep, tok)
                out.uploaded = True
                messages.append(f"uploaded to {ep}/{repo_id} @ {oid}")
                if oid != out.revision:
                    out.hub_revision = oid
                    if _is_loopback(ep):
                        messages.append(f"warning: the local hub's revision {oid} differs from hub/'s snapshot "
                                        f"{out.revision}")
            except Exception as e:  # recorded below; the error is raised after the registry is consistent
                upload_error = e
    else:
        messages.append("upload skipped (upload=False)")
    entry = dict(entry)
    entry.pop("hub_revision", None)
    if out.hub_revision:
        entry["hub_revision"] = out.hub_revision
    record_published(model_id, entry, registry)
    if upload_error is not None:
        raise PublishError(f"{model_id} was written to {folder} and recorded in {registry}, but the upload to "
                           f"{out.endpoint} failed: {upload_error}. Publish again to retry the upload.") from upload_error
    return out
