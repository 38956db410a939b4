"""Shared test configuration: keep tests single-threaded-friendly and caches in a temp dir."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def cifar10_available() -> bool:
    return (SHARED_DATA / "cifar10" / "test_batch.webp").exists()
