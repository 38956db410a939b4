"""The hub end to end: publish to an embedded local hub, download through lipzoo / timm / torch.hub, refuse bad
files and inflated claims, work offline from the cache, and stay consistent under concurrent downloads.

Everything that talks to the hub runs in a fresh interpreter whose ``HF_ENDPOINT`` / ``HF_HOME`` /
``LIPZOO_PUBLISHED_JSON`` / ``LIPZOO_CACHE`` are set before import, against a server on 127.0.0.1 that this
module starts and stops. Nothing is written to the project's ``hub/`` or ``lipzoo/hub/published.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("olah", reason="the local hub needs the hub extra: pip install 'lipzoo[hub]'")

from lipzoo.data import find_root  # noqa: E402
from lipzoo.hub.server import LocalHub, build_mirrors, free_port  # noqa: E402
from lipzoo.hub.snapshot import replace_dir, snapshot_revision  # noqa: E402

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parent.parent
MODEL_ID, REPO_ID = "sll_xs.cifar10", "lipzoo/sll_xs.cifar10"
QUICK_N = 200
FILES = {"README.md", "config.json", "model.safetensors", "certified_accuracy.png"}

if find_root("cifar10") is None:
    pytest.skip("the hub tests certify on CIFAR-10: no local copy found (set LIPZOO_DATA)", allow_module_level=True)

# Runs first in every child: helpers to digest weights, catch errors and report back as JSON.
PRELUDE = textwrap.dedent('''
    import json, time

    def state_digest(model):
        import hashlib
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def attempt(fn):
        t = time.monotonic()
        try:
            fn()
            return {"ok": True, "seconds": time.monotonic() - t}
        except Exception as e:
            return {"ok": False, "type": type(e).__name__, "message": str(e), "seconds": time.monotonic() - t}

    def emit(obj):
        print("RESULT " + json.dumps(obj), flush=True)
''')


def run_child(code: str, env: dict[str, str], timeout: float = 240) -> dict:
    """Run ``code`` after PRELUDE in a fresh interpreter; returns what it passed to ``emit``."""
    res = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=timeout)
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"child failed (rc={res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def child_env(ctx: dict, **extra: str) -> dict[str, str]:
    """The environment of a child: no inherited HF_*/LIPZOO_* settings except the data root; verification in
    its automatic mode (quick, since the claims are on a subset)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LIPZOO_")) or k == "LIPZOO_DATA"}
    env.update(HF_ENDPOINT=ctx["endpoint"], HF_HOME=str(ctx["tmp"] / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
               LIPZOO_PUBLISHED_JSON=str(ctx["published_json"]), LIPZOO_CACHE=str(ctx["cache"]),
               OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_cache(ctx: dict, name: str) -> Path:
    """A fresh LIPZOO_CACHE that already knows the dataset copy is intact (no MD5 pass per child)."""
    path = ctx["tmp"] / name
    path.mkdir()
    stamp = ctx["cache"] / "verified_data.json"
    if stamp.exists():
        shutil.copy(stamp, path / "verified_data.json")
    return path


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A local hub on a free port serving an empty folder, writes allowed with its token, and sll_xs (random
    weights, quick claims on the first 200 test images) published to it from a training-run directory with the
    ``lipzoo publish`` command."""
    import torch
    from safetensors.torch import save_file

    import lipzoo

    tmp = tmp_path_factory.mktemp("hub")
    served, hub_dir = tmp / "served", tmp / "hub-dir"
    served.mkdir()
    cache = tmp / "lipzoo-cache"
    cache.mkdir()
    real_stamp = Path(os.path.expanduser("~/.cache/lipzoo/verified_data.json"))
    if real_stamp.exists():
        shutil.copy(real_stamp, cache / "verified_data.json")
    run = tmp / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = lipzoo.create_model("sll_xs")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(run / "model.safetensors"))
    (run / "results.json").write_text(json.dumps({"arch": "sll_xs", "git_revision": "0" * 40,
                                                  "recipe": {"name": "sll_cpu", "model": "sll_xs", "epochs": 3}}))
    hub = LocalHub(served, allow_writes=True).start()
    ctx = {"tmp": tmp, "served": served, "hub_dir": hub_dir, "cache": cache, "hub": hub, "endpoint": hub.endpoint,
           "published_json": tmp / "published.json", "run": run}
    try:
        res = subprocess.run(
            [sys.executable, "-m", "lipzoo.cli", "publish", str(run), "--arch", "sll-xs", "--tag", "cifar10",
             "--hub-dir", str(hub_dir), "--quick", "--quick-n", str(QUICK_N), "--endpoint", hub.endpoint],
            env=child_env(ctx, LIPZOO_HUB_TOKEN=hub.token), cwd=str(ROOT), capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"publish failed:\n{res.stdout}\n{res.stderr[-6000:]}"
        ctx["publish_output"] = res.stdout
        ctx["entry"] = json.loads(ctx["published_json"].read_text())[MODEL_ID]
        ctx["folder"] = hub_dir / REPO_ID
        yield ctx
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def honest(ctx):
    """One fresh interpreter loading the published model through every path, with a fresh HF cache."""
    code = f'''
        import timm, lipzoo
        from huggingface_hub import HfApi, ModelCard, constants
        from lipzoo.hub.card import claims_from_card
        from lipzoo.hub.download import download_and_report, verified_report_path
        out = {{}}
        m = lipzoo.create_model("sll-xs.cifar10", pretrained=True)
        out["lipzoo"] = state_digest(m)
        out["timm_tag"] = state_digest(timm.create_model("{MODEL_ID}", pretrained=True))
        h = timm.create_model("hf-hub:{REPO_ID}", pretrained=True)
        out["timm_hf_hub"], out["hf_hub_source"] = state_digest(h), h.pretrained_cfg.get("source")
        out["card_claims"] = claims_from_card("{REPO_ID}")
        out["info_sha"] = HfApi().model_info("{REPO_ID}").sha  # the route without a revision
        entry = json.load(open("{ctx['published_json']}"))["{MODEL_ID}"]
        claims = json.load(open("{ctx['folder'] / 'config.json'}"))["lipzoo"]["claims"]
        report = verified_report_path(entry["sha256"], claims, m)
        out["report"] = json.loads(report.read_text()) if report.exists() else None
        out["hf_cache"] = constants.HF_HUB_CACHE
        import contextlib, io
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            out["report_rc"] = download_and_report("{MODEL_ID}")
        out["report_text"] = printed.getvalue()
        emit(out)
    '''
    from safetensors.torch import load_file

    import lipzoo

    ref = lipzoo.create_model("sll_xs")
    ref.load_state_dict(load_file(str(ctx["run"] / "model.safetensors")))
    out = run_child(code, child_env(ctx))
    out["reference"] = _digest(ref)
    return out


def _digest(model) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- publish
def test_publish_writes_repo_registry_and_uploads(ctx):
    folder, entry = ctx["folder"], ctx["entry"]
    assert {p.name for p in folder.iterdir()} == FILES
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "staging left behind"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "sll_xs" and config["num_classes"] == 10 and "pretrained_cfg" in config
    block = config["lipzoo"]
    assert block["sha256"] == sha256(folder / "model.safetensors") == entry["sha256"]
    assert block["family"] == "sll" and block["training"]["recipe"]["name"] == "sll_cpu"
    claims = block["claims"]
    assert claims == entry["claims"] and claims["subset"] == f"first_{QUICK_N}" and claims["n"] == QUICK_N
    assert set(claims["certified_accuracy"]) == {"36/255", "72/255", "108/255", "255/255"}
    # revision: the deterministic snapshot of the folder, which is what the hub serves after the upload
    assert entry["revision"] == snapshot_revision(folder, REPO_ID) == ctx["hub"].status()["repos"][REPO_ID]
    assert entry["hf_hub_id"] == REPO_ID and "hub_revision" not in entry
    # the upload was persisted in the server's own root, byte for byte
    for name in FILES:
        assert sha256(ctx["served"] / REPO_ID / name) == sha256(folder / name)
    assert "uploaded to" in ctx["publish_output"]


def test_card_parses_back_to_the_claims(ctx):
    from huggingface_hub import ModelCard

    from lipzoo.hub.card import claims_from_card

    card = ModelCard.load(ctx["folder"] / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "mit" and card.data.datasets == ["cifar10"]
    claims = ctx["entry"]["claims"]
    parsed = claims_from_card(card)
    assert parsed == {k: claims[k] for k in parsed}
    certified = [r for r in card.data.eval_results if r.metric_type == "certified_accuracy"]
    assert [r.metric_args["norm"] for r in certified] == ["L2"] * 4
    text = card.text
    for needle in ("## Certified robustness", "certified_accuracy.png", "lipzoo publish", "hf-hub:" + REPO_ID,
                   "torch.hub.load", ctx["entry"]["sha256"], "lipzoo train --recipe sll_cpu", "the first 200 test images",
                   f"lipzoo certify {MODEL_ID} --pretrained --n {QUICK_N}"):
        assert needle in text, needle


def test_quick_publish_refused_for_the_project_registry(monkeypatch, tmp_path):
    from lipzoo.hub.publish import PublishError, publish

    monkeypatch.delenv("LIPZOO_HUB_DIR", raising=False)
    with pytest.raises(PublishError, match="tests only"):
        publish(tmp_path / "x.safetensors", "sll_xs", "cifar10", quick=True)
    with pytest.raises(PublishError, match="must start with the dataset"):
        publish(tmp_path / "x.safetensors", "sll_xs", "imagenet", hub=tmp_path)


def test_card_train_command_lists_only_changed_training_fields():
    from lipzoo.hub.publish import _train_command
    from lipzoo.train.recipes import get_recipe

    recipe = json.loads(json.dumps(get_recipe("sll_cpu").to_dict()))
    assert _train_command(recipe, "sll_xs.cifar10") == "lipzoo train --recipe sll_cpu --out runs/sll_xs.cifar10"
    recipe.update(lr=0.002, description="an older wording of the recipe")
    assert _train_command(recipe, "sll_xs.cifar10") == (
        "lipzoo train --recipe sll_cpu --lr 0.002 --out runs/sll_xs.cifar10")


def test_card_of_a_warm_started_run_names_its_initial_weights(tmp_path):
    """A run started with --initial-checkpoint: the card's command and training table name the starting weights and
    the published revision they are (looked up by sha256 in published.json, read here by the test)."""
    import lipzoo
    from lipzoo.hub.publish import Provenance, _train_command, write_config_and_card
    from lipzoo.train.recipes import get_recipe

    entry = json.loads((ROOT / "lipzoo" / "hub" / "published.json").read_text())["sandwich_xs.cifar10"]
    recipe = json.loads(json.dumps(get_recipe("sandwich_cpu").to_dict()))
    unknown = {"file": "start.safetensors", "sha256": "ab" * 32}
    assert _train_command(recipe, "sandwich_xs.cifar10", unknown) == (
        "lipzoo train --recipe sandwich_cpu --initial-checkpoint start.safetensors --out runs/sandwich_xs.cifar10")
    initial = {"file": "model.safetensors", "sha256": entry["sha256"]}
    provenance = Provenance(code_revision=None, code_dirty=False, lipzoo_version="0", publish_command="lipzoo publish",
                            repo_url="https://example.org/lipzoo",
                            training={"recipe": recipe, "git_revision": "0" * 40, "initial_checkpoint": initial})
    write_config_and_card(tmp_path, lipzoo.create_model("sandwich_xs"), repo_id="lipzoo/sandwich_xs.cifar10",
                          arch="sandwich_xs", tag="cifar10", claims=entry["claims"], sha256="cd" * 32,
                          provenance=provenance)
    text = (tmp_path / "README.md").read_text()
    assert ("lipzoo train --recipe sandwich_cpu --initial-checkpoint hub/lipzoo/sandwich_xs.cifar10/model.safetensors "
            "--out runs/sandwich_xs.cifar10") in text
    assert f"the published weights of lipzoo/sandwich_xs.cifar10@{entry['revision']}" in text
    assert json.loads((tmp_path / "config.json").read_text())["lipzoo"]["training"]["initial_checkpoint"] == initial


def test_code_revision_is_dirty_only_for_code_changes(monkeypatch, tmp_path):
    from lipzoo import _checkout

    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    files = {"lipzoo/layer.py": "x = 1\n", "lipzoo/hub/published.json": "{}\n", "hub/lipzoo/m/README.md": "card\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    for cmd in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"]):
        subprocess.run([git, *cmd], cwd=tmp_path, env=env, check=True)
    monkeypatch.setattr(_checkout, "project_root", lambda: tmp_path)
    sha, dirty = _checkout.code_revision()
    assert sha and len(sha) == 40 and not dirty
    (tmp_path / "hub/lipzoo/m/README.md").write_text("new card\n")
    (tmp_path / "lipzoo/hub/published.json").write_text('{"m": 1}\n')
    assert _checkout.code_revision() == (sha, False)
    (tmp_path / "lipzoo/layer.py").write_text("x = 2\n")
    assert _checkout.code_revision() == (sha, True)


def test_failed_publish_leaves_existing_repo_intact(ctx, monkeypatch, tmp_path):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path / "cache"))
    from safetensors.torch import save_file

    from lipzoo.hub import publish as P

    hub = tmp_path / "hub"
    shutil.copytree(ctx["folder"], hub / REPO_ID)
    before = {p.name: sha256(p) for p in (hub / REPO_ID).iterdir()}
    bad = tmp_path / "bad.safetensors"
    import torch

    save_file({"not.a.key": torch.zeros(2)}, str(bad))
    monkeypatch.setenv("LIPZOO_PUBLISHED_JSON", str(tmp_path / "published.json"))
    with pytest.raises(Exception, match="not.a.key|Unexpected|Missing"):
        P.publish(bad, "sll_xs", "cifar10", hub=hub, upload=False, quick=True, quick_n=10)
    assert {p.name: sha256(p) for p in (hub / REPO_ID).iterdir()} == before
    assert not (tmp_path / "published.json").exists()


def test_registry_write_is_atomic_and_refuses_corrupt_file(monkeypatch, tmp_path):
    from lipzoo.hub.publish import PublishError, record_published

    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "reg" / "published.json"
    record_published("a.cifar10", {"sha256": "1"}, path)
    record_published("b.cifar10", {"sha256": "2"}, path)
    assert json.loads(path.read_text()) == {"a.cifar10": {"sha256": "1"}, "b.cifar10": {"sha256": "2"}}
    path.write_text("{broken")
    with pytest.raises(PublishError, match="not valid JSON"):
        record_published("c.cifar10", {}, path)
    assert path.read_text() == "{broken"
    assert [p.name for p in path.parent.iterdir()] == ["published.json"]


# ----------------------------------------------------------------------------------------------- server
def test_snapshots_are_deterministic(tmp_path):
    root = tmp_path / "root" / "lipzoo" / "demo"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("hello")
    (root / "sub").mkdir()
    (root / "sub" / "b.bin").write_bytes(b"\x00\x01")
    first = build_mirrors(tmp_path / "root", tmp_path / "m1")
    second = build_mirrors(tmp_path / "root", tmp_path / "m2")
    assert first == second == {"lipzoo/demo": snapshot_revision(root, "lipzoo/demo")}
    (root / "a.txt").write_text("hello!")
    assert snapshot_revision(root, "lipzoo/demo") != first["lipzoo/demo"]


def test_replace_dir_keeps_old_on_failure(tmp_path):
    dest = tmp_path / "repo"
    dest.mkdir()
    (dest / "f").write_text("old")
    with pytest.raises(OSError):
        replace_dir(tmp_path / "missing", dest)
    assert (dest / "f").read_text() == "old"
    new = tmp_path / "new"
    new.mkdir()
    (new / "f").write_text("new")
    replace_dir(new, dest)
    assert (dest / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_write_routes_with_real_client(ctx, tmp_path):
    code = f'''
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi(token="{ctx['hub'].token}")
        api.create_repo("lipzoo/scratch", exist_ok=True)
        api.create_repo("lipzoo/scratch", exist_ok=True)
        first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="notes/a.txt", repo_id="lipzoo/scratch").oid
        second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="notes/a.txt", repo_id="lipzoo/scratch").oid
        out = {{"files": api.list_repo_files("lipzoo/scratch"),
                "old": open(hf_hub_download("lipzoo/scratch", "notes/a.txt", revision=first)).read(),
                "new": open(hf_hub_download("lipzoo/scratch", "notes/a.txt")).read(),
                "info": api.model_info("lipzoo/scratch").sha, "second": second}}
        out["dup"] = attempt(lambda: api.create_repo("lipzoo/scratch"))
        out["branch"] = attempt(lambda: api.upload_file(path_or_fileobj=b"x", path_in_repo="x",
                                                        repo_id="lipzoo/scratch", revision="dev"))
        out["dataset"] = attempt(lambda: api.create_repo("lipzoo/data", repo_type="dataset"))
        emit(out)
    '''
    out = run_child(code, child_env(ctx, HF_HOME=str(tmp_path / "hf")))
    assert out["files"] == ["notes/a.txt"] and out["old"] == "v1" and out["new"] == "v2"
    assert out["info"] == out["second"] == snapshot_revision(ctx["served"] / "lipzoo" / "scratch", "lipzoo/scratch")
    assert not out["dup"]["ok"] and "409" in out["dup"]["message"]
    assert not out["branch"]["ok"] and not out["dataset"]["ok"]


# ----------------------------------------------------------------------------------------------- download
def test_download_paths_give_identical_verified_weights(ctx, honest):
    ref = honest["reference"]
    assert honest["lipzoo"] == honest["timm_tag"] == honest["timm_hf_hub"] == ref
    assert honest["hf_hub_source"] == "hf-hub"
    claims = ctx["entry"]["claims"]
    assert honest["card_claims"] == {k: claims[k] for k in honest["card_claims"]}
    report = honest["report"]
    assert report and report["passed"] and report["sha256"] == ctx["entry"]["sha256"]
    assert report["revision"] == ctx["entry"]["revision"] and report["mode"] == "quick"
    assert len(honest["info_sha"]) == 40
    text = honest["report_text"]  # what `make run` prints: claims vs measured from the cached report
    assert honest["report_rc"] == 0 and "PASSED" in text and "certified accuracy @ 36/255" in text, text


def test_torch_hub_local(ctx, honest):
    if not (ROOT / "hubconf.py").exists():
        pytest.skip("hubconf.py is not in the project yet (the coordinator writes it)")
    out = run_child(f'''
        import torch
        m = torch.hub.load({str(ROOT)!r}, "sll_xs", source="local", pretrained=True, trust_repo=True)
        emit({{"digest": state_digest(m)}})
    ''', child_env(ctx))
    assert out["digest"] == honest["reference"]


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_bad_files_and_inflated_claims_are_refused(ctx, honest, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = ctx["folder"]
    bad = {}
    for name in ("tampered", "truncated", "inflated", "pickled", "unlisted"):
        bad[name] = tmp_path / name
        shutil.copytree(folder, bad[name])
    _flip_last_byte(bad["tampered"] / "model.safetensors")
    _flip_last_byte(bad["unlisted"] / "model.safetensors")
    weights = (folder / "model.safetensors").read_bytes()
    (bad["truncated"] / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    torch.save(load_file(str(folder / "model.safetensors")), bad["pickled"] / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    claims = config["lipzoo"]["claims"]
    claims["clean_accuracy"] = min(1.0, claims["clean_accuracy"] + 0.25)
    claims["certified_accuracy"]["36/255"] = min(1.0, claims["certified_accuracy"]["36/255"] + 0.25)
    (bad["inflated"] / "config.json").write_text(json.dumps(config, indent=2))

    registry = json.loads(ctx["published_json"].read_text())
    for name in ("truncated", "inflated", "pickled"):
        registry[f"sll_xs.{name}"] = {**ctx["entry"], "hf_hub_id": f"lipzoo/sll_xs.{name}", "revision": None}
    registry["sll_xs.stale"] = {**ctx["entry"], "revision": "f" * 40}  # a pin the hub does not have
    evil_json = tmp_path / "evil.json"
    evil_json.write_text(json.dumps(registry))

    code = f'''
        import os, torch, lipzoo
        from huggingface_hub import HfApi, constants
        from lipzoo.hub.download import load_pretrained
        api = HfApi(token="{ctx['hub'].token}")
        # one byte flipped in the served file of the published repo itself: a new commit on main
        api.upload_file(path_or_fileobj="{bad['tampered'] / 'model.safetensors'}", path_in_repo="model.safetensors",
                        repo_id="{REPO_ID}")
        for name in ("truncated", "inflated", "pickled", "unlisted"):
            api.create_repo(f"lipzoo/sll_xs.{{name}}", exist_ok=True)
            api.upload_folder(repo_id=f"lipzoo/sll_xs.{{name}}", folder_path=os.path.join("{tmp_path}", name))

        def left(repo):
            d = os.path.join(constants.HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
            return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs
                          if f == "model.safetensors" or "blobs" in r)

        out = {{}}
        out["pinned"] = attempt(lambda: lipzoo.create_model("{MODEL_ID}", pretrained=True))
        out["main"] = attempt(lambda: lipzoo.create_model("{MODEL_ID}", pretrained=True, revision="main"))
        out["main_left"] = [p for p in left("{REPO_ID}") if "model.safetensors" in p or p.startswith("blobs")]
        for name in ("truncated", "inflated", "pickled"):
            out[name] = attempt(lambda: lipzoo.create_model(f"sll_xs.{{name}}", pretrained=True))
            out[name + "_left"] = left(f"lipzoo/sll_xs.{{name}}")
        out["unlisted"] = attempt(lambda: load_pretrained(lipzoo.create_model("sll_xs"),
                                                          {{"hf_hub_id": "lipzoo/sll_xs.unlisted"}}))
        out["unlisted_left"] = left("lipzoo/sll_xs.unlisted")
        out["stale"] = attempt(lambda: lipzoo.create_model("sll_xs.stale", pretrained=True))
        out["pickle_name"] = attempt(lambda: load_pretrained(lipzoo.create_model("sll_xs"),
                                     {{"hf_hub_id": "{REPO_ID}", "hf_hub_filename": "pytorch_model.bin"}}))
        emit(out)
    '''
    out = run_child(code, child_env(ctx, LIPZOO_PUBLISHED_JSON=str(evil_json), HF_HOME=str(tmp_path / "hf")))
    assert out["pinned"]["ok"], out["pinned"]  # the pinned revision still serves the published bytes
    assert out["main"]["type"] == "IntegrityError" and "tampered" in out["main"]["message"]
    assert out["truncated"]["type"] == "IntegrityError" and "truncated" in out["truncated"]["message"]
    assert out["inflated"]["type"] == "VerificationFailedError" and "claims" in out["inflated"]["message"]
    assert out["pickled"]["type"] == "PickleRefusedError"
    assert out["unlisted"]["type"] == "IntegrityError" and "declares" in out["unlisted"]["message"]
    assert out["pickle_name"]["type"] == "PickleRefusedError" and out["pickle_name"]["seconds"] < 1
    assert out["stale"]["type"] == "HubError" and "does not have revision" in out["stale"]["message"]
    assert out["stale"]["seconds"] < 10
    for name in ("truncated", "inflated", "pickled", "unlisted"):
        assert out[name + "_left"] == [], (name, out[name + "_left"])
    # only the pinned good file stays cached for the published repo: one blob for weights, one for config
    assert len([p for p in out["main_left"] if p.startswith("blobs")]) == 2


def test_concurrent_downloads_share_one_consistent_cache(ctx, honest, tmp_path):
    cache = new_cache(ctx, "concurrent-cache")
    env = child_env(ctx, HF_HOME=str(tmp_path / "hf"), LIPZOO_CACHE=str(cache))
    code = PRELUDE + textwrap.dedent(f'''
        import lipzoo
        emit({{"digest": state_digest(lipzoo.create_model("{MODEL_ID}", pretrained=True))}})
    ''')
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-4000:]
    digests = {json.loads([x for x in o.splitlines() if x.startswith("RESULT ")][-1][7:])["digest"] for o, _ in outs}
    assert digests == {honest["reference"]}
    repo = tmp_path / "hf" / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    blobs = sorted(p.name for p in (repo / "blobs").iterdir())
    assert len(blobs) == 2 and not [b for b in blobs if b.endswith(".incomplete")]
    snapshots = list((repo / "snapshots").iterdir())
    assert [s.name for s in snapshots] == [ctx["entry"]["revision"]]
    assert sha256(snapshots[0] / "model.safetensors") == ctx["entry"]["sha256"]
    reports = sorted(p.name for p in (cache / "verified").iterdir() if p.suffix == ".json")
    assert len(reports) == 1 and reports[0].startswith(ctx["entry"]["sha256"])
    assert not [p for p in (cache / "verified").iterdir() if p.name.endswith(".tmp")]


def test_offline_after_the_hub_stops(ctx, honest, tmp_path):
    """Runs last: stops the module's hub. The cache filled by ``honest`` must serve alone."""
    hf_home = tmp_path / "hf"
    shutil.copytree(Path(honest["hf_cache"]).parent, hf_home, symlinks=True)
    ctx["hub"].stop()
    code = f'''
        import lipzoo
        from huggingface_hub import constants
        from lipzoo.hub.download import load_pretrained
        out = {{}}

        def cached(key):
            out[key + "_digest"] = state_digest(lipzoo.create_model("{MODEL_ID}", pretrained=True))

        def uncached():
            load_pretrained(lipzoo.create_model("sll_xs"), {{"hf_hub_id": "{REPO_ID}"}}, cache_dir="{tmp_path / 'empty'}")

        out["offline_cached"] = attempt(lambda: cached("offline"))
        out["offline_uncached"] = attempt(uncached)
        constants.HF_HUB_OFFLINE = False  # the hub is down and HF_HUB_OFFLINE is not set
        out["down_cached"] = attempt(lambda: cached("down"))
        out["down_uncached"] = attempt(uncached)
        emit(out)
    '''
    out = run_child(code, child_env(ctx, HF_HOME=str(hf_home), HF_HUB_OFFLINE="1"))
    assert out["offline_cached"]["ok"] and out["down_cached"]["ok"], out
    assert out["offline_digest"] == out["down_digest"] == honest["reference"]
    for key in ("offline_uncached", "down_uncached"):
        assert out[key]["type"] == "HubUnreachableError", out[key]
        assert "no cached copy" in out[key]["message"] and out[key]["seconds"] < 10


def test_verification_mode(monkeypatch):
    from lipzoo.hub import download as D

    full, subset = {"dataset": "cifar10", "subset": "full"}, {"dataset": "cifar10", "subset": "first_200"}
    monkeypatch.delenv("LIPZOO_VERIFY", raising=False)
    monkeypatch.setattr("lipzoo.data.find_root", lambda name="cifar10", root=None: Path("/data"))
    assert D.verification_mode(None, full) == "full" and D.verification_mode(None, subset) == "quick"
    assert D.verification_mode("quick", full) == "quick" and D.verification_mode("full", subset) == "quick"
    assert D.verification_mode(False, full) == D.verification_mode("0", full) == "off"
    monkeypatch.setenv("LIPZOO_VERIFY", "quick")
    assert D.verification_mode(None, full) == "quick" and D.verification_mode("full", full) == "full"
    monkeypatch.setenv("LIPZOO_VERIFY", "sometimes")
    with pytest.raises(ValueError, match="0|quick|full"):
        D.verification_mode(None, full)
    monkeypatch.delenv("LIPZOO_VERIFY")
    monkeypatch.setattr("lipzoo.data.find_root", lambda name="cifar10", root=None: None)
    with pytest.warns(RuntimeWarning, match="NOT verified"):
        assert D.verification_mode(None, full) == "off"
    with pytest.raises(D.HubError, match="needs a local copy"):
        D.verification_mode("full", full)


def test_cli_parses_hub_commands():
    from lipzoo.cli import build_parser

    args = build_parser().parse_args(["hub", "serve", "--port", str(free_port()), "--root", "x"])
    assert args.func.__name__ == "_serve" and args.root == "x"
    args = build_parser().parse_args(["publish", "ckpt", "--arch", "sll_xs", "--tag", "cifar10", "--quick"])
    assert args.func.__name__ == "_publish" and args.quick and args.repo_id is None


def test_local_hub_refuses_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LocalHub(tmp_path / "nope").start()
