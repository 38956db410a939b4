"""Pretrained weights: downloaded with ``huggingface_hub``, pinned, sha256-checked, verified once per sha256.

:func:`load_pretrained` is what ``lipzoo.create_model(..., pretrained=True)``, ``timm.create_model('arch.tag' |
'hf-hub:org/name', pretrained=True)`` and ``torch.hub.load`` all end in. It

1. refuses anything but ``.safetensors`` (no pickle is ever read);
2. downloads ``config.json`` and ``model.safetensors`` with ``hf_hub_download`` (``HF_ENDPOINT``, ``HF_HOME``,
   ``HF_HUB_OFFLINE`` are honoured) at the pinned revision of ``published.json`` (or ``revision=``). An
   unreachable hub is detected in a few seconds; the cached copy is then used, else :class:`HubUnreachableError`;
3. checks the file's sha256 against ``published.json`` (for repos not listed there: against the repo's own
   ``config.json``, with a warning);
4. refuses a ``config.json`` whose ``architecture`` names another model than the one being loaded, and weights
   with extra or missing keys;
5. verifies: runs ``lipzoo.verify`` against the claims in ``config.json`` (refused at once if an eps label
   does not name its value) unless a passing report with the same :func:`verification_key` is cached in
   ``~/.cache/lipzoo/verified/``. The key is everything that defines the measured function and what it is checked
   against: the weights' sha256, the architecture and exact constructor arguments of the model, the claims, the
   certifier version and the lipzoo version.

Any failure after the download (an exception of any kind, a refusal or an interruption) removes this repo's
downloaded snapshot entries, and their blobs unless another snapshot of the same repo still uses them, from the
Hugging Face cache before raising, so nothing half-trusted stays behind. Other repos' files are never touched.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from .. import _manifest

__all__ = ["load_pretrained", "download_and_report", "HubError", "IntegrityError", "PickleRefusedError",
           "HubUnreachableError", "VerificationFailedError", "InvalidClaimsError", "verification_mode",
           "verification_key", "verified_report_path", "registry_entry"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_MODES = ("off", "quick", "full")
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")  # pickle protocols, torch zip


class HubError(RuntimeError):
    """Base class of the download errors."""


class IntegrityError(HubError):
    """The downloaded file is not the published one (tampered, truncated, or not safetensors)."""


class PickleRefusedError(HubError):
    """A pickle (``.bin``/``.pt``/``.pth`` or pickle bytes) was offered as weights."""


class HubUnreachableError(HubError):
    """No hub answered and no cached copy exists."""


class VerificationFailedError(HubError):
    """The weights do not reach the accuracies their card claims."""

    def __init__(self, message: str, report: Any = None):
        super().__init__(message)
        self.report = report


class InvalidClaimsError(HubError, ValueError):
    """The claims record in ``config.json`` cannot be verified as written (e.g. an eps label that does not name
    its value). Both a :class:`HubError` and a ``ValueError``."""


# ----------------------------------------------------------------------------------------------- helpers
def registry_entry(repo_id: str, model_id: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """``(arch.tag, entry)`` of ``published.json`` for ``repo_id`` (:func:`lipzoo._manifest.lookup_repo`: the entry
    ``model_id`` when it names that repo, else the first entry whose ``hf_hub_id`` is ``repo_id``); ``(None, None)``
    if there is none."""
    return _manifest.lookup_repo(repo_id, model_id) or (None, None)


def _purge(paths: list[str]) -> None:
    """Remove downloaded snapshot entries, and the blobs they point to unless another snapshot of the same repo
    still uses them (a refused revision may share an unchanged file with a trusted one); a snapshot folder left
    empty goes too. Only paths inside this repo's cache folder are touched."""
    for p in paths:
        blob = os.path.realpath(p)
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
        parts = Path(p).parts
        if blob == os.path.abspath(p) or "snapshots" not in parts:
            continue  # not a symlinked cache entry: the file itself was removed
        snapshots = Path(*parts[: len(parts) - parts[::-1].index("snapshots")])
        still_used = any(os.path.realpath(q) == blob for q in snapshots.rglob("*") if q.is_symlink())
        if not still_used and Path(blob).parent == Path(os.path.realpath(snapshots.parent / "blobs")):
            try:
                os.unlink(blob)
            except FileNotFoundError:
                pass
        _remove_empty_dirs(Path(p).parent, stop=snapshots)


def _remove_empty_dirs(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents while they are empty, up to (not including) ``stop``."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty, or already gone
            return
        folder = folder.parent


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _fetch(repo_id: str, revisions: list[str | None], cache_dir: str | None) -> tuple[str, str, str | None]:
    """Download config.json and model.safetensors; returns their paths and the revision used."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from .server import endpoint_reachable

    endpoint = _endpoint()
    offline = bool(constants.HF_HUB_OFFLINE)
    unreachable = not offline and not endpoint_reachable(endpoint)  # a few seconds, not 20 s of retries
    local_only = offline or unreachable
    last: Exception | None = None
    for rev in revisions:
        try:
            kwargs = dict(revision=rev, cache_dir=cache_dir, local_files_only=local_only, etag_timeout=5)
            cfg = hf_hub_download(repo_id, CONFIG, **kwargs)
            weights = hf_hub_download(repo_id, WEIGHTS, **kwargs)
        except RevisionNotFoundError as e:  # try the next pinned revision (local snapshot vs. remote commit)
            last = e
            continue
        except RepositoryNotFoundError as e:
            raise HubError(f"{repo_id} does not exist on {endpoint}. Is HF_ENDPOINT right, and does the hub serve "
                           "the project's hub/ folder (`lipzoo hub serve`)?") from e
        except LocalEntryNotFoundError as e:
            if not local_only:
                raise HubError(f"could not download {repo_id}@{rev or 'main'} from {endpoint}: {e}") from e
            last = e
            continue
        except EntryNotFoundError as e:
            raise HubError(f"{repo_id}@{rev or 'main'} on {endpoint} has no {CONFIG} or {WEIGHTS}; lipzoo loads only "
                           "repos in its published layout (safetensors weights, never pickles)") from e
        if unreachable:
            warnings.warn(f"the hub at {endpoint} is unreachable; using the cached copy of {repo_id}@{rev or 'main'}",
                          RuntimeWarning, stacklevel=4)
        return cfg, weights, rev
    if local_only:
        why = f"the hub at {endpoint} is unreachable" if unreachable else "HF_HUB_OFFLINE=1 is set"
        raise HubUnreachableError(
            f"cannot get {repo_id} (revision {' or '.join(r or 'main' for r in revisions)}): {why} and there is no "
            f"cached copy in {cache_dir or constants.HF_HUB_CACHE}. Start the local hub (`lipzoo hub serve`, then "
            "export HF_ENDPOINT=http://127.0.0.1:<port>), connect to the Hugging Face Hub, or unset HF_HUB_OFFLINE."
        ) from last
    raise HubError(
        f"the hub at {endpoint} does not have revision {' or '.join(r or 'main' for r in revisions)} of {repo_id}, "
        "which lipzoo's published.json pins: it serves another version of the repo. Serve the hub/ folder that "
        "matches this lipzoo (`lipzoo hub serve`), or pass revision='main' to take the hub's current version "
        "(its sha256 is still checked)") from last


def verification_mode(verify: bool | str | None, claims: Mapping[str, Any]) -> str:
    """``'off'``, ``'quick'`` or ``'full'`` from the ``verify`` argument, else ``$LIPZOO_VERIFY``, else automatic.

    Automatic: ``'full'`` when a local copy of the claimed dataset is found (``lipzoo.data.find_root``; claims
    measured on a quick subset give ``'quick'``), otherwise ``'off'`` with a warning. Claims of a quick subset
    are always checked in quick mode.
    """
    from ..data import DataNotFoundError, find_root

    value = verify if verify is not None else os.environ.get("LIPZOO_VERIFY")
    text = "auto" if value is None or value is True or value == "" else str(value).lower()
    if value is False or text in ("0", "off", "false", "no", "skip"):
        return "off"
    if text not in ("quick", "full", "1", "true", "auto"):
        raise ValueError(f"verify must be one of 0|quick|full (argument verify= or LIPZOO_VERIFY), got {value!r}")
    dataset = claims.get("dataset", "cifar10")
    try:
        have_data = find_root(dataset) is not None
    except DataNotFoundError:
        have_data = False
    requested = text if text in ("quick", "full") else None
    if not have_data:
        if requested:
            raise HubError(f"verify={requested!r} needs a local copy of the {dataset} test set (set LIPZOO_DATA), "
                           "or pass verify=0 / LIPZOO_VERIFY=0 to load without verification")
        warnings.warn(f"no local copy of {dataset} was found: the claims of these weights are NOT verified "
                      "(set LIPZOO_DATA to the dataset to enable it; LIPZOO_VERIFY=0 silences this)",
                      RuntimeWarning, stacklevel=3)
        return "off"
    if claims.get("subset", "full") != "full":
        return "quick"
    return requested or "full"


def _certifier_version() -> str:
    from ..certification import CERTIFIER_VERSION

    return CERTIFIER_VERSION


class _NoCanonicalForm(Exception):
    """A constructor argument without a stable JSON form: the model's cache key is unknown."""


def _canonical(value: Any) -> Any:
    """``value`` as plain JSON data that is equal exactly when the values are (tuples as lists, classes and
    functions by qualified name, dtypes by name); :class:`_NoCanonicalForm` for anything else."""
    import torch

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, type) or inspect.isfunction(value) or inspect.isbuiltin(value):
        name = f"{value.__module__}.{value.__qualname__}"
        if "<" not in name:  # a lambda or a local closure: the name does not say what it computes
            return name
    raise _NoCanonicalForm(repr(value))


def verification_key(sha256: str, claims: Mapping[str, Any], model: nn.Module) -> dict[str, Any] | None:
    """Everything that defines the measured function and what it is checked against: the weights' sha256, the
    model's architecture, constructor and exact constructor arguments (:func:`lipzoo.models._builder.build_record`),
    the claims, the certifier version and the lipzoo version, as plain JSON data.

    ``None`` when the model's construction is unknown (not built by lipzoo's builder) or has an argument without a
    stable JSON form: such a model is verified on every load and its report is never cached."""
    from .._version import __version__
    from ..models._builder import build_record

    record = build_record(model)
    if record is None:
        return None
    try:
        built = _canonical(record)
    except _NoCanonicalForm:
        return None
    return {"sha256": sha256, "architecture": built.get("architecture"), "constructor": built.get("constructor"),
            "model_args": built.get("model_args"), "claims": json.loads(json.dumps(claims, sort_keys=True)),
            "certifier_version": _certifier_version(), "lipzoo_version": __version__}


def _key_digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def verified_report_path(sha256: str, claims: Mapping[str, Any], model: nn.Module) -> Path | None:
    """Where the verification report of these weights and claims, measured on ``model`` as built, is cached:
    one file per :func:`verification_key`; ``None`` when the key is unknown (nothing is cached)."""
    from ..data import cache_dir

    key = verification_key(sha256, claims, model)
    if key is None:
        return None
    return cache_dir() / "verified" / f"{sha256}-{_certifier_version()}-{_key_digest(key)}.json"


def _report_text(report: Any) -> str:
    for attr in ("to_markdown",):
        if callable(getattr(report, attr, None)):
            return report.to_markdown()
    return str(report)


def _cached_pass(path: Path, key: Mapping[str, Any], mode: str) -> dict[str, Any] | None:
    """The record cached at ``path`` if it passed, holds exactly ``key`` and was measured in a mode at least as
    strong as ``mode``; else ``None`` (also for a missing or corrupt file, which is simply redone)."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(cached, dict) or not cached.get("passed") or cached.get("key") != key:
        return None
    if cached.get("mode") not in _MODES or _MODES.index(cached["mode"]) < _MODES.index(mode):
        return None
    return cached


def _write_atomically(path: Path, record: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


def _measure(model: nn.Module, claims: Mapping[str, Any], mode: str, name: str) -> Any:
    """``lipzoo.verify`` of ``model`` in eval mode (its training flag is restored afterwards), with a progress
    bar and a note saying what is measured."""
    from .. import _progress
    from ..verification import verify

    what = "the full test split" if mode == "full" else "a class-stratified subset of the test split"
    _progress.note(f"{name}: verifying the claimed certified accuracies on {what} ({mode} mode; once per download)")
    was_training = model.training
    try:
        return verify(model.eval(), dict(claims), mode=mode, name=name, progress=_progress.enabled())
    finally:
        model.train(was_training)


def _verify_once(model: nn.Module, claims: Mapping[str, Any], mode: str, sha256: str, repo_id: str,
                 revision: str | None) -> tuple[bool, Any]:
    """Verify unless a passing record with the same :func:`verification_key`, measured in a mode at least as strong
    as ``mode``, is cached; cache a new passing record. ``(passed, report or cached record)``. A model without a
    key is measured every time."""
    from filelock import FileLock

    name = f"{repo_id}@{revision or 'main'}"
    key = verification_key(sha256, claims, model)
    if key is None:
        report = _measure(model, claims, mode, name)
        return report.passed, report
    path = verified_report_path(sha256, claims, model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # concurrent first downloads: one verifies, the others read its report
        cached = _cached_pass(path, key, mode)
        if cached is not None:
            from .. import _progress

            _progress.note(f"{name}: claims verified before ({cached['mode']} mode), report {path}; to measure again "
                           f"delete that file or run `lipzoo verify {_arch_tag(model) or repo_id} --pretrained`")
            return True, cached
        report = _measure(model, claims, mode, name)
        if not report.passed:
            return False, report
        _write_atomically(path, {"passed": True, "mode": mode, "sha256": sha256, "repo_id": repo_id,
                                 "revision": revision, "certifier_version": _certifier_version(), "key": key,
                                 "claims": dict(claims), "report": report.to_dict()})
        return True, report


def _arch_tag(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch, tag = cfg.get("architecture"), cfg.get("tag")
    return f"{arch}.{tag}" if arch and tag else None


def _is_safetensors(data: bytes) -> bool:
    """The safetensors framing: an 8-byte little-endian header length, then a JSON header that fits."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    return 0 < n <= len(data) - 8 and data[8:9] == b"{"


def _refuse_pickle_name(filename: str) -> None:
    if not filename.endswith(".safetensors"):
        raise PickleRefusedError(f"lipzoo only loads .safetensors weights, not {filename!r}: pickle files can run code "
                                 "when loaded. Convert the checkpoint to safetensors (lipzoo.convert) and publish it")


# ----------------------------------------------------------------------------------------------- checks
def _read_weights(weights_path: str, repo_id: str) -> tuple[bytes, str]:
    """The weights' bytes and sha256 (read once: the bytes hashed are the bytes loaded); a pickle is refused."""
    with open(weights_path, "rb") as f:
        data = f.read()
    if not _is_safetensors(data) and data.startswith(_PICKLE_MAGIC):
        raise PickleRefusedError(f"{repo_id}/{WEIGHTS} is a pickle, not safetensors: refused and removed from the "
                                 "cache")
    return data, hashlib.sha256(data).hexdigest()


def _read_config(cfg_path: str, repo_id: str) -> dict[str, Any]:
    """The repo's ``config.json``; :class:`IntegrityError` if it is not a JSON object."""
    try:
        config = json.loads(Path(cfg_path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{repo_id}/{CONFIG} is not valid JSON ({e}); removed from the cache") from e
    if not isinstance(config, dict):
        raise IntegrityError(f"{repo_id}/{CONFIG} is not a JSON object; removed from the cache")
    return config


def _check_sha256(sha: str, size: int, block: Mapping[str, Any], entry: Mapping[str, Any] | None,
                  model_id: str | None, where: str) -> None:
    """The weights are the published ones (``published.json``), or, for a repo not listed there, the ones its own
    ``config.json`` declares (with a warning); :class:`IntegrityError` otherwise."""
    if entry is not None:
        if sha != entry.get("sha256"):
            raise IntegrityError(
                f"{where}/{WEIGHTS} has sha256 {sha} ({size} bytes) but {model_id} was published with "
                f"{entry.get('sha256')}: the file is tampered with or truncated. It was removed from the cache; "
                "do not use it. Re-download, or check the hub you are talking to (HF_ENDPOINT).")
        if block.get("sha256") not in (None, sha):
            raise IntegrityError(f"{where}/{CONFIG} describes other weights (sha256 {block.get('sha256')}) than the "
                                 f"published {WEIGHTS} ({sha}); removed from the cache")
        return
    declared = block.get("sha256")
    if not declared:
        raise IntegrityError(f"{where} is not in lipzoo's published.json and its {CONFIG} declares no sha256: "
                             "there is nothing to check the weights against; refused")
    if sha != declared:
        raise IntegrityError(f"{where}/{WEIGHTS} has sha256 {sha} but its {CONFIG} declares {declared}: tampered "
                             "or truncated; removed from the cache")
    warnings.warn(f"{where.partition('@')[0]} is not in lipzoo's published.json: its sha256 is checked against the "
                  "repo's own config.json only", RuntimeWarning, stacklevel=4)


def _model_architecture(model: nn.Module) -> str | None:
    """The architecture ``model`` was built as (its build record, else its ``pretrained_cfg``), if known."""
    from ..models._builder import build_record

    record = build_record(model) or {}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return record.get("architecture") or cfg.get("architecture")


def _check_architecture(config: Mapping[str, Any], model: nn.Module, where: str) -> None:
    """:class:`HubError` when ``config.json`` (``architecture``, or ``lipzoo.arch``) names another architecture than
    the model's: its weights and claims belong to that other model."""
    ours = _model_architecture(model)
    block = config.get("lipzoo") or {}
    named = {str(a) for a in (config.get("architecture"), block.get("arch")) if a}
    if ours is None or not named or named == {ours}:
        return
    raise HubError(f"{where}/{CONFIG} describes architecture {' / '.join(sorted(named))}, not {ours}: these weights "
                   "and their claims belong to another model. Refused and removed from the cache; create the model the "
                   f"repo names (timm.create_model('hf-hub:{where.partition('@')[0]}'))")


def _load_weights(model: nn.Module, data: bytes, where: str) -> None:
    """Load the safetensors bytes into ``model`` strictly (same keys, same shapes)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise IntegrityError(f"{where}/{WEIGHTS} is not a valid safetensors file ({e}); removed from the cache") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        why = " ".join(line.strip() for line in str(e).splitlines()[:3])
        raise HubError(
            f"the weights of {where} do not fit this model ({why[:400]}); removed from the cache. A "
            "pretrained certified model and its head are one unit: create it without num_classes or other "
            "architecture overrides, or load pretrained=False and fine-tune, then re-certify") from e


def _check_claims(claims: Mapping[str, Any], where: str) -> None:
    """:class:`InvalidClaimsError` (a ``ValueError``) when the claims record cannot be verified as written, e.g. an
    eps label that does not name its value (:func:`lipzoo.verification.claimed_eps`)."""
    from ..verification import claimed_eps

    try:
        claimed_eps(claims)
    except ValueError as e:
        raise InvalidClaimsError(f"{where}/{CONFIG}: {e}. Refused and removed from the cache") from e


def _verify_claims(model: nn.Module, claims: Mapping[str, Any] | None, verify: bool | str | None, sha: str,
                   repo_id: str, revision: str | None) -> None:
    """Verify ``claims`` on ``model`` (once per :func:`verification_key`) unless verification is off; raises
    :class:`VerificationFailedError` / :class:`InvalidClaimsError` when the weights cannot be trusted."""
    where = f"{repo_id}@{revision or 'main'}"
    mode = verification_mode(verify, claims or {})
    if mode == "off":
        return
    if not claims:
        raise VerificationFailedError(f"{where} states no claims (config.json has no lipzoo.claims) to verify; "
                                      "refused. Pass verify=0 to load it unverified")
    _check_claims(claims, where)
    passed, report = _verify_once(model, claims, mode, sha, repo_id, revision)
    if not passed:
        raise VerificationFailedError(
            f"{where} does not reach the accuracies its card claims ({mode} verification); the weights were removed "
            f"from the cache and not loaded as trusted.\n\n{_report_text(report)}", report)


def _entry_at(entry: Mapping[str, Any] | None, revision: str | None) -> Mapping[str, Any] | None:
    """The manifest's record of the weights at ``revision``: a revision published before (``entry['previous']``,
    written by ``lipzoo publish``) is checked against its own sha256 and its own card's claims; any other revision
    against the entry's pin."""
    for old in (entry or {}).get("previous") or []:
        if revision and revision in (old.get("revision"), old.get("hub_revision")):
            return {**entry, "revision": old.get("revision"), "hub_revision": old.get("hub_revision"),
                    "sha256": old.get("sha256"), "claims": None}
    return entry


def _load_downloaded(model: nn.Module, cfg_path: str, weights_path: str, repo_id: str, revision: str | None,
                     model_id: str | None, entry: Mapping[str, Any] | None, verify: bool | str | None) -> None:
    """Every check of a downloaded repo, then the weights into ``model``, then verification; raises on refusal
    (the caller removes the files)."""
    where = f"{repo_id}@{revision or 'main'}"
    data, sha = _read_weights(weights_path, repo_id)
    config = _read_config(cfg_path, repo_id)
    block = config.get("lipzoo") or {}
    entry = _entry_at(entry, revision)
    _check_sha256(sha, len(data), block, entry, model_id, where)
    _check_architecture(config, model, where)
    _load_weights(model, data, where)
    _verify_claims(model, block.get("claims") or (entry or {}).get("claims"), verify, sha, repo_id, revision)


# ----------------------------------------------------------------------------------------------- entry point
def _revisions(entry: Mapping[str, Any] | None, revision: str | None, pinned: str) -> list[str | None]:
    """The revisions to try: the caller's, else the one pinned in the hub id, else those of ``published.json``,
    else ``main`` (``None``)."""
    if revision or pinned:
        return [revision or pinned]
    revisions = [r for r in dict.fromkeys([(entry or {}).get("revision"), (entry or {}).get("hub_revision")]) if r]
    return revisions or [None]


def load_pretrained(
    model: nn.Module,
    pretrained_cfg: Mapping[str, Any],
    verify: bool | str | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> nn.Module:
    """Load the published weights named by ``pretrained_cfg['hf_hub_id']`` (``'org/name[@revision]'``) into
    ``model`` (in place) and return it.

    Args:
        verify: ``'full'``, ``'quick'``, ``False``/``0`` or ``None`` (``$LIPZOO_VERIFY``, else automatic: see
            :func:`verification_mode`).
        revision: a branch, tag or commit; default: the revision pinned in ``published.json``, else ``main``.
        cache_dir: the Hugging Face cache to use (default ``$HF_HUB_CACHE``).

    Raises:
        PickleRefusedError, IntegrityError, HubUnreachableError, VerificationFailedError, InvalidClaimsError,
        HubError. Whatever is raised after the download, the downloaded files of this repo are removed from the
        Hugging Face cache first.
    """
    cfg = dict(pretrained_cfg or {})
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise HubError(f"no hub repo is known for {cfg.get('architecture', 'this model')}: its pretrained_cfg has no "
                       "hf_hub_id. Published weights: lipzoo.list_pretrained()")
    _refuse_pickle_name(cfg.get("hf_hub_filename") or WEIGHTS)
    repo_id, _, pinned = str(hub_id).partition("@")
    tagged = f"{cfg.get('architecture')}.{cfg.get('tag')}" if cfg.get("architecture") and cfg.get("tag") else None
    model_id, entry = registry_entry(repo_id, tagged)
    cache = str(cache_dir) if cache_dir is not None else None
    cfg_path, weights_path, used_rev = _fetch(repo_id, _revisions(entry, revision, pinned), cache)
    try:
        _load_downloaded(model, cfg_path, weights_path, repo_id, used_rev, model_id, entry, verify)
    except BaseException:  # refused, failed or interrupted: nothing half-trusted stays in the cache
        _purge([weights_path, cfg_path])
        raise
    return model


def _report_markdown(record: Mapping[str, Any]) -> str:
    """The markdown table of a cached verification record (``lipzoo.verify``'s report format)."""
    try:
        from dataclasses import fields

        from ..verification import Check, VerificationReport

        data = dict(record["report"])
        names = {f.name for f in fields(VerificationReport)} - {"result"}
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        return VerificationReport(**{k: v for k, v in data.items() if k in names}).to_markdown()
    except Exception:  # another report format: show it as it is
        return json.dumps(record.get("report"), indent=2, default=str)


def download_and_report(name: str, verify: bool | str | None = None) -> int:
    """Download the published weights ``name`` (``'arch.tag'`` or ``'arch'``) like ``lipzoo.create_model(name,
    pretrained=True)`` and print what was checked: repo, revision, sha256, and claims vs measured. Returns 0 when
    the weights were loaded (trusted), 1 when they were refused (the reason is printed to stderr)."""
    import sys

    import timm

    from ..models._registry import pretrained_name

    try:
        model = timm.create_model(pretrained_name(name), pretrained=True, verify=verify)
    except (HubError, ValueError) as e:  # refused weights, or an unknown / unpublished name
        print(f"{name}: refused ({type(e).__name__})\n{e}", file=sys.stderr)
        return 1
    cfg = model.pretrained_cfg
    repo_id = str(cfg.get("hf_hub_id", "")).partition("@")[0]
    model_id, entry = registry_entry(repo_id, f"{cfg.get('architecture')}.{cfg.get('tag')}")
    entry = entry or {}
    print(f"{model_id or name}: {repo_id} @ {entry.get('revision') or 'main'}\n  model.safetensors sha256 "
          f"{entry.get('sha256')} (checked)")
    claims = entry.get("claims")
    report = verified_report_path(entry["sha256"], claims, model) if claims and entry.get("sha256") else None
    if report is not None and report.exists():
        record = json.loads(report.read_text())
        print(f"  claims verified ({record.get('mode')} mode, certifier {record.get('certifier_version')}); "
              f"report cached in {report}\n")
        print(_report_markdown(record))
    else:
        print("  claims NOT verified (no local test set, or verification switched off)")
    return 0
