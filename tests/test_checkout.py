"""The one ``lipzoo`` command and the package's only look outside itself (issue 21, item 5).

* ``lipzoo``, ``python -m lipzoo``, ``python -m lipzoo.cli`` and ``scripts/train.py`` are one parser;
* outside a source checkout (the package installed alone, as from a wheel) the commands that default to the
  checkout's ``hub/`` say in one line what to pass, the data search skips ``../shared/data``, and no git revision
  is recorded; ``$LIPZOO_HUB_DIR`` still works there.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIPZOO_HUB_DIR", "LIPZOO_DATA")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A site folder holding only a copy of the package (what a wheel installs): no pyproject.toml, no hub/."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(ROOT / "lipzoo", site / "lipzoo", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("argv", [["-m", "lipzoo"], ["-m", "lipzoo.cli"]])
def test_python_dash_m_runs_the_one_command(argv):
    res = _run([*argv, "--help"], ROOT, _env())
    assert res.returncode == 0, res.stderr
    for command in ("certify", "verify", "train", "hub", "publish", "run"):
        assert command in res.stdout


def test_scripts_train_is_lipzoo_train():
    res = _run([str(ROOT / "scripts" / "train.py"), "--help"], ROOT, _env())
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: lipzoo train") and "--recipe" in res.stdout and "--lr" in res.stdout


def test_a_checkout_is_found_and_a_copied_package_has_none(installed):
    from lipzoo import _checkout

    assert _checkout.project_root() == ROOT
    code = "import lipzoo, lipzoo._checkout as c; print(lipzoo.__file__); print(c.project_root(), c.shared_data_dir())"
    res = _run(["-c", code], installed, _env(PYTHONPATH=str(installed)))
    assert res.returncode == 0, res.stderr
    where, found = res.stdout.splitlines()
    assert where.startswith(str(installed)) and found == "None None"


def test_outside_a_checkout_hub_serve_says_what_to_pass_in_one_line(installed, tmp_path):
    env = _env(PYTHONPATH=str(installed))
    res = _run(["-m", "lipzoo", "hub", "serve", "--port", "0"], tmp_path, env)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "--root" in lines[0] and "LIPZOO_HUB_DIR" in lines[0] and "Traceback" not in res.stderr


def test_outside_a_checkout_the_hub_dir_comes_from_the_environment(monkeypatch, tmp_path):
    from lipzoo import _checkout
    from lipzoo.hub.snapshot import hub_dir

    monkeypatch.setattr(_checkout, "project_root", lambda: None)
    monkeypatch.delenv("LIPZOO_HUB_DIR", raising=False)
    with pytest.raises(_checkout.CheckoutNotFoundError, match="LIPZOO_HUB_DIR"):
        hub_dir()
    assert hub_dir(tmp_path / "mine") == tmp_path / "mine"
    monkeypatch.setenv("LIPZOO_HUB_DIR", str(tmp_path / "env"))
    assert hub_dir() == tmp_path / "env"
    assert _checkout.code_revision() == (None, False)


def test_outside_a_checkout_the_data_search_skips_the_shared_copy(monkeypatch, tmp_path):
    import lipzoo.data as data
    from lipzoo import _checkout

    monkeypatch.delenv("LIPZOO_DATA", raising=False)
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path / "cache"))
    shared = tmp_path / "shared"
    (shared / "cifar10").mkdir(parents=True)
    (shared / "cifar10" / "test_batch.webp").write_bytes(b"")
    monkeypatch.setattr(data, "shared_data_dir", lambda: shared)
    assert data.find_root("cifar10") == shared
    monkeypatch.setattr(data, "shared_data_dir", _checkout.shared_data_dir)
    monkeypatch.setattr(_checkout, "project_root", lambda: None)
    assert data.find_root("cifar10") is None  # not in the (empty) download cache either: a download would follow
