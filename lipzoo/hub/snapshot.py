"""The ``hub/`` folder of published repos, and deterministic git snapshots of them.

Layout: one folder per repo, named by its repo id: ``<hub_dir>/<org>/<name>/`` holding ``config.json``,
``model.safetensors``, ``README.md`` and ``certified_accuracy.png``. Folders whose name starts with ``.``
are work in progress (staging, backups) and are never served. Nothing outside the hub folder is ever served:
org and repo folders that are symlinks are skipped, and so is every file that is not a regular file resolving
inside the hub folder (a symlink to ``/etc/passwd`` or to a folder elsewhere).

A **snapshot** is the git commit the local hub serves for a repo: one root commit whose tree is exactly the
folder's files, with a fixed author, committer, date and message. Its sha depends only on the files and the
repo id, so rebuilding the served git repos at every server start reproduces every revision, and
``lipzoo publish`` can compute the revision of a folder without a server (:func:`snapshot_revision`).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

from .._checkout import default_hub_dir

__all__ = [
    "hub_dir", "repo_dir", "check_repo_id", "iter_repos", "sha256_file", "snapshot_commit",
    "snapshot_revision", "replace_dir", "run_git", "GitUnavailableError", "repo_files",
]

HISTORY = ".revisions"  # kept superseded revisions of a repo folder (lipzoo.hub.history); never snapshotted
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_GIT_DATE = "946684800 +0000"  # 2000-01-01T00:00:00Z: fixed, so a snapshot's sha depends on content only
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "lipzoo", "GIT_AUTHOR_EMAIL": "hub@lipzoo.invalid", "GIT_AUTHOR_DATE": _GIT_DATE,
    "GIT_COMMITTER_NAME": "lipzoo", "GIT_COMMITTER_EMAIL": "hub@lipzoo.invalid", "GIT_COMMITTER_DATE": _GIT_DATE,
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",  # no user config (autocrlf, signing, hooks)
    "GIT_TERMINAL_PROMPT": "0",
}


class GitUnavailableError(RuntimeError):
    pass


def hub_dir(path: str | os.PathLike | None = None) -> Path:
    """The hub folder: ``path``, else ``$LIPZOO_HUB_DIR``, else ``hub/`` of the project checkout
    (:func:`lipzoo._checkout.default_hub_dir`: outside a checkout, a one-line error saying what to pass)."""
    return Path(path) if path else default_hub_dir()


def check_repo_id(repo_id: str) -> tuple[str, str]:
    """``'org/name'`` -> ``('org', 'name')``; raises ``ValueError`` for anything else (no ``..``, no extra ``/``)."""
    parts = repo_id.split("/") if isinstance(repo_id, str) else []
    if len(parts) != 2 or not all(_NAME.match(p) and ".." not in p for p in parts):
        raise ValueError(
            f"invalid repo id {repo_id!r}: expected 'org/name' (letters, digits, '.', '_', '-'), e.g. 'lipzoo/sll_xs.cifar10'"
        )
    return parts[0], parts[1]


def repo_dir(repo_id: str, hub: str | os.PathLike | None = None) -> Path:
    org, name = check_repo_id(repo_id)
    return hub_dir(hub) / org / name


def _subdirs(folder: Path) -> list[Path]:
    """The real (not symlinked) sub-folders of ``folder`` that are not hidden, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


def iter_repos(hub: str | os.PathLike | None = None) -> list[str]:
    """Repo ids of every repo folder under the hub folder holding at least one servable file (sorted).

    Symlinked org or repo folders are skipped: they would serve a tree outside the hub folder.
    """
    root = hub_dir(hub)
    out = []
    for org in _subdirs(root) if root.is_dir() else []:
        for repo in _subdirs(org):
            if _NAME.match(org.name) and _NAME.match(repo.name) and repo_files(repo, root):
                out.append(f"{org.name}/{repo.name}")
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_git(args: list[str], cwd: Path) -> str:
    """``git *args`` in ``cwd`` with a fixed identity and date and no user config; returns stdout.

    Inherited ``GIT_*`` variables (``GIT_DIR``, ``GIT_INDEX_FILE`` ... set by hooks) are dropped, so the
    command can only touch the repo in ``cwd``.
    """
    git = shutil.which("git")
    if git is None:
        raise GitUnavailableError("the local hub needs the `git` command; install git (e.g. apt-get install git)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | _GIT_ENV
    res = subprocess.run([git, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {res.stderr.strip()}")
    return res.stdout.strip()


def _regular_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, symlinks resolved, is a regular file inside the (resolved) folder ``root``."""
    try:
        target = path.resolve(strict=True)
        return target.is_relative_to(root) and stat.S_ISREG(target.stat().st_mode)
    except (OSError, RuntimeError):  # broken link, symlink loop
        return False


def repo_files(folder: str | os.PathLike, within: str | os.PathLike | None = None) -> list[Path]:
    """The files of a repo folder a snapshot takes, as sorted paths relative to ``folder``.

    Only regular files that resolve inside ``within`` (default: ``folder`` itself) count, so a symlink never
    brings an outside file in; symlinked sub-folders are not entered; ``.git`` folders and the kept revisions
    (:data:`HISTORY`, see :mod:`lipzoo.hub.history`) are skipped.
    """
    folder = Path(folder)
    root = Path(within or folder).resolve()
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False: symlinked folders are not entered
        dirnames[:] = [d for d in dirnames if d not in (".git", HISTORY)]
        out += [Path(dirpath, f).relative_to(folder) for f in filenames
                if f != ".git" and _regular_inside(Path(dirpath, f), root)]
    return sorted(out)


def snapshot_commit(src: str | os.PathLike | None, git_dir: str | os.PathLike, repo_id: str,
                    within: str | os.PathLike | None = None) -> str:
    """Make ``git_dir`` a non-bare git repo whose branch ``main`` is the snapshot of ``src``; return its sha.

    ``src=None`` (or an empty folder) makes the snapshot of an empty tree. The working tree is replaced by a
    copy of ``src``'s :func:`repo_files` (regular files resolving inside ``within``, default ``src``). A
    previous ``main`` stays reachable as ``refs/snapshots/<sha>``, so older pinned revisions keep resolving
    while the server runs.
    """
    check_repo_id(repo_id)
    git_dir = Path(git_dir)
    if not (git_dir / ".git").is_dir():
        git_dir.mkdir(parents=True, exist_ok=True)
        run_git(["init", "-q", "-b", "main", "."], git_dir)
        run_git(["config", "core.autocrlf", "false"], git_dir)
    for p in list(git_dir.iterdir()):
        if p.name != ".git":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    if src is not None:
        src = Path(src)
        for rel in repo_files(src, within):
            (git_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, git_dir / rel)  # content only: modes are always 100644
    run_git(["add", "-A", "-f", "."], git_dir)
    tree = run_git(["write-tree"], git_dir)
    sha = run_git(["commit-tree", "--no-gpg-sign", tree, "-m", f"lipzoo snapshot of {repo_id}"], git_dir)
    try:
        old = run_git(["rev-parse", "--verify", "-q", "refs/heads/main"], git_dir)
    except RuntimeError:
        old = ""
    if old and old != sha:
        run_git(["update-ref", f"refs/snapshots/{old}", old], git_dir)
    run_git(["update-ref", "refs/heads/main", sha], git_dir)
    return sha


def snapshot_revision(src: str | os.PathLike, repo_id: str) -> str:
    """The sha the local hub will serve for a repo folder ``src`` (computed in a throw-away git repo)."""
    with tempfile.TemporaryDirectory(prefix="lipzoo-snapshot-") as tmp:
        return snapshot_commit(src, Path(tmp) / "repo", repo_id)


def _default_modes(folder: Path) -> None:
    """Give a folder built in a private temp dir (mode 0700) the modes of ordinary new files and folders."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [folder, *folder.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def replace_dir(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Move the complete folder ``new`` to ``dest``, replacing any previous ``dest``.

    Both must be on one filesystem. The old folder is renamed aside first and deleted only after the new
    one is in place, so a crash leaves either the old or the new folder (plus, at worst, a ``.<name>.old-*``
    backup to restore by hand); never a half-written one.
    """
    new, dest = Path(new), Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _default_modes(new)
    backup = None
    if dest.exists():
        backup = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, backup)
    try:
        os.rename(new, dest)
    except BaseException:
        if backup is not None:
            os.rename(backup, dest)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
