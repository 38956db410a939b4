"""``lipzoo train``."""
from __future__ import annotations


def register(sub) -> None:
    from ..train.cli import add_train_arguments, run_from_args

    p = sub.add_parser("train", help="train a model with a named recipe (resumable; torchrun for DDP)")
    add_train_arguments(p)
    p.set_defaults(func=run_from_args)
