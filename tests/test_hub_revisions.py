"""A model republished with new weights: the registry pins the new revision and sha256, and the previous revision
still loads by ``revision=``, with its own (old) weights, sha256-checked and verified against its own card.

The two revisions are published with ``lipzoo publish`` to a local hub on a free port serving a temporary folder
(the project's ``hub/`` and ``published.json`` are not touched); loads run in fresh interpreters (``HF_ENDPOINT``
is read at import).
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("olah", reason="the local hub needs the hub extra: pip install 'lipzoo[hub]'")

from test_hub import ROOT, _digest, child_env, run_child  # noqa: E402  (skips without CIFAR-10)

from lipzoo.hub.server import LocalHub  # noqa: E402

pytestmark = pytest.mark.hub
MODEL_ID, REPO_ID, N = "sll_xs.cifar10", "lipzoo/sll_xs.cifar10", 100


def _publish(ctx: dict, seed: int) -> tuple[dict, str]:
    """Publish random sll_xs weights (``seed``) with claims on the first N test images; ``(entry, digest)``."""
    import torch
    from safetensors.torch import save_file

    import lipzoo

    torch.manual_seed(seed)
    model = lipzoo.create_model("sll_xs")
    run = ctx["tmp"] / f"run{seed}"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    res = subprocess.run(
        [sys.executable, "-m", "lipzoo.cli", "publish", str(run), "--arch", "sll-xs", "--tag", "cifar10",
         "--hub-dir", str(ctx["hub_dir"]), "--quick", "--quick-n", str(N), "--endpoint", ctx["endpoint"]]
        + (["--no-attack"] if ctx.get("no_attack") else []),
        env=child_env(ctx, LIPZOO_HUB_TOKEN=ctx["hub"].token), cwd=str(ROOT), capture_output=True, text=True,
        timeout=300)
    assert res.returncode == 0, f"publish failed:\n{res.stdout}\n{res.stderr[-6000:]}"
    return json.loads(ctx["published_json"].read_text())[MODEL_ID], _digest(model)


@pytest.fixture(scope="module")
def two_revisions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("revisions")
    served = tmp / "served"
    served.mkdir()
    (tmp / "cache").mkdir()
    hub = LocalHub(served, allow_writes=True).start()
    ctx = {"tmp": tmp, "hub_dir": tmp / "hub-dir", "cache": tmp / "cache", "hub": hub, "endpoint": hub.endpoint,
           "published_json": tmp / "published.json"}
    try:
        help_text = subprocess.run([sys.executable, "-m", "lipzoo.cli", "publish", "--help"], cwd=str(ROOT),
                                   capture_output=True, text=True, env=child_env(ctx)).stdout
        ctx["no_attack"] = "--no-attack" in help_text
        ctx["old"], ctx["old_digest"] = _publish(ctx, seed=0)
        ctx["new"], ctx["new_digest"] = _publish(ctx, seed=1)
        yield ctx
    finally:
        hub.stop()


def test_registry_pins_the_new_revision_and_remembers_the_old(two_revisions):
    old, new = two_revisions["old"], two_revisions["new"]
    assert old["revision"] != new["revision"] and old["sha256"] != new["sha256"]
    assert two_revisions["old_digest"] != two_revisions["new_digest"]
    assert {"revision": old["revision"], "sha256": old["sha256"]}.items() <= new["previous"][0].items()


def test_previous_revision_loads_its_own_weights_verified(two_revisions):
    ctx = two_revisions
    out = run_child(f'''
        import lipzoo
        from lipzoo.hub.download import verified_report_path
        old = lipzoo.create_model("{MODEL_ID}", pretrained=True, revision="{ctx['old']['revision']}", verify="quick")
        new = lipzoo.create_model("{MODEL_ID}", pretrained=True, verify="quick")
        report = verified_report_path("{ctx['old']['sha256']}", {json.dumps(ctx['old']['claims'])}, old)
        emit({{"old": state_digest(old), "new": state_digest(new),
               "report": json.loads(report.read_text()) if report.exists() else None}})
    ''', child_env(ctx, HF_HOME=str(ctx["tmp"] / "hf")))
    assert out["old"] == ctx["old_digest"] and out["new"] == ctx["new_digest"]
    report = out["report"]
    assert report and report["passed"] and report["sha256"] == ctx["old"]["sha256"]
    assert report["revision"] == ctx["old"]["revision"]


def test_an_unlisted_revision_is_still_checked_against_the_pin(two_revisions):
    """``revision='main'`` is the current weights; a revision the registry does not list must match the pinned
    sha256 (tampering is not laundered through ``revision=``)."""
    ctx = two_revisions
    out = run_child(f'''
        import lipzoo
        m = lipzoo.create_model("{MODEL_ID}", pretrained=True, revision="main", verify="quick")
        emit({{"main": state_digest(m)}})
    ''', child_env(ctx, HF_HOME=str(ctx["tmp"] / "hf-main")))
    assert out["main"] == ctx["new_digest"]


def test_previous_revision_survives_a_hub_restart(two_revisions, tmp_path):
    """The published folder keeps the replaced revision (weights included): a hub started afresh on it serves the
    old pin with the old weights."""
    import hashlib

    from lipzoo.hub.server import build_mirrors

    ctx = two_revisions
    served = build_mirrors(ctx["hub_dir"], tmp_path / "mirrors")
    assert served == {REPO_ID: ctx["new"]["revision"]}
    old = subprocess.run(["git", "cat-file", "blob", f"{ctx['old']['revision']}:model.safetensors"],
                         cwd=tmp_path / "mirrors" / "models" / REPO_ID, capture_output=True, check=True).stdout
    assert hashlib.sha256(old).hexdigest() == ctx["old"]["sha256"]
