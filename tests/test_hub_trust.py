"""Downloads that must not be trusted (issue 19, items 4-6): spoofed eps values, a cached verification reused for
a model built with other arguments, refused downloads left in the Hugging Face cache.

The repos are variants of the published ``sll_xs.cifar10`` (its weights and its full-test-set claims), written
into a scratch folder before a local hub starts on it (no write route is used). Everything that downloads runs in
one fresh interpreter with its own ``HF_HOME`` and ``LIPZOO_CACHE``; the project's ``hub/`` and
``published.json`` are only read.
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
from typing import Any, Callable

import pytest

pytest.importorskip("olah", reason="the local hub needs the hub extra: pip install 'lipzoo[hub]'")

from lipzoo.data import find_root  # noqa: E402

pytestmark = pytest.mark.hub

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "hub" / "lipzoo" / "sll_xs.cifar10"
ORG = "trust"
EPS_LABELS = ["36/255", "72/255", "108/255", "255/255"]

if find_root("cifar10") is None:
    pytest.skip("verification needs CIFAR-10: no local copy found (set LIPZOO_DATA)", allow_module_level=True)
if not (SOURCE / "model.safetensors").is_file():
    pytest.skip(f"{SOURCE} is not published in this checkout", allow_module_level=True)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_repo(root: Path, name: str, edit_config: Callable[[dict[str, Any]], None] | None = None,
               edit_state: Callable[[dict[str, Any]], None] | None = None) -> None:
    """``root/trust/<name>``: the published sll_xs.cifar10 files, its config edited by ``edit_config`` and its
    weights by ``edit_state`` (then re-saved, with the config's sha256 updated to the new file)."""
    from safetensors.torch import load_file, save_file

    folder = root / ORG / name
    folder.mkdir(parents=True)
    config = json.loads((SOURCE / "config.json").read_text())
    if edit_state is None:
        shutil.copyfile(SOURCE / "model.safetensors", folder / "model.safetensors")
    else:
        state = load_file(str(SOURCE / "model.safetensors"))
        edit_state(state)
        save_file(state, str(folder / "model.safetensors"))
        config["lipzoo"]["sha256"] = _sha256(folder / "model.safetensors")
    if edit_config is not None:
        edit_config(config)
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _q_abs(config: dict[str, Any]) -> None:
    config["model_args"] = {**config["model_args"], "q_mode": "abs"}


def _eps_zero(config: dict[str, Any]) -> None:
    """The spoof of issue 19: the usual labels, every eps value 0.0, every 'certified' accuracy = the clean one."""
    claims = config["lipzoo"]["claims"]
    claims["eps"] = {label: 0.0 for label in claims["eps"]}
    claims["certified_accuracy"] = {label: claims["clean_accuracy"] for label in claims["certified_accuracy"]}


def _extra_key(state: dict[str, Any]) -> None:
    import torch

    state["extra.weight"] = torch.zeros(3)


def _missing_key(state: dict[str, Any]) -> None:
    del state[sorted(state)[-1]]


def _other_arch(config: dict[str, Any]) -> None:
    config["architecture"] = config["lipzoo"]["arch"] = "sandwich_xs"


CHILD = '''
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
import timm, lipzoo
from huggingface_hub import constants
from lipzoo.hub.download import load_pretrained

measured = []  # one name per call of lipzoo.verification.verify, i.e. per real measurement
import importlib
module = importlib.import_module("lipzoo.verification")
real_verify = module.verify

def counting_verify(*args, **kwargs):
    measured.append(kwargs.get("name"))
    return real_verify(*args, **kwargs)

module.verify = counting_verify

def attempt(fn):
    before = len(measured)
    try:
        fn()
        out = {"ok": True}
    except Exception as e:
        out = {"ok": False, "type": type(e).__name__, "value_error": isinstance(e, ValueError), "message": str(e)}
    out["measured"] = len(measured) - before
    return out

def hf_hub(name):
    return lambda: timm.create_model(f"hf-hub:trust/{name}", pretrained=True, verify="quick")

def into_sll_xs(name):
    return lambda: load_pretrained(lipzoo.create_model("sll_xs"), {"hf_hub_id": f"trust/{name}"}, verify=0)

def cached_files(name):
    d = os.path.join(constants.HF_HUB_CACHE, "models--trust--" + name)
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs
                  if "snapshots" in r or "blobs" in r)

def reports():
    d = os.path.join(os.environ["LIPZOO_CACHE"], "verified")
    return [json.load(open(os.path.join(d, f))) for f in sorted(os.listdir(d)) if f.endswith(".json")]

out = {}
out["good"] = attempt(hf_hub("sll_xs.good"))
out["good_again"] = attempt(hf_hub("sll_xs.good"))
out["qabs"] = attempt(hf_hub("sll_xs.qabs"))
out["eps0"] = attempt(hf_hub("sll_xs.eps0"))
out["eps0_files"] = cached_files("sll_xs.eps0")
out["extra"] = attempt(into_sll_xs("sll_xs.extra"))
out["missing"] = attempt(into_sll_xs("sll_xs.missing"))
out["otherarch_timm"] = attempt(hf_hub("sll_xs.otherarch"))
out["otherarch_timm_files"] = cached_files("sll_xs.otherarch")
out["otherarch"] = attempt(into_sll_xs("sll_xs.otherarch"))
for name in ("extra", "missing", "otherarch"):
    out[name + "_files"] = cached_files("sll_xs." + name)
out["good_files"] = cached_files("sll_xs.good")
good_snapshots = os.path.join(constants.HF_HUB_CACHE, "models--trust--sll_xs.good", "snapshots")
out["good_weights"] = os.path.realpath(os.path.join(good_snapshots, os.listdir(good_snapshots)[0], "model.safetensors"))
out["reports"] = reports()
print("RESULT " + json.dumps(out, default=str), flush=True)
'''


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, Any]:
    """Serve the variants of sll_xs.cifar10 and load each of them once, in order, in one fresh interpreter."""
    from lipzoo.hub.server import LocalHub

    tmp = tmp_path_factory.mktemp("trust")
    served = tmp / "served"
    _make_repo(served, "sll_xs.good")
    _make_repo(served, "sll_xs.qabs", edit_config=_q_abs)
    _make_repo(served, "sll_xs.eps0", edit_config=_eps_zero)
    _make_repo(served, "sll_xs.extra", edit_state=_extra_key)
    _make_repo(served, "sll_xs.missing", edit_state=_missing_key)
    _make_repo(served, "sll_xs.otherarch", edit_config=_other_arch)
    cache = tmp / "lipzoo-cache"
    cache.mkdir()
    stamp = Path(os.path.expanduser("~/.cache/lipzoo/verified_data.json"))
    if stamp.exists():  # the dataset copy is known to be intact: no MD5 pass in the child
        shutil.copy(stamp, cache / "verified_data.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LIPZOO_")) or k == "LIPZOO_DATA"}
    with LocalHub(served) as hub:
        env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
                   LIPZOO_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD)], env=env, cwd=str(ROOT),
                             capture_output=True, text=True, timeout=900)
    lines = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert res.returncode == 0 and lines, (f"child failed (rc={res.returncode}):\n{res.stdout[-3000:]}\n"
                                           f"{res.stderr[-6000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    out["served"] = served
    return out


def test_eps_labels_that_disagree_with_their_values_are_refused_on_download(outcomes):
    """Item 4: eps values 0.0 under the labels 36/255 ... 255/255 are refused with a ValueError before anything
    is measured; no passing record is cached and the files leave the HF cache."""
    eps0 = outcomes["eps0"]
    assert not eps0["ok"], "a claims record whose eps values disagree with their labels was loaded as verified"
    assert eps0["value_error"] and eps0["measured"] == 0, eps0
    assert "255/255" in eps0["message"] and "0.0" in eps0["message"], eps0["message"]
    for record in outcomes["reports"]:
        assert set(record["claims"]["eps"].values()) != {0.0}, record["repo_id"]
    assert outcomes["eps0_files"] == []


def test_cached_verification_is_keyed_on_the_model_arguments(outcomes):
    """Item 5: the same weights and claims built with ``q_mode='abs'`` are measured again, not taken from the report
    cached for the default model; the default model itself is measured once."""
    assert outcomes["good"]["ok"] and outcomes["good"]["measured"] == 1, outcomes["good"]
    assert outcomes["good_again"]["ok"] and outcomes["good_again"]["measured"] == 0, outcomes["good_again"]
    assert outcomes["qabs"]["measured"] == 1, outcomes["qabs"]
    if outcomes["qabs"]["ok"]:  # within the quick test's interval: its own record, which names q_mode='abs'
        records = [r for r in outcomes["reports"] if r["repo_id"] == "trust/sll_xs.qabs"]
        assert len(records) == 1 and '"q_mode": "abs"' in json.dumps(records[0]), records
    assert len([r for r in outcomes["reports"] if r["repo_id"] == "trust/sll_xs.good"]) == 1


def test_refused_downloads_leave_nothing_in_the_hf_cache(outcomes):
    """Item 6: extra or missing keys, or a config whose ``architecture`` names another model: refused, and neither
    snapshot files nor blobs stay; the trusted repo in the same cache is untouched."""
    for name in ("extra", "missing", "otherarch_timm", "otherarch"):
        assert not outcomes[name]["ok"] and outcomes[name]["type"] == "HubError", (name, outcomes[name])
        assert outcomes[name + "_files"] == [], (name, outcomes[name + "_files"])
    assert "sandwich_xs" in outcomes["otherarch"]["message"], outcomes["otherarch"]["message"]
    good = outcomes["good_files"]
    assert len([p for p in good if p.startswith("blobs")]) == 2 and len(good) == 4, good
    assert _sha256(Path(outcomes["good_weights"])) == _sha256(SOURCE / "model.safetensors")
