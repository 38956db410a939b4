"""Pretrained weights: downloaded with ``huggingface_hub``, pinned, sha256-checked, verified once per sha256.

:func:`load_pretrained` is what ``lipzoo.create_model(..., pretrained=True)``, ``timm.create_model('arch.tag' |
'hf-hub:org/name', pretrained=True)`` and ``torch.hub.load`` all end in. It

1. refuses anything but ``.safetensors`` (no pickle is ever read);
2. downloads ``config.json`` and ``model.safetensors`` with ``hf_hub_download`` (``HF_ENDPOINT``, ``HF_HOME``,
   ``HF_HUB_OFFLINE`` are honoured) at the pinned revision of ``published.json`` (or ``revision=``). An
   unreachable hub is detected in a few seconds; the cached copy is then used, else :class:`HubUnreachableError`;
3. checks the file's sha256 against ``published.json`` (for repos not listed there: against the repo's own
   ``config.json``, with a warning);
4. on the first download of a sha256 (per certifier version and claims), runs ``lipzoo.verify.verify`` against
   the claims in ``config.json`` and caches the report in ``~/.cache/lipzoo/verified/``.

Any failure removes the downloaded files from the Hugging Face cache before raising, so nothing half-trusted
stays behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

from torch import nn

__all__ = ["load_pretrained", "download_and_report", "HubError", "IntegrityError", "PickleRefusedError",
           "HubUnreachableError", "VerificationFailedError", "verification_mode", "verified_report_path",
           "registry_entry"]

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


# ----------------------------------------------------------------------------------------------- helpers
def registry_entry(repo_id: str, model_id: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """``(arch.tag, entry)`` of ``published.json`` for ``repo_id``: the entry ``model_id`` when it names that
    repo, else the first entry whose ``hf_hub_id`` is ``repo_id``; ``(None, None)`` if there is none."""
    from ..models._builder import published_weights

    published = published_weights()
    if model_id in published and published[model_id].get("hf_hub_id") == repo_id:
        return model_id, published[model_id]
    for key, entry in published.items():
        if entry.get("hf_hub_id") == repo_id:
            return key, entry
    return None, None


def _purge(paths: list[str]) -> None:
    """Remove downloaded snapshot entries, and the blobs they point to unless another snapshot still uses them
    (a refused revision may share an unchanged file with a trusted one)."""
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
        if not still_used:
            try:
                os.unlink(blob)
            except FileNotFoundError:
                pass


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
    from .. import certify

    return str(getattr(certify, "CERTIFIER_VERSION", "unknown"))


def _claims_digest(claims: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(claims, sort_keys=True).encode()).hexdigest()[:16]


def verified_report_path(sha256: str, claims: Mapping[str, Any]) -> Path:
    """Where the verification report of these weights and claims is cached (per certifier version)."""
    from ..data import cache_dir

    return cache_dir() / "verified" / f"{sha256}-{_certifier_version()}-{_claims_digest(claims)}.json"


def _report_text(report: Any) -> str:
    for attr in ("to_markdown",):
        if callable(getattr(report, attr, None)):
            return report.to_markdown()
    return str(report)


def _verify_once(model: nn.Module, claims: Mapping[str, Any], mode: str, sha256: str, repo_id: str,
                 revision: str | None) -> tuple[bool, Any]:
    """Verify unless a cached passing report at least as strong as ``mode`` exists; ``(passed, report)``."""
    from filelock import FileLock

    path = verified_report_path(sha256, claims)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):  # concurrent first downloads: one verifies, the others read its report
        if path.exists():
            try:
                cached = json.loads(path.read_text())
                if cached.get("passed") and _MODES.index(cached.get("mode", "off")) >= _MODES.index(mode):
                    return True, cached
            except (json.JSONDecodeError, ValueError):
                pass  # a corrupt cache entry is simply redone
        from ..verify import verify

        was_training = model.training
        try:
            report = verify(model.eval(), dict(claims), mode=mode, name=f"{repo_id}@{revision or 'main'}")
        finally:
            model.train(was_training)
        if not report.passed:
            return False, report
        record = {"passed": True, "mode": mode, "sha256": sha256, "repo_id": repo_id, "revision": revision,
                  "certifier_version": _certifier_version(), "claims": dict(claims), "report": report.to_dict()}
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2, default=str))
        os.replace(tmp, path)
        return True, report


def _is_safetensors(data: bytes) -> bool:
    """The safetensors framing: an 8-byte little-endian header length, then a JSON header that fits."""
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    return 0 < n <= len(data) - 8 and data[8:9] == b"{"


def _refuse_pickle_name(filename: str) -> None:
    if not filename.endswith(".safetensors"):
        raise PickleRefusedError(f"lipzoo only loads .safetensors weights, not {filename!r}: pickle files can run code "
                                 "when loaded. Convert the checkpoint to safetensors (lipzoo.convert) and publish it")


# ----------------------------------------------------------------------------------------------- entry point
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
        PickleRefusedError, IntegrityError, HubUnreachableError, VerificationFailedError, HubError.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    cfg = dict(pretrained_cfg or {})
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise HubError(f"no hub repo is known for {cfg.get('architecture', 'this model')}: its pretrained_cfg has no "
                       "hf_hub_id. Published weights: lipzoo.list_pretrained()")
    _refuse_pickle_name(cfg.get("hf_hub_filename") or WEIGHTS)
    repo_id, _, pinned = str(hub_id).partition("@")
    tagged = f"{cfg.get('architecture')}.{cfg.get('tag')}" if cfg.get("architecture") and cfg.get("tag") else None
    model_id, entry = registry_entry(repo_id, tagged)
    if revision or pinned:
        revisions = [revision or pinned]
    else:
        revisions = [r for r in dict.fromkeys([(entry or {}).get("revision"), (entry or {}).get("hub_revision")]) if r]
        revisions = revisions or [None]
    cache = str(cache_dir) if cache_dir is not None else None
    cfg_path, weights_path, used_rev = _fetch(repo_id, revisions, cache)
    downloaded = [weights_path, cfg_path]

    def refuse(exc: HubError) -> None:
        _purge(downloaded)
        raise exc

    with open(weights_path, "rb") as f:
        data = f.read()  # read once: the bytes hashed are the bytes loaded
    if not _is_safetensors(data) and data.startswith(_PICKLE_MAGIC):
        refuse(PickleRefusedError(f"{repo_id}/{WEIGHTS} is a pickle, not safetensors: refused and removed from the cache"))
    sha = hashlib.sha256(data).hexdigest()
    try:
        config = json.loads(Path(cfg_path).read_text())
    except json.JSONDecodeError as e:
        refuse(IntegrityError(f"{repo_id}/{CONFIG} is not valid JSON ({e}); removed from the cache"))
    block = config.get("lipzoo") or {}
    where = f"{repo_id}@{used_rev or 'main'}"
    if entry is not None:
        if sha != entry.get("sha256"):
            refuse(IntegrityError(
                f"{where}/{WEIGHTS} has sha256 {sha} ({len(data)} bytes) but {model_id} was published with "
                f"{entry.get('sha256')}: the file is tampered with or truncated. It was removed from the cache; "
                "do not use it. Re-download, or check the hub you are talking to (HF_ENDPOINT)."))
        if block.get("sha256") not in (None, sha):
            refuse(IntegrityError(f"{where}/{CONFIG} describes other weights (sha256 {block.get('sha256')}) than the "
                                  f"published {WEIGHTS} ({sha}); removed from the cache"))
    else:
        declared = block.get("sha256")
        if not declared:
            refuse(IntegrityError(f"{where} is not in lipzoo's published.json and its {CONFIG} declares no sha256: "
                                  "there is nothing to check the weights against; refused"))
        if sha != declared:
            refuse(IntegrityError(f"{where}/{WEIGHTS} has sha256 {sha} but its {CONFIG} declares {declared}: tampered "
                                  "or truncated; removed from the cache"))
        warnings.warn(f"{repo_id} is not in lipzoo's published.json: its sha256 is checked against the repo's own "
                      "config.json only", RuntimeWarning, stacklevel=2)
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        refuse(IntegrityError(f"{where}/{WEIGHTS} is not a valid safetensors file ({e}); removed from the cache"))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise HubError(
            f"the weights of {where} do not fit this model ({str(e).splitlines()[0]}). A pretrained certified model "
            "and its head are one unit: create it without num_classes or other architecture overrides, or load "
            "pretrained=False and fine-tune, then re-certify") from e

    claims = block.get("claims") or (entry or {}).get("claims")
    mode = verification_mode(verify, claims or {})
    if mode == "off":
        return model
    if not claims:
        refuse(VerificationFailedError(f"{where} states no claims (config.json has no lipzoo.claims) to verify; "
                                       "refused. Pass verify=0 to load it unverified"))
    passed, report = _verify_once(model, claims, mode, sha, repo_id, used_rev)
    if not passed:
        refuse(VerificationFailedError(
            f"{where} does not reach the accuracies its card claims ({mode} verification); the weights were removed "
            f"from the cache and not loaded as trusted.\n\n{_report_text(report)}", report))
    return model


def _report_markdown(record: Mapping[str, Any]) -> str:
    """The markdown table of a cached verification record (``lipzoo.verify``'s report format)."""
    try:
        from dataclasses import fields

        from ..verify import Check, VerificationReport

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

    from .._registry import create_model

    try:
        model = create_model(name, pretrained=True, verify=verify)
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
    report = verified_report_path(entry["sha256"], claims) if claims and entry.get("sha256") else None
    if report is not None and report.exists():
        record = json.loads(report.read_text())
        print(f"  claims verified ({record.get('mode')} mode, certifier {record.get('certifier_version')}); "
              f"report cached in {report}\n")
        print(_report_markdown(record))
    else:
        print("  claims NOT verified (no local test set, or verification switched off)")
    return 0
