"""The embedded hub's doors (issue 19, items 7-9): what ``lipzoo hub serve`` exposes, who may write to it, and how
it starts and stops.

No CIFAR-10 and no model: each test serves a small scratch folder on a free port and talks raw HTTP to it, as a
browser page or a careless user would.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("olah", reason="the local hub needs the hub extra: pip install 'lipzoo[hub]'")

from lipzoo.hub.server import LocalHub, build_mirrors, free_port  # noqa: E402

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parent.parent


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None
            ) -> tuple[int, bytes]:
    """``(status, body)`` of one HTTP request; HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def served_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A hub root with one honest repo holding a symlink to a file outside the root, and one repo folder that is
    itself a symlink to an outside folder; returns ``(root, secret file)``."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("private key material")
    root = tmp_path / "root"
    demo = root / "lipzoo" / "demo"
    demo.mkdir(parents=True)
    (demo / "README.md").write_text("a served file")
    (demo / "leak.txt").symlink_to(secret)
    (demo / "alias.md").symlink_to(demo / "README.md")  # a symlink that stays inside the root is fine
    (demo / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "lipzoo" / "linked").symlink_to(outside, target_is_directory=True)
    return root, secret


# ----------------------------------------------------------------------------------------------- item 7: symlinks
def test_symlinks_out_of_the_root_are_not_served(tmp_path):
    root, _ = served_tree(tmp_path)
    assert set(build_mirrors(root, tmp_path / "mirrors")) == {"lipzoo/demo"}
    with LocalHub(root) as hub:
        assert set(hub.status()["repos"]) == {"lipzoo/demo"}
        base = f"{hub.endpoint}/lipzoo/demo/resolve/main"
        assert request(f"{base}/README.md") == (200, b"a served file")
        assert request(f"{base}/alias.md") == (200, b"a served file")
        for url in (f"{base}/leak.txt", f"{base}/outdir/secret.txt",
                    f"{hub.endpoint}/lipzoo/linked/resolve/main/secret.txt"):
            status, body = request(url)
            assert status >= 400 and b"private key" not in body, (url, status, body[:200])


# ----------------------------------------------------------------------------------------------- item 8: writes
def _create(hub: LocalHub, name: str, headers: dict[str, str]) -> int:
    body = json.dumps({"name": name, "organization": "lipzoo", "type": "model"}).encode()
    return request(f"{hub.endpoint}/api/repos/create", "POST", body, headers)[0]


def _commit(hub: LocalHub, path: str, headers: dict[str, str]) -> int:
    lines = [{"key": "header", "value": {"summary": "x"}},
             {"key": "file", "value": {"path": path, "content": "cHduZWQ=", "encoding": "base64"}}]
    body = "\n".join(json.dumps(x) for x in lines).encode()
    return request(f"{hub.endpoint}/api/models/lipzoo/demo/commit/main", "POST", body, headers)[0]


def test_cross_site_and_unauthenticated_writes_are_refused(monkeypatch, tmp_path):
    from lipzoo.hub import publish as P

    monkeypatch.delenv("LIPZOO_HUB_TOKEN", raising=False)
    root, _ = served_tree(tmp_path)
    page = {"Content-Type": "text/plain", "Origin": "https://evil.example"}  # a form or fetch() of any web page
    with LocalHub(root) as hub:  # read-only by default, even with a token
        assert _create(hub, "made_by_a_page", page) == 403
        assert _commit(hub, "pwned.txt", {**page, "Authorization": "Bearer x"}) == 403
        assert "lipzoo/made_by_a_page" not in hub.status()["repos"] and not hub.status()["writes"]
        assert P._local_hub_read_only(hub.endpoint)  # so `lipzoo publish` skips the upload with a message
    assert not (root / "lipzoo" / "made_by_a_page").exists() and not (root / "lipzoo" / "demo" / "pwned.txt").exists()

    with LocalHub(root, allow_writes=True) as hub:
        auth = {"Authorization": f"Bearer {hub.token}"}
        assert hub.status()["writes"] is True and not P._local_hub_read_only(hub.endpoint)
        assert P.resolve_endpoint(hub.endpoint)[1] == hub.token  # `lipzoo publish` finds the server's token file
        assert _create(hub, "a", {"Content-Type": "text/plain"}) == 401  # no token
        assert _create(hub, "a", {"Authorization": "Bearer wrong"}) == 401
        assert _create(hub, "a", {**page, **auth}) == 403  # the token does not make a foreign origin welcome
        assert _commit(hub, "pwned.txt", {**page, **auth}) == 403
        assert request(f"{hub.endpoint}/lipzoo/demo/resolve/main/README.md", headers={"Origin": "null"})[0] == 403
        assert request(f"{hub.endpoint}/lipzoo/demo/resolve/main/README.md", headers={"Host": "evil.example"})[0] == 403
        assert not (root / "lipzoo" / "a").exists() and not (root / "lipzoo" / "demo" / "pwned.txt").exists()
        # the huggingface_hub client's own requests (no Origin, its token) and same-origin pages still write
        assert _create(hub, "a", auth) == 200
        assert _commit(hub, "notes.txt", {**auth, "Origin": hub.endpoint}) == 200
        assert (root / "lipzoo" / "demo" / "notes.txt").read_bytes() == b"pwned"
        assert not (root / "lipzoo" / "demo" / "leak.txt").exists()  # a write never copies an outside file in
        assert (tmp_path / "outside" / "secret.txt").read_text() == "private key material"


def test_publish_finds_the_local_hub_token(monkeypatch, tmp_path):
    from lipzoo.hub import publish as P
    from lipzoo.hub.server import write_token

    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path))
    monkeypatch.delenv("LIPZOO_HUB_TOKEN", raising=False)
    port = free_port()
    write_token(port, "from-the-server")
    assert P.resolve_endpoint(f"http://127.0.0.1:{port}/", token="hf_real") == (f"http://127.0.0.1:{port}",
                                                                             "from-the-server")
    monkeypatch.setenv("LIPZOO_HUB_TOKEN", "from-env")
    assert P.resolve_endpoint(f"http://localhost:{port}")[1] == "from-env"
    assert P.resolve_endpoint("https://huggingface.co", token="hf_real")[1] == "hf_real"


# ----------------------------------------------------------------------------------------------- item 9: start, stop
def _serve_cmd(root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "lipzoo.cli", "hub", "serve", "--root", str(root), "--port", str(port)]


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LIPZOO_"))}
    return env | {"LIPZOO_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def test_busy_port_fails_with_one_line_and_sigterm_cleans_up(tmp_path):
    root, _ = served_tree(tmp_path)
    states = tmp_path / "cache" / "hub-server"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = subprocess.run(_serve_cmd(root, port), env=_env(tmp_path), cwd=str(ROOT), capture_output=True,
                             text=True, timeout=120)
    assert res.returncode != 0 and "HF_ENDPOINT" not in res.stdout, res.stdout
    errors = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and str(port) in errors[0] and "--port" in errors[0], res.stderr
    assert not (states.exists() and any(states.iterdir()))

    port = free_port()
    proc = subprocess.Popen(_serve_cmd(root, port), env=_env(tmp_path), cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _ready(port):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the hub did not answer within 120 s"
            time.sleep(0.3)
        assert [p.name for p in states.iterdir()][0].startswith(f"{port}-")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert f"export HF_ENDPOINT=http://127.0.0.1:{port}" in out, (out, err)
    assert list(states.iterdir()) == [], "SIGTERM left the server's state behind"


def _ready(port: int) -> bool:
    """Whether a hub answers its status route on the port."""
    try:
        return request(f"http://127.0.0.1:{port}/api/lipzoo-local/status")[0] == 200
    except OSError:  # nothing listens yet
        return False
