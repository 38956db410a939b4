"""CIFAR-10 / CIFAR-100 as uint8 NHWC arrays or as a Dataset of float images in [0, 1].

Where the data comes from, in this order:

1. an explicit ``root`` argument (``--data`` on the command line);
2. the ``LIPZOO_DATA`` environment variable;
3. the offline copy ``shared/data`` next to the project checkout, when lipzoo runs from one
   (:func:`lipzoo._checkout.shared_data_dir`);
4. torchvision's download into ``~/.cache/lipzoo/data`` (needs internet).

A root may hold torchvision's layouts (``cifar-10-batches-py/``, ``cifar-100-python/``) or the lossless WebP
mosaic layout (``cifar10/{data_batch_1..5,test_batch}.webp`` + ``labels.npz``: each file is a 100 x 100 grid
of 32 x 32 images, image k at grid row k // 100, column k % 100). The WebP copy is checked once against the
official MD5s of ``cifar-10-binary.tar.gz`` (rebuilt from the decoded pixels) and that fact is cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from ._checkout import shared_data_dir

__all__ = ["load_cifar", "CIFAR", "DataNotFoundError", "find_root", "NUM_CLASSES", "cache_dir"]

Name = Literal["cifar10", "cifar100"]
Split = Literal["train", "test"]
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}

# MD5 of the official binary-version files (<label byte><R,G,B planes> x 10000), see shared/data/README.md
_CIFAR10_BIN_MD5 = {
    "data_batch_1": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "data_batch_2": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "data_batch_4": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5": "53f37980c15c3d472c316c40844f3f0d",
    "test_batch": "803d5f7f4d78ea53de84dbe85f74fb6d",
}


class DataNotFoundError(FileNotFoundError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("LIPZOO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lipzoo"
    )
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _has_layout(root: Path, name: Name) -> bool:
    if name == "cifar10":
        return (root / "cifar-10-batches-py" / "test_batch").exists() or (root / "cifar10" / "test_batch.webp").exists()
    return (root / "cifar-100-python" / "test").exists()


def find_root(name: Name = "cifar10", root: str | os.PathLike | None = None) -> Path | None:
    """The first data root (see module docstring) that holds ``name``; ``None`` means: try a download."""
    candidates: list[tuple[str, Path]] = []
    if root is not None:
        candidates.append(("root argument", Path(root)))
    elif os.environ.get("LIPZOO_DATA"):
        candidates.append(("LIPZOO_DATA", Path(os.environ["LIPZOO_DATA"])))
    else:
        shared = shared_data_dir()
        if shared is not None:
            candidates.append(("offline copy", shared))
        candidates.append(("download cache", cache_dir() / "data"))
    for source, path in candidates:
        if _has_layout(path, name):
            return path
        if source in ("root argument", "LIPZOO_DATA"):
            raise DataNotFoundError(
                f"{source} {str(path)!r} holds no {name} (expected {_layout_hint(name)}). "
                + _how_to_provide(name)
            )
    return None


def _layout_hint(name: Name) -> str:
    return "cifar-10-batches-py/ or cifar10/*.webp" if name == "cifar10" else "cifar-100-python/"


def _how_to_provide(name: Name) -> str:
    return (
        f"Provide {name} in one of three ways: (1) pass root=/path (or --data /path) to a folder holding "
        f"{_layout_hint(name)}; (2) set LIPZOO_DATA=/path; (3) run once with internet so torchvision can "
        f"download it into {cache_dir() / 'data'}."
    )


# ----------------------------------------------------------------------------------------------- readers
def _read_mosaic(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    if a.shape != (3200, 3200, 3):
        raise ValueError(f"{path}: expected a 3200x3200 RGB mosaic, got {a.shape}")
    return a.reshape(100, 32, 100, 32, 3).transpose(0, 2, 1, 3, 4).reshape(10000, 32, 32, 3)


def _binary_md5(x: np.ndarray, y: np.ndarray) -> str:
    rows = np.concatenate([y.astype(np.uint8)[:, None], x.transpose(0, 3, 1, 2).reshape(len(x), -1)], axis=1)
    return hashlib.md5(rows.tobytes()).hexdigest()


def _verify_webp_once(folder: Path, batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    stamp = cache_dir() / "verified_data.json"
    key = str(folder.resolve())
    sig = {f: os.stat(folder / f"{f}.webp").st_size for f in _CIFAR10_BIN_MD5} | {
        "labels.npz": os.stat(folder / "labels.npz").st_size
    }
    done = json.loads(stamp.read_text()) if stamp.exists() else {}
    if done.get(key) == sig:
        return
    for f, (x, y) in batches.items():
        got = _binary_md5(x, y)
        if got != _CIFAR10_BIN_MD5[f]:
            raise ValueError(
                f"{folder / (f + '.webp')} does not decode to the official CIFAR-10 {f} (MD5 {got} != "
                f"{_CIFAR10_BIN_MD5[f]}); the copy is corrupted: replace it"
            )
    done[key] = sig
    stamp.write_text(json.dumps(done, indent=1))


def _load_webp_cifar10(folder: Path, split: Split, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    labels = np.load(folder / "labels.npz")
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs = [_read_mosaic(folder / f"{n}.webp") for n in names]
    y_all = labels[split].astype(np.int64)
    if verify:
        # verify every file once (both splits), so a cached "verified" means the whole copy is intact
        other = "test" if split == "train" else "train"
        other_names = ["test_batch"] if other == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        y_other = labels[other].astype(np.int64)
        stamp_ok = _is_verified(folder)
        if not stamp_ok:
            batches = {n: (x, y_all[i * 10000:(i + 1) * 10000]) for i, (n, x) in enumerate(zip(names, xs))}
            batches |= {n: (_read_mosaic(folder / f"{n}.webp"), y_other[i * 10000:(i + 1) * 10000])
                        for i, n in enumerate(other_names)}
            _verify_webp_once(folder, batches)
    return np.concatenate(xs), y_all


def _is_verified(folder: Path) -> bool:
    stamp = cache_dir() / "verified_data.json"
    if not stamp.exists():
        return False
    sig = {f: os.stat(folder / f"{f}.webp").st_size for f in _CIFAR10_BIN_MD5} | {
        "labels.npz": os.stat(folder / "labels.npz").st_size
    }
    return json.loads(stamp.read_text()).get(str(folder.resolve())) == sig


def _unpickle(path: Path) -> dict:
    # torchvision's own CIFAR files are pickles of plain dicts/lists/ndarrays; this reads local data files
    # the user pointed us to (never anything downloaded from a model hub).
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _load_torchvision_layout(root: Path, name: Name, split: Split) -> tuple[np.ndarray, np.ndarray]:
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key = "labels"
    else:
        folder = root / "cifar-100-python"
        files = [split]
        label_key = "fine_labels"
    xs, ys = [], []
    for f in files:
        d = _unpickle(folder / f)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)


def load_cifar(
    name: Name = "cifar10", split: Split = "test", root: str | os.PathLike | None = None, verify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 32, 32, 3), labels int64 (N,))`` of a CIFAR split."""
    if name not in NUM_CLASSES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(NUM_CLASSES)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    found = find_root(name, root)
    if found is None:
        found = _download(name)
    if name == "cifar10" and (found / "cifar10" / "test_batch.webp").exists() and not (found / "cifar-10-batches-py").exists():
        return _load_webp_cifar10(found / "cifar10", split, verify)
    return _load_torchvision_layout(found, name, split)


def _download(name: Name) -> Path:
    import torchvision

    target = cache_dir() / "data"
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(target), train=False, download=True)
        cls(str(target), train=True, download=True)
    except Exception as e:  # no network, blocked host, ...
        raise DataNotFoundError(f"no local copy of {name} was found and downloading it failed ({e}). "
                                + _how_to_provide(name)) from e
    return target


@dataclass
class _Arrays:
    x: np.ndarray
    y: np.ndarray


class CIFAR(Dataset):
    """CIFAR split as float images in [0, 1] (C, H, W) with int labels; ``.images``/``.labels`` hold the arrays."""

    def __init__(self, name: Name = "cifar10", split: Split = "test", root: str | os.PathLike | None = None):
        self.name, self.split = name, split
        self.images, self.labels = load_cifar(name, split, root)
        self.num_classes = NUM_CLASSES[name]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255)
        return x, int(self.labels[i])

    def tensors(self, indices: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All (or the selected) images as one float tensor (N, 3, 32, 32) in [0, 1], and labels."""
        x, y = (self.images, self.labels) if indices is None else (self.images[indices], self.labels[indices])
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float().div_(255), torch.from_numpy(y)
