"""The ``lipzoo`` console command. Subcommands live in ``lipzoo/_cli/<group>.py`` (``register(subparsers)``)."""
from __future__ import annotations

import argparse
import importlib
import sys

_GROUPS = ("core", "certify", "train", "hub")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lipzoo", description="Certifiably robust 1-Lipschitz CNNs: zoo, hub, certifier")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in _GROUPS:
        try:
            module = importlib.import_module(f"lipzoo._cli.{group}")
        except ModuleNotFoundError as e:
            if e.name != f"lipzoo._cli.{group}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
