"""Every checkpoint the project publishes (``lipzoo/hub/published.json``, repos under ``hub/``), served by the
local hub exactly as users download it.

* default run: one fresh interpreter per model loads it through ``lipzoo.create_model``, ``timm.create_model``
  and ``torch.hub.load(..., source='local')`` (the same weights, sha256-checked) and verifies its claims in
  ``quick`` mode (1000 stratified test images, 99.9% Clopper-Pearson);
* ``make test-slow`` (``pytest -m slow``): the claims on the full CIFAR-10 test set (|measured - claimed| <= 0.1 pp).

Nothing here writes to ``hub/`` or ``published.json``; downloads go to a temporary HF cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("olah", reason="the local hub needs the hub extra: pip install 'lipzoo[hub]'")

from lipzoo.models._registry import published_weights  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED = sorted(published_weights())
pytestmark = pytest.mark.hub


@pytest.fixture(scope="module")
def hub():
    from lipzoo.hub.server import LocalHub

    with LocalHub(root=ROOT / "hub") as h:
        yield h


def _child(code: str, hub, tmp_path: Path, timeout: float = 900) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LIPZOO_")) or k == "LIPZOO_DATA"}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), LIPZOO_CACHE=str(tmp_path / "cache"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=str(ROOT), capture_output=True,
                         text=True, timeout=timeout)
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"child failed (rc={res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def test_published_repos_are_complete():
    for name in PUBLISHED:
        entry = published_weights()[name]
        folder = ROOT / "hub" / entry["hf_hub_id"]
        assert {"config.json", "model.safetensors", "README.md", "certified_accuracy.png"} <= {
            p.name for p in folder.iterdir()}, folder
        assert (folder / "model.safetensors").stat().st_size < 16 * 2 ** 20  # compact checkpoints only
        claims = json.loads((folder / "config.json").read_text())["lipzoo"]["claims"]
        assert claims["n"] == 10000 and claims["split"] == "test"


@pytest.mark.parametrize("name", PUBLISHED)
def test_lipzoo_timm_and_torch_hub_give_the_same_verified_model(name, hub, tmp_path):
    arch = name.split(".")[0]
    out = _child(f'''
        import hashlib, json, timm, torch, lipzoo
        from lipzoo.verification import verify
        from lipzoo.models._registry import published_weights

        def digest(m):
            h = hashlib.sha256()
            for k, v in sorted(m.state_dict().items()):
                h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
            return h.hexdigest()

        a = lipzoo.create_model({name.replace("_", "-")!r}, pretrained=True, verify="quick")
        b = timm.create_model({name!r}, pretrained=True)
        c = torch.hub.load({str(ROOT)!r}, {arch!r}, pretrained=True, source="local")
        report = verify(a, published_weights()[{name!r}]["claims"], mode="quick")
        print("RESULT " + json.dumps({{"digests": [digest(a), digest(b), digest(c)], "passed": bool(report.passed),
                                       "report": str(report)}}))
    ''', hub, tmp_path)
    assert len(set(out["digests"])) == 1, out["digests"]
    assert out["passed"], out["report"]


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_claims_hold_on_the_full_test_set(name, hub, tmp_path):
    out = _child(f'''
        import json, lipzoo
        from lipzoo.verification import verify
        from lipzoo.models._registry import published_weights
        model = lipzoo.create_model({name!r}, pretrained=True, verify=False)
        report = verify(model, published_weights()[{name!r}]["claims"], mode="full")
        print("RESULT " + json.dumps({{"passed": bool(report.passed), "report": str(report)}}))
    ''', hub, tmp_path, timeout=1800)
    assert out["passed"], out["report"]
