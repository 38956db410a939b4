"""The model cards as a Hub user reads them (issue 22, item 6; issue 21, item 5).

* every file under ``hub/`` and ``published.json`` names no absolute path of the publishing machine;
* every published card has the sections a user needs (install, repository, classes, intended use and
  limitations, training time and hardware, a timm snippet that imports lipzoo first) and still parses back to
  the published claims; every ``config.json`` has timm's ``label_names`` and the model's input statistics;
* the card template is package data: a wheel renders a card without the source checkout;
* ``lipzoo publish --card-only`` rewrites card and config as a new revision, weights and claims unchanged, and
  the local hub still serves the revision it replaces.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HUB = ROOT / "hub"
MANIFEST = ROOT / "lipzoo" / "hub" / "published.json"
HISTORY = ".revisions"  # superseded revisions, kept byte-exact for old pins (lipzoo.hub.history)
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SECTIONS = ("## Intended use and limitations", "## Classes", "## How to use", "pip install", "### timm",
            "import lipzoo  # first", "HF_ENDPOINT", "lipzoo hub serve", "- **Training time:**", "- **Hardware:**",
            "- **Code:** lipzoo, https://", "l2", "[0, 1]", "CIFAR-10 test distribution")
# absolute paths: a POSIX path under a usual top-level folder, a Windows drive, a home folder; then any other
# /a/b that exists on this machine
_END = r"[^\s\"'`),;]*"
_ABS = re.compile(r"(?<![\w.:/~-])(?:/(?:work|home|tmp|root|Users|mnt|var|opt|srv)(?![\w.-])" + _END
                  + r"|[A-Za-z]:\\" + _END + r"|~/" + _END + ")")
_POSIX = re.compile(r"(?<![\w.:/~-])/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")


def _published() -> dict:
    return json.loads(MANIFEST.read_text())


def _served_files() -> list[Path]:
    """Every file under hub/ except the kept superseded revisions."""
    return sorted(p for p in HUB.rglob("*") if p.is_file() and HISTORY not in p.relative_to(HUB).parts)


def absolute_paths(text: str) -> list[str]:
    """Absolute local paths in ``text``: well-known roots, drives and ``~/``, and any ``/a/b`` that exists here."""
    found = _ABS.findall(text) + [m for m in _POSIX.findall(text) if re.search(r"[A-Za-z0-9]", m) and Path(m).exists()]
    return sorted(set(found))


def _text_of(path: Path) -> str:
    """What of a file is text: the JSON header of a safetensors file, the text chunks of a PNG, else all of it."""
    data = path.read_bytes()
    if path.suffix == ".safetensors":
        data = data[8:8 + int.from_bytes(data[:8], "little")]
    elif path.suffix == ".png":
        chunks, i = [], 8
        while i + 8 <= len(data):
            n, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
            body = data[i + 8:i + 8 + n]
            if kind in (b"tEXt", b"iTXt"):
                chunks.append(body)
            elif kind == b"zTXt":
                key, _, rest = body.partition(b"\0")
                chunks.append(key + b" " + zlib.decompress(rest[1:]))
            i += 12 + n
        data = b"\n".join(chunks)
    return data.decode("utf-8", errors="replace")


def test_the_path_detector_catches_what_it_must():
    text = ("lipzoo publish /work/runs/sll_xs.cifar10 --arch sll_xs; C:\\Users\\me\\run; ~/runs/x; "
            f"see {sys.executable}; eps 36/255, https://github.com/lipzoo/lipzoo, runs/sll_xs.cifar10, 1 / min(std)")
    found = absolute_paths(text)
    assert {"/work/runs/sll_xs.cifar10", "C:\\Users\\me\\run", "~/runs/x", sys.executable} <= set(found), found
    assert len(found) == 4, found  # not 36/255, the URL, the relative path or "1 / min(std)"


def test_no_absolute_path_under_hub_or_in_the_manifest():
    offenders = {}
    for path in [*_served_files(), MANIFEST]:
        hits = absolute_paths(_text_of(path))
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert not offenders, offenders


@pytest.mark.parametrize("model_id", sorted(_published()))
def test_published_card_has_the_user_sections_and_parses_to_the_claims(model_id):
    from huggingface_hub import ModelCard

    from lipzoo.hub.card import claims_from_card
    from lipzoo.hub.snapshot import sha256_file, snapshot_revision

    entry = _published()[model_id]
    folder = HUB / entry["hf_hub_id"]
    card = ModelCard.load(folder / "README.md")
    missing = [s for s in SECTIONS if s not in card.text]
    assert not missing, f"{model_id}: card lacks {missing}"
    assert f'timm.create_model("hf-hub:{entry["hf_hub_id"]}"' in card.text
    assert card.text.index("import lipzoo  # first") < card.text.index("import timm")
    parsed = claims_from_card(card)
    claims = entry["claims"]
    assert parsed == {k: claims[k] for k in parsed}, model_id
    config = json.loads((folder / "config.json").read_text())
    assert config["label_names"] == CIFAR10
    assert config["pretrained_cfg"]["mean"] == [0.0, 0.0, 0.0] and config["pretrained_cfg"]["std"] == [1.0, 1.0, 1.0]
    assert config["lipzoo"]["claims"] == claims
    assert config["lipzoo"]["sha256"] == entry["sha256"] == sha256_file(folder / "model.safetensors")
    assert entry["revision"] == snapshot_revision(folder, entry["hf_hub_id"])


def test_portable_path_is_relative_to_the_project_or_the_run_name(tmp_path):
    from lipzoo.hub.card import portable_path
    from lipzoo.hub.republish import portable_command

    assert portable_path(ROOT / "runs" / "sll_xs.cifar10") == "runs/sll_xs.cifar10"
    run = tmp_path / "runs" / "sll_xs.cifar10"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"x")
    assert portable_path(run) == "sll_xs.cifar10"
    assert portable_path(run / "model.safetensors") == "sll_xs.cifar10/model.safetensors"
    assert portable_command("lipzoo publish /work/runs/sll_xs.cifar10 --arch sll_xs --tag cifar10") == (
        "lipzoo publish sll_xs.cifar10 --arch sll_xs --tag cifar10")


def test_training_summary_from_the_run_log():
    from lipzoo.hub.card import training_summary

    log = [{"epoch": 1, "seconds": 1800.0, "images_per_s": 30.0, "cpu_seconds": 3600.0},
           {"epoch": 2, "seconds": 1800.0, "images_per_s": 20.0, "cpu_seconds": 3600.0},
           {"epoch": 3, "seconds": 5.0, "partial": True}]
    time_line, hardware = training_summary(log, {"platform": "Linux-x86_64", "torch": "2.9"}, "2-core CPU")
    assert time_line.startswith("1.00 h wall clock for 2 epochs (1800 s per epoch, median 30 images/s; 2.00 h CPU")
    assert hardware == "2-core CPU, platform Linux-x86_64, torch 2.9"
    assert training_summary([], None) == (None, None)


def test_card_template_is_package_data_of_the_wheel(tmp_path):
    """Build the wheel from a copy of the package and pyproject.toml, then render a card from the unpacked wheel
    alone, in a folder without the checkout: the template must come with the package."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(ROOT / "lipzoo", src / "lipzoo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                          "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    site = tmp_path / "site"
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("lipzoo-*.whl"))) as whl:
        assert "lipzoo/templates/model_card.md" in whl.namelist()
        whl.extractall(site)
    code = textwrap.dedent(f'''
        import lipzoo.hub.card as card
        assert card.__file__.startswith({str(site)!r}), card.__file__
        claims = {{"dataset": "cifar10", "split": "test", "subset": "full", "n": 10, "clean_accuracy": 0.5,
                  "certified_accuracy": {{"36/255": 0.25}}, "eps": {{"36/255": 36 / 255}}, "head_rule": "lln"}}
        stats = {{"params": 1000, "gmacs": None, "lipschitz_bound": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1],
                 "norm_factor": 1.0, "input_size": [3, 32, 32]}}
        c = card.render_card(repo_id="lipzoo/sll_xs.cifar10", arch="sll_xs", tag="cifar10", claims=claims,
                             info={{"family": "sll"}}, stats=stats, sha256="0" * 64, code_revision=None,
                             publish_command="lipzoo publish run --arch sll_xs --tag cifar10")
        print("RENDERED" if "## Intended use and limitations" in c.text else "NO SECTION")
    ''')
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LIPZOO_HUB_DIR")}
    env["PYTHONPATH"] = str(site)
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "RENDERED" in res.stdout, res.stderr[-3000:]


def test_card_only_republish_keeps_weights_claims_and_the_old_revision(tmp_path, monkeypatch):
    """A published repo whose card shows an absolute path: --card-only makes a new revision without it, same
    weights and claims, and the hub still serves the old revision. Fails before: there was no card-only path."""
    from lipzoo.hub.history import kept_revisions
    from lipzoo.hub.republish import republish_card
    from lipzoo.hub.server import build_mirrors
    from lipzoo.hub.snapshot import run_git, sha256_file, snapshot_revision

    model_id = "sll_xs.cifar10"
    entry = dict(_published()[model_id])
    repo = tmp_path / "hub" / entry["hf_hub_id"]
    shutil.copytree(HUB / entry["hf_hub_id"], repo, ignore=shutil.ignore_patterns(HISTORY))
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + "\n```bash\nlipzoo publish /work/runs/sll_xs.cifar10 --arch sll_xs "
                                          "--tag cifar10\n```\n")
    old = snapshot_revision(repo, entry["hf_hub_id"])
    manifest = tmp_path / "published.json"
    manifest.write_text(json.dumps({model_id: {**entry, "revision": old}}))
    monkeypatch.setenv("LIPZOO_PUBLISHED_JSON", str(manifest))
    weights = (repo / "model.safetensors").read_bytes()

    out = republish_card(model_id, hub=tmp_path / "hub", upload=False, repo_url="https://example.org/lipzoo",
                         run_dir=ROOT / "results" / "runs" / model_id, hardware="2-core CPU")
    new = json.loads(manifest.read_text())[model_id]
    assert out.revision == new["revision"] == snapshot_revision(repo, entry["hf_hub_id"]) != old
    assert {k: v for k, v in new.items() if k != "revision"} == {k: v for k, v in entry.items() if k != "revision"}
    assert (repo / "model.safetensors").read_bytes() == weights and sha256_file(repo / "model.safetensors") == entry["sha256"]
    text = readme.read_text()
    assert not absolute_paths(text) and "https://example.org/lipzoo" in text and "2-core CPU" in text
    assert json.loads((repo / "config.json").read_text())["lipzoo"]["claims"] == entry["claims"]
    assert [r["revision"] for r in kept_revisions(repo)] == [old]
    mirrors = tmp_path / "mirrors"
    assert build_mirrors(tmp_path / "hub", mirrors)[entry["hf_hub_id"]] == out.revision
    git_dir = mirrors / "models" / entry["hf_hub_id"]
    assert run_git(["rev-parse", "--verify", f"{old}^{{commit}}"], git_dir) == old
    assert "/work/runs/sll_xs.cifar10" in run_git(["show", f"{old}:README.md"], git_dir)  # byte-exact history
    # a second run changes nothing
    assert republish_card(model_id, hub=tmp_path / "hub", upload=False, repo_url="https://example.org/lipzoo",
                          run_dir=ROOT / "results" / "runs" / model_id, hardware="2-core CPU").revision == out.revision
    assert len(kept_revisions(repo)) == 1


def test_card_only_republish_refuses_weights_that_are_not_the_published_ones(tmp_path, monkeypatch):
    from lipzoo.hub.publish import PublishError
    from lipzoo.hub.republish import republish_card

    model_id = "sll_xs.cifar10"
    entry = _published()[model_id]
    repo = tmp_path / "hub" / entry["hf_hub_id"]
    shutil.copytree(HUB / entry["hf_hub_id"], repo, ignore=shutil.ignore_patterns(HISTORY))
    data = bytearray((repo / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (repo / "model.safetensors").write_bytes(bytes(data))
    manifest = tmp_path / "published.json"
    manifest.write_text(json.dumps({model_id: entry}))
    monkeypatch.setenv("LIPZOO_PUBLISHED_JSON", str(manifest))
    with pytest.raises(PublishError, match="not the published weights"):
        republish_card(model_id, hub=tmp_path / "hub", upload=False)
