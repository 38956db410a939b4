"""``lipzoo publish --card-only``: a new revision of a published repo with a new card and config, same weights.

The card and ``config.json`` of a published repo are rewritten with the current template and code (sections
added, local paths removed, timm's ``label_names``, the model's input statistics); ``model.safetensors`` and
``certified_accuracy.png`` are copied byte for byte. Nothing is re-measured: the claims are the published ones,
taken only after checking that they belong to these weights:

* the weights' sha256 equals the manifest's and the ``config.json`` block's;
* the ``config.json`` claims equal the manifest's claims;
* the weights load strictly into the architecture with the manifest's class count.

What is derived anew is computed from the weights (parameters, GMACs, the Lipschitz bound and input
normalisation shown under "Model stats") or read from the training run's records (``log.jsonl``,
``results.json``). The previous revision stays servable (:func:`lipzoo.hub.history.keep_revision`).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from .. import _checkout, _manifest
from .card import default_repo_url, portable_path, training_summary
from .publish import (Provenance, PublishError, PublishResult, _build_repo, _run_log, _upload_and_record,
                      published_json_path, write_config_and_card)
from .history import keep_revision
from .snapshot import HISTORY, hub_dir, sha256_file, snapshot_revision

__all__ = ["republish_card", "portable_command"]

_COPIED = ("model.safetensors", "certified_accuracy.png")


def portable_command(command: str) -> str:
    """A recorded ``lipzoo publish`` command line with every absolute path argument made portable
    (:func:`portable_path`): ``lipzoo publish /work/runs/x --arch a`` -> ``lipzoo publish x --arch a``."""
    return shlex.join(portable_path(a) if os.path.isabs(a) else a for a in shlex.split(command))


def _old_publish_command(folder: Path, block: dict[str, Any]) -> str | None:
    """The command that published the repo: the config's ``publish_command``, else the one the old card shows."""
    if block.get("publish_command"):
        return str(block["publish_command"])
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("lipzoo publish ")]
    return lines[-1] if lines else None


def _default_run_dir(model_id: str) -> Path | None:
    """``results/runs/<model_id>`` of the project checkout (the committed run records), when it exists."""
    root = _checkout.project_root()
    run = root / "results" / "runs" / model_id if root else None
    return run if run is not None and run.is_dir() else None


def republish_card(
    model_id: str,
    *,
    repo_url: str | None = None,
    hardware: str | None = None,
    run_dir: str | os.PathLike | None = None,
    hub: str | os.PathLike | None = None,
    endpoint: str | None = None,
    upload: bool = True,
    token: str | None = None,
) -> PublishResult:
    """Rewrite ``README.md`` and ``config.json`` of the published ``model_id`` (``arch.tag``) as a new revision;
    weights and claims unchanged. Record the new revision in the manifest; upload like :func:`publish`.

    Args:
        repo_url: the code's repository on the card (default :func:`lipzoo.hub.card.default_repo_url`).
        hardware: what the run was trained on (default: what the run's ``results.json`` records).
        run_dir: the training run's records (``log.jsonl``, ``results.json``) for training time and hardware;
            default ``results/runs/<model_id>`` of the checkout. Without one, the old config's values stay.
    Raises ``PublishError`` when the repo, its weights or its claims do not match the manifest.
    """
    import timm
    import torch
    from safetensors.torch import load_file

    from .._version import __version__

    registry = published_json_path()
    entry = _manifest.read(registry).get(model_id)
    if entry is None:
        raise PublishError(f"{model_id} is not in {registry.name}: publish it first (lipzoo publish CHECKPOINT ...)")
    arch, tag = model_id.split(".", 1)
    repo_id = entry["hf_hub_id"]
    hub_root = hub_dir(hub)
    folder = hub_root / repo_id
    config_path = folder / "config.json"
    missing = [n for n in ("config.json", *_COPIED) if not (folder / n).is_file()]
    if missing:
        raise PublishError(f"{folder} lacks {', '.join(missing)}: it is not the published repo of {model_id}")
    config = json.loads(config_path.read_text())
    block = config.get("lipzoo") or {}
    sha = sha256_file(folder / "model.safetensors")
    if not sha == entry["sha256"] == block.get("sha256"):
        raise PublishError(f"{folder / 'model.safetensors'} has sha256 {sha}, the manifest records {entry['sha256']} "
                           f"and config.json {block.get('sha256')}: these are not the published weights")
    if block.get("claims") != entry["claims"]:
        raise PublishError(f"the claims in {config_path} differ from the manifest's: republish with lipzoo publish")
    model = timm.create_model(arch, num_classes=int(entry["num_classes"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    model.eval()

    run = Path(run_dir) if run_dir else _default_run_dir(model_id)
    record = None
    if run is not None and (run / "results.json").is_file():
        record = json.loads((run / "results.json").read_text())
    old_training = block.get("training") or None
    if record is not None and (record.get("arch") != arch or (old_training or {}).get("git_revision") not in
                               (None, record.get("git_revision"))):
        raise PublishError(f"{portable_path(run)} is another training run than the one published as {model_id} "
                           "(architecture or git revision differ): pass the right run folder with --results")
    training_time, hardware = training_summary(_run_log(run), record, hardware)
    training = None
    if old_training:
        training = {k: v for k, v in old_training.items() if k not in ("time", "hardware")}
        training_time = training_time or old_training.get("time")
        hardware = hardware or old_training.get("hardware")
    command = _old_publish_command(folder, block)
    provenance = Provenance(
        code_revision=block.get("code_revision"), code_dirty=bool(block.get("code_dirty")),
        lipzoo_version=block.get("lipzoo_version", __version__),
        publish_command=portable_command(command) if command else f"lipzoo publish runs/{model_id} --arch {arch} --tag {tag}",
        repo_url=repo_url or default_repo_url(), training=training, training_time=training_time, hardware=hardware,
        card_code_revision=_checkout.code_revision()[0] or "unknown",
    )
    license = (config.get("pretrained_cfg") or {}).get("license", "mit")
    old_revision = entry.get("revision")

    def fill(staging: Path) -> str:
        for name in _COPIED:
            shutil.copyfile(folder / name, staging / name)
        if (folder / HISTORY).is_dir():
            shutil.copytree(folder / HISTORY, staging / HISTORY)
        with torch.no_grad():
            write_config_and_card(staging, model, repo_id=repo_id, arch=arch, tag=tag, claims=block["claims"],
                                  sha256=sha, provenance=provenance, license=license,
                                  attack=block.get("autoattack"))  # the published AutoAttack record stays
        if old_revision and snapshot_revision(staging, repo_id) != old_revision:  # keep the revision it replaces
            if not keep_revision(folder, repo_id, old_revision, shared=_COPIED, into=staging):
                messages.append(f"{folder} is not at the pinned revision {old_revision}: that revision is not kept")
        if sha256_file(staging / "model.safetensors") != sha:
            raise PublishError(f"{folder / 'model.safetensors'} changed while the card was rewritten; try again")
        return sha

    messages: list[str] = []
    new_folder, sha, revision = _build_repo(hub_root, repo_id, fill, messages)
    if revision == old_revision:
        messages.append("the card and config.json are unchanged: same revision")
    out = PublishResult(model_id, repo_id, new_folder, sha, dict(block["claims"]), revision, messages=messages)
    return _upload_and_record(out, {**entry, "revision": revision}, hub_root, registry, upload=upload,
                              endpoint=endpoint, token=token)
