"""No hard-coded device in the package: everything follows the model's (or the caller's) device.

The real check is running the suite on a GPU (``DEVICES`` in tests/test_soundness.py, scripts/gpu_check.py); this
grep-level test catches the obvious regressions on a CPU-only machine.
"""
from __future__ import annotations

import re
from pathlib import Path

import lipzoo

PACKAGE = Path(lipzoo.__file__).resolve().parent
# (file, pattern) pairs that are allowed: device *selection* (never a device a tensor is forced onto)
ALLOWED = {
    ("train/loop.py", '"cuda"'),  # _pick_device: the default when a GPU exists
    ("_numerics.py", '"cuda"'),  # the autocast device types switched off during certification
    ("cli/certify.py", '"cuda"'),  # --device: the default when a GPU exists, and its availability check
}
PATTERNS = [r"\.cuda\(", r'"cuda(:\d+)?"', r"'cuda(:\d+)?'", r'device\s*=\s*"cuda']


def test_no_hard_coded_cuda_device():
    found = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern in PATTERNS:
                m = re.search(pattern, code)
                if m and (rel, m.group(0).split("=")[-1].strip()) not in ALLOWED:
                    found.append(f"{rel}:{lineno}: {line.strip()}")
    assert not found, "hard-coded CUDA device:\n" + "\n".join(found)



# ---------------------------------------------------------------------- the same checks on every device
import pytest  # noqa: E402
import torch  # noqa: E402

from lipzoo.data import find_root  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_audit_on_every_device(device):
    torch.manual_seed(0)
    model = lipzoo.create_model("sll_xs").eval().to(device)
    x = torch.rand(6, 3, 32, 32)  # images on the CPU, model on the device
    with torch.no_grad():
        y = model(x.to(device)).argmax(1).cpu()
    report = lipzoo.audit(model, x, y, n_probe=2, power_iters=3, pgd_steps=3, restarts=1, n_attack=4, pair_steps=2)
    assert report.ok
    assert next(model.parameters()).device.type == device


@pytest.mark.skipif(find_root("cifar10") is None, reason="needs CIFAR-10 (../shared/data)")
@pytest.mark.parametrize("device", DEVICES)
def test_a_few_training_steps_and_the_final_evaluation_on_every_device(device, tmp_path):
    """Two steps of sll_cpu (an LLN head: the final evaluation of every GPU run of such a model used to crash)."""
    from lipzoo.train import RECIPES
    from lipzoo.train.loop import train

    recipe = RECIPES["sll_cpu"].replace(epochs=1, batch_size=64)
    result = train(recipe, tmp_path / "run", device=device, progress=False, train_subset=128, eval_subset=50)
    assert result["finished"] and (tmp_path / "run" / "results.json").exists()
    assert result["claims"]["n"] == 50 and 0.0 <= result["claims"]["clean_accuracy"] <= 1.0


# ------------------------------------------------------------------------------- lipzoo certify --device
def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from lipzoo.cli import main

    try:
        rc = main(list(argv))
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.skipif(find_root("cifar10") is None, reason="needs CIFAR-10 (../shared/data)")
@pytest.mark.parametrize("device", DEVICES)
def test_cli_certifies_on_the_device_asked_for(capsys, device):
    rc, out, err = _cli(capsys, "certify", "sll_xs", "--random-init", "--n", "4", "--quiet", "--device", device)
    assert rc == 0, err
    assert "n=4" in out


@pytest.mark.parametrize("bad, needle", [("gpu0", "is not a device"),
                                         *([("cuda", "no CUDA device")] if not torch.cuda.is_available() else [])])
def test_cli_device_mistakes_are_one_line(capsys, bad, needle):
    rc, _, err = _cli(capsys, "certify", "sll_xs", "--random-init", "--n", "4", "--device", bad)
    assert rc == 2 and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and needle in err
