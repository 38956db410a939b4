"""The project checkout: the one place where lipzoo looks outside its own package for files.

lipzoo installed from a wheel is self-contained (code, ``published.json``, the card template). A few defaults
only make sense in a source checkout of the project (``<checkout>/lipzoo/`` is this package):

* the hub folder ``<checkout>/hub/`` that ``lipzoo hub serve``, ``lipzoo run`` and ``lipzoo publish`` use when
  neither ``--root``/``--hub-dir`` nor ``$LIPZOO_HUB_DIR`` names one;
* the offline data copy ``<checkout>/../shared/data`` (a fallback after ``$LIPZOO_DATA``);
* the git revision of the code that ``lipzoo train`` and ``lipzoo publish`` record (:func:`code_revision`).

Outside a checkout (an installed wheel) :func:`project_root` is ``None``: the hub folder must then be given
(:func:`default_hub_dir` raises :class:`CheckoutNotFoundError`, a one-line user error), the data search skips the
offline copy, and no code revision is recorded. Imports nothing of lipzoo: every floor may use it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["HUB_DIR_ENV", "CheckoutNotFoundError", "project_root", "default_hub_dir", "shared_data_dir", "code_revision"]

HUB_DIR_ENV = "LIPZOO_HUB_DIR"
_PACKAGE = Path(__file__).resolve().parent


class CheckoutNotFoundError(FileNotFoundError):
    """A default that needs the project checkout was asked for, but lipzoo is installed without one."""


def project_root() -> Path | None:
    """The source checkout holding this package (the folder with ``pyproject.toml`` next to ``lipzoo/``), or
    ``None`` when lipzoo runs from an installed wheel (``site-packages`` has no ``pyproject.toml``)."""
    root = _PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() else None


def default_hub_dir() -> Path:
    """``$LIPZOO_HUB_DIR``, else ``<checkout>/hub``; raises :class:`CheckoutNotFoundError` when neither exists."""
    if os.environ.get(HUB_DIR_ENV):
        return Path(os.environ[HUB_DIR_ENV])
    root = project_root()
    if root is None:
        raise CheckoutNotFoundError(f"lipzoo is installed without its project checkout, so it has no default hub "
                                    f"folder: pass --root / --hub-dir, or set {HUB_DIR_ENV}")
    return root / "hub"


def shared_data_dir() -> Path | None:
    """The offline data copy beside the checkout (``<checkout>/../shared/data``); ``None`` outside a checkout."""
    root = project_root()
    return None if root is None else root.parent / "shared" / "data"


def code_revision() -> tuple[str | None, bool]:
    """``(git sha of the checkout's HEAD, dirty?)``; ``(None, False)`` outside a git checkout. Dirty means uncommitted
    changes to the code (the package and ``hubconf.py``), not to the published data (``hub/``, ``results/``, the
    manifest), which a publish itself writes."""
    git, root = shutil.which("git"), project_root()
    if git is None or root is None or not (root / ".git").exists():
        return None, False
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # this checkout, not a hook's repo
    try:
        sha = subprocess.run([git, "rev-parse", "HEAD"], cwd=root, env=env, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run([git, "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", "--",
                                "lipzoo", "hubconf.py", ":(exclude)lipzoo/hub/published.json"], cwd=root, env=env,
                               capture_output=True, text=True, timeout=10)
        return (sha.stdout.strip() or None), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False
