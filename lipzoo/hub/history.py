"""Superseded revisions of a repo folder, kept so that revisions pinned by older manifests stay servable.

A repo folder holds only its current files; the local hub serves them as one deterministic snapshot commit
(:mod:`lipzoo.hub.snapshot`), whose sha depends on the files. When a repo gets a new revision without new
weights (``lipzoo publish --card-only``), the old revision is kept in ``<repo>/.revisions/``:

* ``<revision>.json``: ``{"revision", "order", "files": {path: sha256}}``, the complete file list of it;
* ``blobs/<sha256>``: the content of each of its files, except those given as ``shared`` (the weights and plot,
  copied unchanged into the new revision: they are taken from the current folder, found by their sha256).

:func:`replay` rebuilds each kept revision (oldest first) in a mirror before the current one, and checks that the
commit has exactly the recorded sha, so a pin keeps resolving after every restart of the hub. ``.revisions`` is
never part of a snapshot (:func:`lipzoo.hub.snapshot.repo_files` skips it). The files in it are byte-exact copies
of what was published then, local paths of old cards included: they are history, not served at ``main``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from .snapshot import HISTORY, repo_files, sha256_file, snapshot_commit, snapshot_revision

__all__ = ["HISTORY", "keep_revision", "kept_revisions", "replay"]


def kept_revisions(folder: str | Path) -> list[dict]:
    """The records of the revisions kept in ``folder`` (oldest first)."""
    root = Path(folder) / HISTORY
    records = [json.loads(p.read_text()) for p in root.glob("*.json")] if root.is_dir() else []
    return sorted(records, key=lambda r: r.get("order", 0))


def keep_revision(folder: str | Path, repo_id: str, revision: str, shared: Iterable[str] = (),
                  into: str | Path | None = None) -> bool:
    """Keep the current files of ``folder`` as ``revision`` in the history of the repo folder ``into`` (default
    ``folder``; a staging folder that will replace it). Returns ``False`` (and keeps nothing) when ``folder`` is
    not at ``revision``: then there is nothing exact to keep."""
    folder = Path(folder)
    if snapshot_revision(folder, repo_id) != revision:
        return False
    root = Path(into or folder) / HISTORY
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    files = {}
    for rel in repo_files(folder):
        digest = sha256_file(folder / rel)
        files[rel.as_posix()] = digest
        if rel.as_posix() not in set(shared) and not (root / "blobs" / digest).exists():
            shutil.copyfile(folder / rel, root / "blobs" / digest)
    order = max((r.get("order", 0) for r in kept_revisions(root.parent)), default=0) + 1
    (root / f"{revision}.json").write_text(json.dumps({"revision": revision, "order": order, "files": files},
                                                      indent=2, sort_keys=True) + "\n")
    return True


def _materialise(folder: Path, record: dict, into: Path) -> bool:
    """Write the files of a kept revision into ``into``; ``False`` when one of them cannot be found intact."""
    current = {sha256_file(folder / rel): folder / rel for rel in repo_files(folder)}
    for rel, digest in record["files"].items():
        source = folder / HISTORY / "blobs" / digest
        source = source if source.is_file() and not source.is_symlink() else current.get(digest)
        if source is None or sha256_file(source) != digest:
            return False
        (into / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, into / rel)
    return True


def replay(folder: str | Path, git_dir: str | Path, repo_id: str) -> list[str]:
    """Commit every kept revision of ``folder`` (oldest first) into the mirror ``git_dir``; returns the revisions
    rebuilt with their exact sha (the others are skipped). Call before the current snapshot, which then leaves
    each of them reachable as ``refs/snapshots/<sha>``."""
    folder, done = Path(folder), []
    for record in kept_revisions(folder):
        with tempfile.TemporaryDirectory(prefix="lipzoo-revision-") as tmp:
            if _materialise(folder, record, Path(tmp)) and snapshot_commit(tmp, git_dir, repo_id) == record["revision"]:
                done.append(record["revision"])
    return done
