"""The one ``lipzoo`` command (``lipzoo``, ``python -m lipzoo``): a parser with one module per group of subcommands.

Each module of this package that names a group (``core``, ``certify``, ``train``, ``hub``) has
``register(subparsers)``, which adds its subcommands; ``run`` (the main job of ``make run``) and ``paper``
(``verify --against``) are the code behind some of them.

Building the parser imports neither torch nor timm (``lipzoo --help`` answers at once); each command imports what
it needs when it runs. A mistake the user can fix (an unknown model or recipe, a missing or unreadable file, weights
that do not fit the model, an output folder that exists ...) ends in one line on stderr and exit code 2; ``--debug``
(anywhere on the command line) or ``LIPZOO_DEBUG=1`` shows the full traceback instead.
"""
from __future__ import annotations

import argparse
import sys

from . import certify, core, hub, train

__all__ = ["build_parser", "main"]

_GROUPS = (core, certify, train, hub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipzoo", description="Certifiably robust 1-Lipschitz CNNs: zoo, hub, certifier")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (anywhere on the command line; also LIPZOO_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lipzoo ARGV`` (default ``sys.argv[1:]``) and return its exit code."""
    from .._errors import EXIT_USER_ERROR, debug_requested, run_reporting_user_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]  # accepted before or after the subcommand
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    return run_reporting_user_errors(f"lipzoo {args.command}", lambda: args.func(args), debug=debug)
