"""What long work tells the user: one-line notes and tqdm bars on stderr, silenced with ``LIPZOO_QUIET=1``."""
from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["enabled", "note", "bar"]


def enabled() -> bool:
    """False when ``LIPZOO_QUIET`` is set to anything but ``0`` / empty."""
    return os.environ.get("LIPZOO_QUIET", "") in ("", "0")


def note(message: str) -> None:
    """One line on stderr for the user (``lipzoo: message``), unless quiet."""
    if enabled():
        print(f"lipzoo: {message}", file=sys.stderr, flush=True)


def bar(total: int | None, desc: str, show: bool = True, unit: str = "it") -> Any:
    """A tqdm bar on stderr (disabled when ``show`` is False or lipzoo is quiet)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not (show and enabled()), leave=False, dynamic_ncols=True)
