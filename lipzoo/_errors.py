"""Errors a user can fix (a misspelled name, a missing or unreadable file, a wrong option): the ``lipzoo``
command prints them as one line on stderr and exits with code 2 (``--debug`` or ``LIPZOO_DEBUG=1`` for the
traceback). Imports nothing heavy, so the command line can use it before torch is loaded."""
from __future__ import annotations

import os
import sys
from typing import Callable

__all__ = ["LipzooUserError", "user_error_message", "debug_requested", "run_reporting_user_errors", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


class LipzooUserError(Exception):
    """A mistake in what the user asked for; the message says what is wrong and what to do."""


def _one_line(text: object) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def user_error_message(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or ``None`` for anything else (a bug: traceback).

    Known: :class:`LipzooUserError` (unknown models and recipes, unreadable or mismatched checkpoints ...), missing
    or existing files and folders, refused or unreachable hub downloads, safetensors errors and ``ValueError``
    (invalid option values)."""
    if isinstance(e, LipzooUserError):
        return _one_line(e)
    if isinstance(e, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)):
        if e.filename is not None and str(e.filename) not in str(e.args[-1] if e.args else ""):
            return _one_line(f"{e.strerror or e}: {e.filename}")
        return _one_line(e.args[0] if len(e.args) == 1 else e)
    hub = sys.modules.get("lipzoo.hub.download")
    if hub is not None and isinstance(e, getattr(hub, "HubError", ())):  # refused / unreachable: the message says why
        return _one_line(e)
    safetensors = sys.modules.get("safetensors")
    if safetensors is not None and isinstance(e, getattr(safetensors, "SafetensorError", ())):
        return _one_line(f"not a readable safetensors file ({e})")
    if isinstance(e, ValueError):  # invalid values of options (eps labels, sizes, datasets ...)
        return _one_line(e)
    return None


def debug_requested(argv: list[str]) -> bool:
    """``--debug`` on the command line or ``LIPZOO_DEBUG`` set to anything but ``0``/``false``/``no``."""
    return "--debug" in argv or os.environ.get("LIPZOO_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def run_reporting_user_errors(prog: str, fn: Callable[[], int | None], debug: bool = False) -> int:
    """``fn()``'s exit code; a user error instead prints ``'<prog>: error: <message>'`` on stderr and returns
    :data:`EXIT_USER_ERROR` (with ``debug``, or for any other exception, it propagates with its traceback)."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = None if debug else user_error_message(e)
        if message is None:
            raise
        print(f"{prog}: error: {message} (--debug for the traceback)", file=sys.stderr)
        return EXIT_USER_ERROR
