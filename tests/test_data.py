"""CIFAR loading from every supported on-disk form, and the missing-data error."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from lipzoo import data
from lipzoo.data import CIFAR, DataNotFoundError, load_cifar

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "cifar10").exists(), reason="shared CIFAR-10 copy not present")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("LIPZOO_CACHE", str(tmp_path_factory.getbasetemp() / "lipzoo-cache"))
    monkeypatch.delenv("LIPZOO_DATA", raising=False)


@needs_shared
def test_real_cifar10_from_shared_copy():
    (x_tr, y_tr) = load_cifar("cifar10", "train")
    (x_te, y_te) = load_cifar("cifar10", "test")
    assert x_tr.shape == (50000, 32, 32, 3) and x_tr.dtype == np.uint8
    assert x_te.shape == (10000, 32, 32, 3)
    assert np.bincount(y_tr, minlength=10).tolist() == [5000] * 10
    assert np.bincount(y_te, minlength=10).tolist() == [1000] * 10
    assert y_tr[:5].tolist() == [6, 9, 9, 4, 1]
    assert y_te[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    # pixel spot values from the original pickles (shared/data/README.md)
    assert x_tr[0, 0, :3, 0].tolist() == [59, 43, 50]  # R plane of train image 0, first row


@needs_shared
def test_integrity_check_is_cached(tmp_path):
    load_cifar("cifar10", "test")
    stamp = data.cache_dir() / "verified_data.json"
    assert stamp.exists() and str((SHARED / "cifar10").resolve()) in stamp.read_text()


def test_webp_corruption_is_detected(tmp_path):
    from PIL import Image

    folder = tmp_path / "cifar10"
    folder.mkdir()
    for k, name in enumerate(["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]):
        Image.new("RGB", (3200, 3200), (k, 2, 3)).save(folder / f"{name}.webp", lossless=True, method=0)
    np.savez(folder / "labels.npz", train=np.zeros(50000, np.int64), test=np.zeros(10000, np.int64))
    with pytest.raises(ValueError, match="corrupted"):
        load_cifar("cifar10", "test", root=tmp_path)


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_synthetic_cifar100_torchvision_layout(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    for split, n in (("train", 50), ("test", 20)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        _write_pickle(folder / split, {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split,
                                      "fine_labels": fine, "coarse_labels": [f // 5 for f in fine], "data": x})
    _write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)],
                                    "coarse_label_names": [f"s{i}" for i in range(20)]})
    x, y = load_cifar("cifar100", "test", root=tmp_path)
    assert x.shape == (20, 32, 32, 3) and y.shape == (20,)
    raw = pickle.loads((folder / "test").read_bytes())
    # HWC image 0, channel 0 row 0 == the R plane's first 32 values
    assert x[0, 0, :, 0].tolist() == raw["data"][0, :32].tolist()
    assert y.tolist() == raw["fine_labels"]
    ds = CIFAR("cifar100", "train", root=tmp_path)
    img, label = ds[3]
    assert img.shape == (3, 32, 32) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert label == raw_label(folder / "train", 3)
    assert ds.num_classes == 100


def raw_label(path: Path, i: int) -> int:
    return pickle.loads(path.read_bytes())["fine_labels"][i]


def test_synthetic_cifar10_torchvision_layout(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        _write_pickle(folder / name, {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                                     "labels": rng.integers(0, 10, 10).tolist()})
    x, y = load_cifar("cifar10", "train", root=tmp_path)
    assert x.shape == (50, 32, 32, 3) and y.shape == (50,)


def test_missing_data_error_names_three_ways(tmp_path, monkeypatch):
    with pytest.raises(DataNotFoundError) as e:
        load_cifar("cifar100", "test", root=tmp_path)
    msg = str(e.value)
    assert "root=" in msg and "LIPZOO_DATA" in msg and "download" in msg
    monkeypatch.setenv("LIPZOO_DATA", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="LIPZOO_DATA"):
        load_cifar("cifar10", "test")


def test_dataset_tensors_in_unit_range(tmp_path):
    rng = np.random.default_rng(3)
    folder = tmp_path / "cifar-10-batches-py"
    for name in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        _write_pickle(folder / name, {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4]})
    x, y = CIFAR("cifar10", "test", root=tmp_path).tensors()
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0 and y.tolist() == [1, 2, 3, 4]
