"""The manifest of published weights, ``lipzoo/hub/published.json``: one entry per ``arch.tag``.

An entry records where the weights live and what they must be (``hf_hub_id``, pinned ``revision``, ``sha256``,
``num_classes``, ``dataset``, the ``claims`` record ...). ``lipzoo publish`` writes it through :func:`record`;
it is never edited by hand. This module is the only reader and writer of the file: the models floor asks it for
the tags to register, the hub for the pin and sha256 to check a download against. It imports nothing of lipzoo,
so every floor may use it.
"""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

__all__ = ["PACKAGED_PATH", "manifest_path", "read", "entries_for", "lookup_repo", "record", "ManifestError"]

PACKAGED_PATH = Path(__file__).resolve().parent / "hub" / "published.json"


class ManifestError(ValueError):
    """``published.json`` cannot be read (invalid JSON): restore it, e.g. from git."""


def manifest_path() -> Path:
    """The manifest in use: ``$LIPZOO_PUBLISHED_JSON`` (tests, scratch publishing) or ``lipzoo/hub/published.json``."""
    return Path(os.environ.get("LIPZOO_PUBLISHED_JSON") or PACKAGED_PATH)


def _load(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists() or not path.read_text().strip():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON ({e}); restore it (e.g. from git)") from e


def read(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """``{'arch.tag': entry}`` of every published weight (empty when there is no manifest)."""
    return _load(Path(path) if path is not None else manifest_path())


def entries_for(arch: str, path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The entries of one architecture: ``{'sll_xs.cifar10': {...}, ...}``."""
    return {k: v for k, v in read(path).items() if k.split(".", 1)[0] == arch}


def lookup_repo(repo_id: str, model_id: str | None = None,
                path: str | os.PathLike | None = None) -> tuple[str, dict[str, Any]] | None:
    """``(arch.tag, entry)`` of the weights published as ``repo_id``: the entry ``model_id`` when it names that repo,
    else the first entry whose ``hf_hub_id`` is ``repo_id``; ``None`` for a repo the manifest does not list."""
    published = read(path)
    if model_id in published and published[model_id].get("hf_hub_id") == repo_id:
        return model_id, published[model_id]
    for key, entry in published.items():
        if entry.get("hf_hub_id") == repo_id:
            return key, entry
    return None


def record(model_id: str, entry: Mapping[str, Any], path: str | os.PathLike | None = None) -> Path:
    """Add or replace ``model_id`` in the manifest, under a file lock, by an atomic rename (a crash leaves either
    the old or the new file, never half of one)."""
    from filelock import FileLock

    target = Path(path) if path is not None else manifest_path()
    key = uuid.uuid5(uuid.NAMESPACE_URL, str(target.resolve())).hex
    with FileLock(str(Path(tempfile.gettempdir()) / f"lipzoo-published-{key}.lock")):
        data = _load(target)
        data[model_id] = dict(entry)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, target)
    return target
