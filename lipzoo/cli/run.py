"""``lipzoo run``: the main job behind ``make run``.

1. list the registry;
2. if weights are published: start the embedded local hub (olah on 127.0.0.1) serving ``hub/``, download the
   best published model through ``huggingface_hub``, verify its claims on the CIFAR-10 test set and print claims
   vs measured; stop the hub;
3. otherwise: evaluate a registered model with random weights on the CIFAR-10 test set and say so.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def _print_registry() -> None:
    import lipzoo

    archs = lipzoo.list_models()
    families: dict[str, list[str]] = {}
    for a in archs:
        families.setdefault(lipzoo.models.ARCHS[a].family, []).append(a)
    print(f"lipzoo {lipzoo.__version__}: {len(archs)} architectures")
    for fam, names in sorted(families.items()):
        print(f"  {fam:9s} {', '.join(names)}")
    published = lipzoo.list_pretrained()
    print(f"published weights: {', '.join(published) if published else 'none yet'}")


def _best_published() -> str | None:
    from .. import _manifest

    pub = _manifest.read()
    if not pub:
        return None

    def score(k: str) -> float:
        claims = pub[k].get("claims") or {}
        return float((claims.get("certified_accuracy") or {}).get("36/255", 0.0))
    return max(pub, key=score)


def _evaluate_random(n: int | None, data_root: str | None) -> int:
    import torch

    import lipzoo
    from ..certification import certify, eps_label
    from ..data import CIFAR

    name = "sll_xs"
    print(f"\nevaluating {name} with RANDOM weights (no pretrained weights are published yet) on the CIFAR-10 test set")
    torch.manual_seed(0)
    model = lipzoo.create_model(name).eval()
    ds = CIFAR("cifar10", "test", root=data_root)
    x, y = ds.tensors(None if n is None else torch.arange(n).numpy())
    t = time.time()
    res = certify(model, x, y)
    print(f"n={res.n}  clean accuracy {100 * res.clean_accuracy:.2f}%  (random weights)")
    for eps, acc in res.certified_accuracy.items():
        print(f"  certified accuracy at eps={eps_label(float(eps))}: {100 * acc:.2f}%")
    print(f"({time.time() - t:.1f} s)")
    return 0


def main_job(n: int | None = None, data_root: str | None = None) -> int:
    """``n``: evaluate on the first ``n`` test images only; ``data_root``: the CIFAR-10 folder (default: LIPZOO_DATA,
    ../shared/data, download). Both apply with and without published weights."""
    from .._errors import LipzooUserError

    if n is not None and n <= 0:
        raise LipzooUserError(f"--n {n}: pass a positive number of test images")
    if data_root is not None:
        from ..data import find_root

        find_root("cifar10", data_root)  # a folder without CIFAR-10 fails now, with what to do, not after the download
    _print_registry()
    best = _best_published()
    if best is None:
        return _evaluate_random(n, data_root)
    from ..hub.server import LocalHub
    from ..hub.snapshot import hub_dir

    root = hub_dir()  # $LIPZOO_HUB_DIR or the checkout's hub/
    print(f"\nstarting the local hub on 127.0.0.1 (serving {root}) ...")
    with LocalHub(root=root) as hub:
        env = dict(os.environ, HF_ENDPOINT=hub.endpoint)
        if data_root is not None:
            env["LIPZOO_DATA"] = str(Path(data_root).resolve())
        print(f"HF_ENDPOINT={hub.endpoint}")
        return _download_and_verify_in_subprocess(best, env, n)


def _download_and_verify_in_subprocess(name: str, env: dict[str, str], n: int | None) -> int:
    # huggingface_hub reads HF_ENDPOINT at import time: run the client in a fresh interpreter
    import subprocess
    import sys

    code = f"import sys\nfrom lipzoo.cli.run import download_and_evaluate\nsys.exit(download_and_evaluate({name!r}, {n!r}))\n"
    return subprocess.call([sys.executable, "-c", code], env=env)


def download_and_evaluate(name: str, n: int | None = None) -> int:
    """Download ``name`` and report (:func:`lipzoo.hub.download.download_and_report`); without ``n`` the claims are
    verified on the full test set on first download. With ``n``: the download is sha256-checked but not verified,
    and the first ``n`` test images are certified and shown beside the claims (a spot check, not a verification)."""
    from ..hub.download import download_and_report

    rc = download_and_report(name, verify=False if n is not None else None)
    if rc or n is None:
        return rc
    import numpy as np

    import lipzoo
    from .. import _manifest
    from ..certification import certify, eps_label
    from ..data import CIFAR

    model = lipzoo.create_model(name, pretrained=True, verify=False).eval()  # from the local cache
    full = f"{model.pretrained_cfg.get('architecture')}.{model.pretrained_cfg.get('tag')}"
    claims = _manifest.read().get(full, {}).get("claims") or {}
    x, y = CIFAR(claims.get("dataset", "cifar10"), "test").tensors(np.arange(n))
    t = time.time()
    res = certify(model, x, y)
    print(f"\n{full} on the first {res.n} test images ({time.time() - t:.1f} s; claims are for the full test set: "
          f"a spot check, not a verification)")
    print(f"  clean accuracy          claimed {_pct(claims.get('clean_accuracy'))}  measured {_pct(res.clean_accuracy)}")
    claimed = claims.get("certified_accuracy") or {}
    for eps, acc in res.certified_accuracy.items():
        label = eps_label(float(eps))
        print(f"  certified at {label:9s}  claimed {_pct(claimed.get(label))}  measured {_pct(acc)}")
    return 0


def _pct(x) -> str:
    return "     —" if x is None else f"{100 * float(x):6.2f}%"
