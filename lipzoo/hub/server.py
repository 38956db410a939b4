"""The embedded local Hugging Face hub: olah on 127.0.0.1 serving ``hub/``, plus the write routes olah lacks.

At start every repo folder under the root (see :mod:`lipzoo.hub.snapshot`) becomes a git repo in a state
directory, as one deterministic snapshot commit, so revisions are the same at every start. olah serves them
read-only (``hf_hub_download``, ``snapshot_download``, ``model_info``, refs, trees). Mounted on olah's own
FastAPI app, a few routes make ``HfApi.create_repo`` / ``upload_folder`` / ``upload_file`` work too:

* ``POST /api/repos/create``: an empty repo (409 if it exists, which ``exist_ok=True`` accepts);
* ``POST /api/models/{org}/{name}/preupload/main``: every file is uploaded "regular" (inline, base64);
* ``POST /api/models/{org}/{name}/commit/main``: applies the NDJSON operations, makes the new snapshot
  (its sha depends on the files only; the client's commit message is not stored) and writes the repo
  folder back under the root, so the upload survives a restart;
* ``POST /api/validate-yaml``; ``GET/HEAD /api/models/{org}/{name}`` (model info without a revision);
* ``GET /api/lipzoo-local/status``: readiness and the served revisions;
* downloads of an unknown revision or file get HF's 404 answers (``X-Error-Code: RevisionNotFound`` /
  ``EntryNotFound``) instead of olah's 500/401, so clients fail fast with the right error.

Only ``main`` of model repos can be written; LFS uploads are refused. Uploads are served at once; changes made
to the root folder by hand are served after a restart.

Command line: ``lipzoo hub serve [--port P] [--root hub/]``; Python: ``with LocalHub(root) as hub: hub.endpoint``.
"""
# no `from __future__ import annotations`: FastAPI must see the real types of the route parameters
import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from .snapshot import check_repo_id, hub_dir, iter_repos, replace_dir, run_git, snapshot_commit

__all__ = ["DEFAULT_PORT", "LocalHub", "serve", "build_mirrors", "free_port", "endpoint_reachable", "main"]

DEFAULT_PORT = 18090
STATUS_ROUTE = "/api/lipzoo-local/status"
_RESOLVE = re.compile(r"^/(?:models/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoint_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``endpoint``'s host and port opens within ``timeout`` seconds (DNS included)."""
    from urllib.parse import urlsplit

    url = urlsplit(endpoint)
    if not url.hostname:
        return False
    port = url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def build_mirrors(root: str | os.PathLike, mirrors: str | os.PathLike) -> dict[str, str]:
    """Snapshot every repo folder of ``root`` into ``<mirrors>/models/<org>/<name>``; ``{repo_id: sha}``."""
    return {rid: snapshot_commit(Path(root) / rid, Path(mirrors) / "models" / rid, rid) for rid in iter_repos(root)}


def _olah_config(path: Path, port: int, mirrors: Path, cache: Path) -> None:
    # upstream points at a dead local port and offline=true: nothing ever leaves loopback
    path.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f"repos-path = {json.dumps(str(cache))}\n"
        'hf-scheme = "http"\nhf-netloc = "127.0.0.1:9"\nhf-lfs-netloc = "127.0.0.1:9"\n'
        'mirror-scheme = "http"\n'
        f'mirror-netloc = "127.0.0.1:{port}"\nmirror-lfs-netloc = "127.0.0.1:{port}"\n'
        f"mirrors-path = [{json.dumps(str(mirrors))}]\n"
        "[accessibility]\noffline = true\n"
    )


# ----------------------------------------------------------------------------------------------- write routes
def _safe_path(path: str) -> str:
    p = path.replace("\\", "/").strip("/")
    parts = p.split("/")
    if not p or any(x in ("", ".", "..", ".git") for x in parts):
        raise ValueError(f"invalid path in repo: {path!r}")
    return p


def _apply_commit(root: Path, mirrors: Path, repo_id: str, lines: list[dict[str, Any]]) -> str:
    """Apply NDJSON commit operations to the repo folder; returns the new snapshot sha. Caller holds the lock."""
    git_dir = mirrors / "models" / repo_id
    dest = root / repo_id
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        if dest.is_dir():
            shutil.copytree(dest, staging, dirs_exist_ok=True)
        for line in lines:
            key, value = line.get("key"), line.get("value") or {}
            if key == "header":
                continue
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError(f"unsupported encoding {value.get('encoding')!r}")
                target = staging / _safe_path(value["path"])
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base64.b64decode(value["content"], validate=True))
            elif key in ("deletedFile", "deletedFolder"):
                target = staging / _safe_path(value["path"])
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
            elif key == "lfsFile":
                raise ValueError("the local hub accepts regular uploads only (no LFS); it answered 'regular' at preupload")
            else:
                raise ValueError(f"unsupported commit operation {key!r}")
        sha = snapshot_commit(staging, git_dir, repo_id)
        if any(staging.iterdir()):
            replace_dir(staging, dest)
        else:  # every file was deleted: so is the folder, or a restart would bring them back
            shutil.rmtree(dest, ignore_errors=True)
        return sha
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _missing(git_dir: Path, revision: str, path: str) -> tuple[str, str] | None:
    """``(X-Error-Code, message)`` when ``revision`` or ``path`` at it does not exist in a mirror, else ``None``."""
    try:
        run_git(["rev-parse", "--verify", "-q", f"{revision}^{{commit}}"], git_dir)
    except RuntimeError:
        return "RevisionNotFound", f"Invalid rev id: {revision}"
    try:
        run_git(["cat-file", "-e", f"{revision}:{path}"], git_dir)
    except RuntimeError:
        return "EntryNotFound", f"{path} does not exist at revision {revision}"
    return None


def _mount_write_routes(app, root: Path, mirrors: Path, port: int) -> None:
    from fastapi import APIRouter, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    router = APIRouter()
    lock = threading.Lock()
    base = f"http://127.0.0.1:{port}"

    def error(status: int, message: str, code: str | None = None) -> JSONResponse:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def model_repo(repo_type: str, org: str, name: str) -> tuple[str | None, JSONResponse | None]:
        if repo_type != "models":
            return None, error(400, "the local lipzoo hub serves model repos only")
        try:
            org, name = check_repo_id(f"{org}/{name}")
        except ValueError as e:
            return None, error(400, str(e))
        rid = f"{org}/{name}"
        if not (mirrors / "models" / rid / ".git").is_dir():
            return None, error(404, f"Repository {rid} not found", "RepoNotFound")
        return rid, None

    @router.get(STATUS_ROUTE)
    def status() -> dict[str, Any]:
        served = {}
        for git_dir in sorted((mirrors / "models").glob("*/*/.git")):
            try:
                served[f"{git_dir.parent.parent.name}/{git_dir.parent.name}"] = run_git(["rev-parse", "main"], git_dir.parent)
            except RuntimeError:
                pass
        return {"status": "ok", "root": str(root), "repos": served}

    @router.post("/api/repos/create")
    async def create_repo(request: Request):
        body = await request.json()
        if body.get("type", "model") != "model":
            return error(400, "the local lipzoo hub serves model repos only")
        rid = f"{body.get('organization')}/{body.get('name')}" if body.get("organization") else str(body.get("name"))
        try:
            check_repo_id(rid)
        except ValueError as e:
            return error(400, str(e))
        git_dir = mirrors / "models" / rid

        def create() -> bool:
            with lock:
                if (git_dir / ".git").is_dir():
                    return False
                snapshot_commit(None, git_dir, rid)  # empty-tree snapshot: listing files works at once
                return True

        if not await run_in_threadpool(create):
            message = f"You already created this model repo: {rid}"
            return JSONResponse({"error": message, "url": f"{base}/{rid}"}, 409, headers={"X-Error-Message": message})
        return {"url": f"{base}/{rid}", "name": rid, "id": rid}

    @router.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        import yaml

        body = await request.json()
        content = body.get("content", "")
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                data = yaml.safe_load(front)
                if data is not None and not isinstance(data, dict):
                    raise ValueError("the front matter must be a mapping")
            except Exception as e:  # yaml.YAMLError, ValueError
                return JSONResponse({"errors": [{"message": f"invalid YAML front matter: {e}"}], "warnings": []}, 400)
        return {"errors": [], "warnings": []}

    @router.post("/api/{repo_type}/{org}/{name}/preupload/{revision}")
    async def preupload(repo_type: str, org: str, name: str, revision: str, request: Request):
        rid, err = model_repo(repo_type, org, name)
        if err:
            return err
        body = await request.json()
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in body.get("files", [])]
        return {"files": files, "commitOid": None}

    @router.post("/api/{repo_type}/{org}/{name}/commit/{revision}")
    async def commit(repo_type: str, org: str, name: str, revision: str, request: Request):
        rid, err = model_repo(repo_type, org, name)
        if err:
            return err
        if revision != "main":
            return error(400, f"the local lipzoo hub only writes branch 'main', not {revision!r}", "RevisionNotFound")
        if request.query_params.get("create_pr") in ("1", "true", "True"):
            return error(400, "the local lipzoo hub does not support pull requests")
        try:
            lines = [json.loads(x) for x in (await request.body()).decode().splitlines() if x.strip()]
        except ValueError as e:
            return error(400, f"the commit body is not NDJSON: {e}")

        def do() -> str:
            with lock:
                return _apply_commit(root, mirrors, rid, lines)

        try:
            sha = await run_in_threadpool(do)
        except (ValueError, KeyError, OSError) as e:
            return error(400, f"bad commit: {e}")
        return {"commitUrl": f"{base}/{rid}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}

    @router.head("/api/{repo_type}/{org}/{name}")
    @router.get("/api/{repo_type}/{org}/{name}")
    async def info_without_revision(repo_type: str, org: str, name: str, request: Request):
        from olah.server_api_routes import meta_proxy_common

        return await meta_proxy_common(request.app, repo_type=repo_type, org=org, repo=name, commit="main",
                                       method=request.method.lower(),
                                       authorization=request.headers.get("authorization"))

    ours = list(router.routes)
    app.router.routes[:0] = ours  # before olah's routes, which would match these paths first

    @app.middleware("http")
    async def not_found_like_hf(request: Request, call_next):
        from urllib.parse import unquote

        match = _RESOLVE.match(request.url.path)
        if match and request.method in ("GET", "HEAD"):
            org, name, revision, path = (unquote(g) for g in match.groups())
            git_dir = mirrors / "models" / org / name
            if ".." not in (org, name) and (git_dir / ".git").is_dir():
                problem = await run_in_threadpool(_missing, git_dir, revision, path)
                if problem:
                    return error(404, problem[1], problem[0])
        return await call_next(request)


# ----------------------------------------------------------------------------------------------- serving
def serve(root: str | os.PathLike | None = None, port: int = DEFAULT_PORT, state_dir: str | os.PathLike | None = None,
          quiet: bool = False) -> None:
    """Serve ``root`` (default: the project's ``hub/``) on ``127.0.0.1:port`` until SIGINT/SIGTERM.

    The git mirrors, olah's config and its logs live in ``state_dir`` (default: a fresh folder under
    ``~/.cache/lipzoo/hub-server``), which is deleted on a clean stop when this function created it.
    """
    root = hub_dir(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"hub root {root} does not exist: create it, or pass --root pointing at a hub/ folder")
    own_state = state_dir is None
    if own_state:
        from ..data import cache_dir

        (cache_dir() / "hub-server").mkdir(parents=True, exist_ok=True)
        state_dir = tempfile.mkdtemp(prefix=f"{port}-", dir=cache_dir() / "hub-server")
    state = Path(state_dir)
    mirrors, logs = state / "mirrors", state / "logs"
    for d in (mirrors / "models", logs, state / "olah-cache"):
        d.mkdir(parents=True, exist_ok=True)
    stdout = sys.stdout  # olah replaces sys.stdout with a logger on import
    try:
        revisions = build_mirrors(root, mirrors)
        _olah_config(state / "olah.toml", port, mirrors, state / "olah-cache")
        os.environ["OLAH_CONFIG"] = str(state / "olah.toml")  # olah reads its config at import
        os.environ["OLAH_LOG_PATH"] = str(logs)
        import uvicorn
        from olah.server import app

        _mount_write_routes(app, root, mirrors, port)
        endpoint = f"http://127.0.0.1:{port}"
        if not quiet:
            lines = [f"lipzoo local hub: serving {len(revisions)} repo(s) from {root}"]
            lines += [f"  {rid} @ {sha}" for rid, sha in revisions.items()]
            lines += ["Use it with:", f"  export HF_ENDPOINT={endpoint}", "Stop with Ctrl-C."]
            print("\n".join(lines), file=stdout, flush=True)
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        if own_state:
            shutil.rmtree(state, ignore_errors=True)


# Runs this module without executing lipzoo/__init__.py, which imports torch and the model registry (seconds
# of start-up on a busy CPU) that the server never uses. argv[1] is the lipzoo/hub folder.
_BOOTSTRAP = """
import sys, types
from pathlib import Path
hub = Path(sys.argv[1])
for name, path in (("lipzoo", hub.parent), ("lipzoo.hub", hub)):
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
from lipzoo.hub.server import main
sys.exit(main(sys.argv[2:]))
"""


class LocalHub:
    """The local hub in a subprocess, for tests and scripts.

    >>> with LocalHub(root="hub/") as hub:      # doctest: +SKIP
    ...     os.environ["HF_ENDPOINT"] = hub.endpoint   # before huggingface_hub is imported

    ``port=None`` picks a free port. :meth:`start` waits until the server answers (``startup_timeout``);
    :meth:`stop` terminates only this server's own process and removes its state directory.
    """

    def __init__(self, root: str | os.PathLike | None = None, port: int | None = None, startup_timeout: float = 60.0):
        self.root = hub_dir(root).resolve()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._state: Path | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def status(self, timeout: float = 2.0) -> dict[str, Any]:
        """The server's status: ``{'status': 'ok', 'root': ..., 'repos': {repo_id: sha}}``."""
        with urllib.request.urlopen(self.endpoint + STATUS_ROUTE, timeout=timeout) as r:
            return json.loads(r.read())

    def start(self) -> "LocalHub":
        if self._proc is not None:
            return self
        if not self.root.is_dir():
            raise FileNotFoundError(f"hub root {self.root} does not exist")
        self._state = Path(tempfile.mkdtemp(prefix="lipzoo-hub-"))
        log = open(self._state / "server.log", "wb")
        args = ["--root", str(self.root), "--port", str(self.port), "--state-dir", str(self._state / "state"), "--quiet"]
        cmd = [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve().parent), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                tail = self.log()[-3000:]
                self.stop()
                raise RuntimeError(f"the local hub exited at start (code {code}):\n{tail}")
            try:
                self.status(timeout=1.0)
                return self
            except OSError:
                time.sleep(0.2)
        tail = self.log()[-3000:]
        self.stop()
        raise TimeoutError(f"the local hub did not answer within {self.startup_timeout:.0f} s:\n{tail}")

    def log(self) -> str:
        path = self._state / "server.log" if self._state else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._state is not None:
            shutil.rmtree(self._state, ignore_errors=True)
            self._state = None

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # a forgotten hub must not outlive its owner
        try:
            self.stop()
        except Exception:
            pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=int(os.environ.get("LIPZOO_HUB_PORT", DEFAULT_PORT)),
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}, or $LIPZOO_HUB_PORT)")
    parser.add_argument("--root", default=None, help="the hub folder to serve (default: $LIPZOO_HUB_DIR or the project's hub/)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lipzoo.hub.server", description="Serve hub/ as a local HF hub")
    add_arguments(parser)
    parser.add_argument("--state-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    serve(args.root, args.port, state_dir=args.state_dir, quiet=args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
