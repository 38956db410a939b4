"""The lipzoo hub: publish certified checkpoints as Hugging Face model repos, download them pinned and verified,
and serve them offline.

* :func:`load_pretrained` (``download.py``): ``hf_hub_download`` + sha256 pin + verification on first download;
* :func:`publish` (``publish.py``): certify a checkpoint, write ``hub/<org>/<name>/``, upload with ``HfApi``;
* :func:`republish_card` (``republish.py``): a new card and config.json for published weights (``--card-only``);
  the revision it replaces stays servable (``history.py``);
* :class:`LocalHub` / :func:`serve` (``server.py``): olah on 127.0.0.1 plus upload routes;
* :func:`render_card` / :func:`claims_from_card` (``card.py``): the model card and its ``model-index``.

Submodules are imported on first use, so ``import lipzoo.hub`` stays cheap.
"""
from __future__ import annotations

import importlib

__all__ = [
    "load_pretrained", "publish", "republish_card", "LocalHub", "serve", "render_card", "claims_from_card",
    "HubError", "IntegrityError", "PickleRefusedError", "HubUnreachableError", "VerificationFailedError",
]

_WHERE = {
    "load_pretrained": "download", "HubError": "download", "IntegrityError": "download",
    "PickleRefusedError": "download", "HubUnreachableError": "download", "VerificationFailedError": "download",
    "publish": "publish", "republish_card": "republish", "LocalHub": "server", "serve": "server",
    "render_card": "card", "claims_from_card": "card",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
