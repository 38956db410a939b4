"""``scripts/gpu_check.py --device cpu --quick``: the GPU check's code path, run on the CPU (as CI does)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lipzoo.data import find_root


@pytest.mark.skipif(find_root("cifar10") is None, reason="needs CIFAR-10 (../shared/data)")
def test_gpu_check_quick_on_the_cpu(repo_root, tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(repo_root / "scripts" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, cwd=repo_root, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["environment"]["device"] == "cpu"
    published = json.loads((repo_root / "lipzoo" / "hub" / "published.json").read_text())
    assert set(report["certify"]["models"]) == set(published)
    for row in report["certify"]["models"].values():
        assert row["n"] == 200 and row["same_with_user_tf32"] is True and row["measured"]["clean"] > 100
    recipes = report["train"]["recipes"]
    assert {"lot_cpu", "sandwich_cpu", "sll_cpu", "soc_cpu", "torchrun"} <= set(recipes)
    assert all(r["ok"] for r in recipes.values())
    assert report["audit"]["ok"]
    assert report["speed"]["paper_models"]["sll_s"]["images_per_s"] > 0
    assert torch.get_float32_matmul_precision() == "highest"  # this process untouched


def test_gpu_check_refuses_cuda_without_a_gpu(repo_root):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run([sys.executable, str(repo_root / "scripts" / "gpu_check.py")], capture_output=True, text=True,
                          cwd=repo_root, timeout=300)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
