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

The doors: only regular files resolving inside the root are served (see :mod:`lipzoo.hub.snapshot`); the
server is **read-only** unless started with ``allow_writes`` (``--allow-writes``), and then every request but
GET/HEAD must carry ``Authorization: Bearer <token>``: the token is ``$LIPZOO_HUB_TOKEN`` or a random one,
written to :func:`token_path` (mode 0600) for ``lipzoo publish`` to read. Requests whose ``Origin`` or
``Host`` is not this server's own (a web page in the user's browser, DNS rebinding) are refused.

Command line: ``lipzoo hub serve [--port P] [--root hub/] [--allow-writes]`` (:mod:`lipzoo.cli.hub`); Python:
``with LocalHub(root) as hub: hub.endpoint`` (``LocalHub(root, allow_writes=True).token`` to write).
"""
# no `from __future__ import annotations`: FastAPI must see the real types of the route parameters
import base64
import contextlib
import errno
import hmac
import json
import os
import re
import secrets
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
from typing import Any, Callable, Iterator, Mapping

from .snapshot import HISTORY, check_repo_id, hub_dir, iter_repos, replace_dir, repo_files, run_git, snapshot_commit

__all__ = ["DEFAULT_PORT", "LocalHub", "serve", "build_mirrors", "free_port", "endpoint_reachable", "ServeError",
           "token_path", "read_token", "write_token", "TOKEN_ENV"]

DEFAULT_PORT = 18090
STATUS_ROUTE = "/api/lipzoo-local/status"
TOKEN_ENV = "LIPZOO_HUB_TOKEN"  # the write token: the server requires it, `lipzoo publish` sends it
_RESOLVE = re.compile(r"^/(?:models/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$")


class ServeError(RuntimeError):
    """The hub cannot start (port taken, bad port); the message says what to do, in one line."""


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
    """Snapshot every repo folder of ``root`` into ``<mirrors>/models/<org>/<name>``; ``{repo_id: sha}``.

    Only regular files resolving inside ``root`` are taken; symlinked repo folders are skipped. The revisions a
    repo folder keeps (:mod:`lipzoo.hub.history`) are committed first, so their pinned shas resolve too.
    """
    from .history import replay

    out = {}
    for rid in iter_repos(root):
        git_dir = Path(mirrors) / "models" / rid
        replay(Path(root) / rid, git_dir, rid)
        out[rid] = snapshot_commit(Path(root) / rid, git_dir, rid, within=root)
    return out


# ----------------------------------------------------------------------------------------------- write token
def token_path(port: int) -> Path:
    """Where the server on ``port`` keeps its write token while it runs (under lipzoo's cache folder)."""
    from ..data import cache_dir

    return cache_dir() / "hub-server" / f"{port}.token"


def write_token(port: int, token: str) -> Path:
    """Write ``token`` to :func:`token_path` readable by this user only; returns the path."""
    path = token_path(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have other modes
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


def read_token(port: int) -> str | None:
    """The write token of the local hub on ``port``, or ``None`` when no server on it wrote one."""
    try:
        return token_path(port).read_text().strip() or None
    except OSError:
        return None


def _remove_token(port: int, token: str) -> None:
    """Delete the token file if it still holds ``token`` (a later server on the port may have replaced it)."""
    if read_token(port) == token:
        token_path(port).unlink(missing_ok=True)


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


def _repo_folder(root: Path, repo_id: str) -> Path:
    """``root/<org>/<name>``, refused (``ValueError``) when the org or repo folder is a symlink: a write must
    never land outside the root."""
    dest = root / repo_id
    if dest.parent.is_symlink() or dest.is_symlink():
        raise ValueError(f"{dest} or its parent is a symlink; the local hub does not write through symlinks")
    return dest


def _apply_commit(root: Path, mirrors: Path, repo_id: str, lines: list[dict[str, Any]]) -> str:
    """Apply NDJSON commit operations to the repo folder; returns the new snapshot sha. Caller holds the lock.

    The new folder starts from the files the server serves (regular files inside the root): symlinks and
    other files are not carried over, so no write goes through a symlink and no outside file is copied in.
    """
    git_dir = mirrors / "models" / repo_id
    dest = _repo_folder(root, repo_id)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.staging-", dir=dest.parent))
    try:
        for rel in repo_files(dest, root) if dest.is_dir() else []:
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dest / rel, staging / rel)
        if (dest / HISTORY).is_dir() and not (dest / HISTORY).is_symlink():  # the kept revisions stay servable
            shutil.copytree(dest / HISTORY, staging / HISTORY, symlinks=True)
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


def _own_origins(port: int) -> tuple[set[str], set[str]]:
    """``(hosts, origins)`` this server answers to: 127.0.0.1 and localhost on its port."""
    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
    return hosts, {f"http://{h}" for h in hosts}


def _refusal(headers: Mapping[str, str], method: str, port: int, token: str | None) -> tuple[int, str] | None:
    """``(status, message)`` when a request must be refused before any route sees it, else ``None``.

    A foreign ``Host`` or ``Origin`` (another site, DNS rebinding) gets 403 for any request; a write (any
    method but GET/HEAD) gets 403 on a read-only server (``token=None``) and 401 without ``Bearer <token>``.
    """
    hosts, origins = _own_origins(port)
    if headers.get("host") not in hosts:
        return 403, f"the local lipzoo hub answers to 127.0.0.1:{port} only, not Host {headers.get('host')!r}"
    origin = headers.get("origin")
    if origin is not None and origin not in origins:
        return 403, f"cross-site request from Origin {origin!r} refused: use a client (huggingface_hub), not a web page"
    if method in ("GET", "HEAD"):
        return None
    if token is None:
        return 403, "this local lipzoo hub is read-only: restart it with `lipzoo hub serve --allow-writes` to publish"
    sent = headers.get("authorization") or ""
    if not (sent.startswith("Bearer ") and hmac.compare_digest(sent[7:].encode(), token.encode())):
        return 401, (f"writes need the hub's token (${TOKEN_ENV}, or the file {token_path(port)}) sent as "
                     "`Authorization: Bearer <token>`, e.g. HfApi(token=...)")
    return None


def _mount_guard(app, port: int, token: str | None) -> None:
    """Refuse foreign, read-only and unauthenticated requests (:func:`_refusal`) ahead of every route."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    @app.middleware("http")  # added last, so it runs first
    async def guard(request: Request, call_next):
        refused = _refusal(request.headers, request.method, port, token)
        if refused:
            status, message = refused
            return JSONResponse({"error": message}, status_code=status, headers={"X-Error-Message": message})
        return await call_next(request)


def _error(status: int, message: str, code: str | None = None):
    """An HF-style error answer: the message in the body and in ``X-Error-Message``, HF's ``X-Error-Code``."""
    from fastapi.responses import JSONResponse

    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _model_repo(mirrors: Path, repo_type: str, org: str, name: str) -> tuple[str | None, Any]:
    """``(repo_id, None)`` of a served model repo, else ``(None, error answer)``."""
    if repo_type != "models":
        return None, _error(400, "the local lipzoo hub serves model repos only")
    try:
        org, name = check_repo_id(f"{org}/{name}")
    except ValueError as e:
        return None, _error(400, str(e))
    rid = f"{org}/{name}"
    if not (mirrors / "models" / rid / ".git").is_dir():
        return None, _error(404, f"Repository {rid} not found", "RepoNotFound")
    return rid, None


def _yaml_front_matter_errors(content: str) -> list[dict[str, str]]:
    """``/api/validate-yaml``: the errors of a card's YAML front matter (none when it has none)."""
    import yaml

    if not content.startswith("---"):
        return []
    front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
    try:
        data = yaml.safe_load(front)
        if data is not None and not isinstance(data, dict):
            raise ValueError("the front matter must be a mapping")
    except Exception as e:  # yaml.YAMLError, ValueError
        return [{"message": f"invalid YAML front matter: {e}"}]
    return []


def _repo_routes(router, root: Path, mirrors: Path, base: str, lock: threading.Lock, writes: bool) -> None:
    """The status route, ``POST /api/repos/create`` and ``POST /api/validate-yaml``."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    @router.get(STATUS_ROUTE)
    def status() -> dict[str, Any]:
        served = {}
        for git_dir in sorted((mirrors / "models").glob("*/*/.git")):
            try:
                served[f"{git_dir.parent.parent.name}/{git_dir.parent.name}"] = run_git(["rev-parse", "main"], git_dir.parent)
            except RuntimeError:
                pass
        return {"status": "ok", "root": str(root), "repos": served, "writes": writes}

    @router.post("/api/repos/create")
    async def create_repo(request: Request):
        body = await request.json()
        if body.get("type", "model") != "model":
            return _error(400, "the local lipzoo hub serves model repos only")
        rid = f"{body.get('organization')}/{body.get('name')}" if body.get("organization") else str(body.get("name"))
        try:
            check_repo_id(rid)
        except ValueError as e:
            return _error(400, str(e))
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
        errors = _yaml_front_matter_errors((await request.json()).get("content", ""))
        if errors:
            return JSONResponse({"errors": errors, "warnings": []}, 400)
        return {"errors": [], "warnings": []}


def _commit_routes(router, root: Path, mirrors: Path, base: str, lock: threading.Lock) -> None:
    """``preupload`` (every file inline) and ``commit`` (NDJSON operations -> a new snapshot of ``main``)."""
    from fastapi import Request
    from starlette.concurrency import run_in_threadpool

    @router.post("/api/{repo_type}/{org}/{name}/preupload/{revision}")
    async def preupload(repo_type: str, org: str, name: str, revision: str, request: Request):
        rid, err = _model_repo(mirrors, repo_type, org, name)
        if err:
            return err
        body = await request.json()
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for f in body.get("files", [])]
        return {"files": files, "commitOid": None}

    @router.post("/api/{repo_type}/{org}/{name}/commit/{revision}")
    async def commit(repo_type: str, org: str, name: str, revision: str, request: Request):
        rid, err = _model_repo(mirrors, repo_type, org, name)
        if err:
            return err
        if revision != "main":
            return _error(400, f"the local lipzoo hub only writes branch 'main', not {revision!r}", "RevisionNotFound")
        if request.query_params.get("create_pr") in ("1", "true", "True"):
            return _error(400, "the local lipzoo hub does not support pull requests")
        try:
            lines = [json.loads(x) for x in (await request.body()).decode().splitlines() if x.strip()]
        except ValueError as e:
            return _error(400, f"the commit body is not NDJSON: {e}")

        def do() -> str:
            with lock:
                return _apply_commit(root, mirrors, rid, lines)

        try:
            sha = await run_in_threadpool(do)
        except (ValueError, KeyError, OSError) as e:
            return _error(400, f"bad commit: {e}")
        return {"commitUrl": f"{base}/{rid}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}


def _mount_write_routes(app, root: Path, mirrors: Path, port: int, writes: bool = False) -> None:
    """Mount the routes olah lacks before olah's own, and HF's 404 answers for unknown revisions and files."""
    from fastapi import APIRouter, Request
    from starlette.concurrency import run_in_threadpool

    router = APIRouter()
    lock = threading.Lock()  # one writer at a time: create and commit rewrite git repos and the root folder
    base = f"http://127.0.0.1:{port}"
    _repo_routes(router, root, mirrors, base, lock, writes)
    _commit_routes(router, root, mirrors, base, lock)

    @router.head("/api/{repo_type}/{org}/{name}")
    @router.get("/api/{repo_type}/{org}/{name}")
    async def info_without_revision(repo_type: str, org: str, name: str, request: Request):
        from olah.server_api_routes import meta_proxy_common

        return await meta_proxy_common(request.app, repo_type=repo_type, org=org, repo=name, commit="main",
                                       method=request.method.lower(),
                                       authorization=request.headers.get("authorization"))

    app.router.routes[:0] = list(router.routes)  # before olah's routes, which would match these paths first

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
                    return _error(404, problem[1], problem[0])
        return await call_next(request)


# ----------------------------------------------------------------------------------------------- serving
def _bind(port: int) -> socket.socket:
    """A socket bound to ``127.0.0.1:port`` and listening; ``ServeError`` saying what to do when it cannot be."""
    if not 0 <= port <= 65535:
        raise ServeError(f"invalid port {port}: pass --port with a free port between 1024 and 65535")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a stopped server's TIME_WAIT does not block
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
        return sock
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} on 127.0.0.1 is already in use (another `lipzoo hub serve`?): "
                             "stop that server, or pass --port with a free port") from None
        reason = e.strerror or str(e)
        raise ServeError(f"cannot listen on 127.0.0.1:{port} ({reason}): pass --port with a free port "
                         "between 1024 and 65535") from None


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Inside, SIGTERM raises ``KeyboardInterrupt`` as SIGINT does, so ``finally`` blocks run on both.

    uvicorn catches both signals while serving and re-raises the one it got after its graceful shutdown;
    without this, that SIGTERM would end the process at once. No-op outside the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(app: Any, sock: socket.socket, on_ready: Callable[[], None]) -> None:
    """Serve ``app`` on the bound ``sock`` until uvicorn stops; ``on_ready()`` once it accepts requests."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                on_ready()

    Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


def _banner(root: Path, revisions: dict[str, str], port: int, token_file: Path | None) -> str:
    """What ``lipzoo hub serve`` prints once serving: the repos, the endpoint, how to write, how to stop."""
    lines = [f"lipzoo local hub: serving {len(revisions)} repo(s) from {root}"]
    lines += [f"  {rid} @ {sha}" for rid, sha in revisions.items()]
    lines += ["Use it with:", f"  export HF_ENDPOINT=http://127.0.0.1:{port}"]
    if token_file is None:
        lines.append("Read-only: restart with --allow-writes to publish to it.")
    else:
        lines.append(f"Writes need the token in {token_file} (`lipzoo publish` reads it; HfApi(token=...) for others).")
    return "\n".join(lines + ["Stop with Ctrl-C."])


def _new_state_dir(port: int) -> Path:
    """A fresh folder ``~/.cache/lipzoo/hub-server/<port>-*`` for one server's mirrors, config and logs."""
    from ..data import cache_dir

    (cache_dir() / "hub-server").mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{port}-", dir=cache_dir() / "hub-server"))


def serve(root: str | os.PathLike | None = None, port: int = DEFAULT_PORT, state_dir: str | os.PathLike | None = None,
          quiet: bool = False, allow_writes: bool = False, token: str | None = None) -> None:
    """Serve ``root`` (default: the project's ``hub/``) on ``127.0.0.1:port`` until SIGINT/SIGTERM.

    The port is bound first: a taken port raises :class:`ServeError` before anything is built or printed, and
    the endpoint is printed (unless ``quiet``) only once the server accepts requests. Read-only unless
    ``allow_writes``; then writes need ``token`` (default ``$LIPZOO_HUB_TOKEN``, else a random one), kept in
    :func:`token_path` while serving. The git mirrors, olah's config and its logs live in ``state_dir``
    (default: a fresh folder under ``~/.cache/lipzoo/hub-server``); a folder this function created, and the
    token file, are deleted when it returns or raises (``KeyboardInterrupt`` on SIGINT and SIGTERM alike).
    """
    root = hub_dir(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"hub root {root} does not exist: create it, or pass --root pointing at a hub/ folder")
    sock = _bind(port)
    port = sock.getsockname()[1]  # --port 0: the port the system picked
    token = (token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)) if allow_writes else None
    own_state, state = state_dir is None, None
    with contextlib.closing(sock), _sigterm_interrupts():
        try:
            state = _new_state_dir(port) if own_state else Path(state_dir)
            mirrors, logs = state / "mirrors", state / "logs"
            for d in (mirrors / "models", logs, state / "olah-cache"):
                d.mkdir(parents=True, exist_ok=True)
            stdout = sys.stdout  # olah replaces sys.stdout with a logger on import
            revisions = build_mirrors(root, mirrors)
            _olah_config(state / "olah.toml", port, mirrors, state / "olah-cache")
            os.environ["OLAH_CONFIG"] = str(state / "olah.toml")  # olah reads its config at import
            os.environ["OLAH_LOG_PATH"] = str(logs)
            from olah.server import app

            _mount_write_routes(app, root, mirrors, port, writes=token is not None)
            _mount_guard(app, port, token)
            banner = _banner(root, revisions, port, write_token(port, token) if token else None)

            def ready() -> None:
                if not quiet:
                    print(banner, file=stdout, flush=True)

            _run(app, sock, ready)
        finally:
            if token:
                _remove_token(port, token)
            if own_state and state is not None:
                shutil.rmtree(state, ignore_errors=True)


# Runs serve(**json.loads(argv[2])) without executing lipzoo/__init__.py, which imports torch and the model
# registry (seconds of start-up on a busy CPU) that the server never uses. argv[1] is the lipzoo/hub folder.
_BOOTSTRAP = """
import json, sys, types
from pathlib import Path
hub = Path(sys.argv[1])
for name, path in (("lipzoo", hub.parent), ("lipzoo.hub", hub)):
    if name not in sys.modules:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
from lipzoo.hub.server import ServeError, serve
try:
    serve(**json.loads(sys.argv[2]))
except (ServeError, FileNotFoundError) as e:
    sys.exit(f"lipzoo hub server: {e}")
except KeyboardInterrupt:  # SIGTERM from LocalHub.stop: a requested stop
    pass
"""


class LocalHub:
    """The local hub in a subprocess, for tests and scripts.

    >>> with LocalHub(root="hub/") as hub:      # doctest: +SKIP
    ...     os.environ["HF_ENDPOINT"] = hub.endpoint   # before huggingface_hub is imported

    ``port=None`` picks a free port. :meth:`start` waits until the server answers (``startup_timeout``);
    :meth:`stop` terminates only this server's own process and removes its state directory. The server is
    read-only unless ``allow_writes``; then clients send :attr:`token` (default: a random one), e.g.
    ``HfApi(token=hub.token)`` or ``$LIPZOO_HUB_TOKEN`` for ``lipzoo publish``.
    """

    def __init__(self, root: str | os.PathLike | None = None, port: int | None = None, startup_timeout: float = 60.0,
                 allow_writes: bool = False, token: str | None = None):
        self.root = hub_dir(root).resolve()
        self.port = port or free_port()
        self.startup_timeout = startup_timeout
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.allow_writes = allow_writes
        self.token: str | None = (token or secrets.token_urlsafe(32)) if allow_writes else None
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
        kwargs = {"root": str(self.root), "port": self.port, "state_dir": str(self._state / "state"), "quiet": True,
                  "allow_writes": self.allow_writes}  # the token goes in the environment: argv is visible in ps
        cmd = [sys.executable, "-c", _BOOTSTRAP, str(Path(__file__).resolve().parent), json.dumps(kwargs)]
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV} | {"PYTHONUNBUFFERED": "1"}
        if self.token:
            env[TOKEN_ENV] = self.token  # the environment, not argv: other users can read argv in ps
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
