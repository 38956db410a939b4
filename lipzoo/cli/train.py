"""``lipzoo train``: the command line of the training loop (``scripts/train.py`` is a wrapper of it).

Every recipe field is an option (``--epochs``, ``--lr``, ``--batch-size`` ...) overriding the named recipe.
Distributed: ``torchrun --nproc_per_node=N -m lipzoo train --recipe ... --out ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..train.recipes import RECIPES, Recipe, get_recipe

__all__ = ["RecipeHelpFormatter", "add_train_arguments", "recipe_from_args", "check_out_dir", "run_from_args", "register"]


def _parse_value(field: dataclasses.Field, text: str):
    hint = str(field.type)
    if "dict" in hint:
        return json.loads(text)
    if "tuple" in hint:
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
        return tuple(float(p) if any(c in p for c in ".e") else (int(p) if p.strip().lstrip("-").isdigit() else p.strip()) for p in parts)
    if "bool" in hint:
        return text.lower() in ("1", "true", "yes")
    if "int" in hint and "float" not in hint:
        return int(text)
    if "float" in hint:
        return float(text)
    return text


class RecipeHelpFormatter(argparse.HelpFormatter):
    """Lists the declared recipes in ``--recipe``'s help only when the help is printed (reading the declarations
    imports the models, which building the parser must not)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.dest == "recipe" and action.help:
            return f"{action.help}: {', '.join(sorted(RECIPES))}"
        return action.help


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lipzoo train`` (pass ``formatter_class=RecipeHelpFormatter`` to ``p`` to list the recipes
    in ``--help``)."""
    p.add_argument("--recipe", default="sll_cpu", help="named recipe")
    p.add_argument("--out", required=True, help="run directory (checkpoint.pt, log.jsonl, model.safetensors, results.json)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly where it stopped")
    p.add_argument("--data", default=None, help="CIFAR root (default: LIPZOO_DATA, ../shared/data, download)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--no-fast", action="store_true", help="fp32 NCHW instead of channels_last + autocast "
                   "(the same as --fast false)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total (resume later)")
    p.add_argument("--no-eval", action="store_true", help="skip the final certification on the test set")
    p.add_argument("--train-subset", type=int, default=None, metavar="N",
                   help="train on the first N training images (smoke tests, scripts/gpu_check.py)")
    p.add_argument("--eval-subset", type=int, default=None, metavar="N",
                   help="final certification on the first N test images (smoke tests; not a claims record)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--initial-checkpoint", default=None, metavar="FILE",
                   help="start from these weights of the recipe's model (e.g. hub/lipzoo/<arch>.<tag>/"
                   "model.safetensors) instead of random ones; optimizer and schedule start afresh")
    for f in dataclasses.fields(Recipe):
        if f.name == "name":
            continue
        p.add_argument("--" + f.name.replace("_", "-"), dest="ovr_" + f.name, default=None, metavar="VALUE",
                       help=f"override recipe.{f.name}")


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    from .._errors import LipzooUserError

    try:
        recipe = get_recipe(args.recipe)
    except KeyError as e:
        raise LipzooUserError(f"unknown recipe {args.recipe!r}: pass --recipe with one of "
                              f"{', '.join(sorted(RECIPES))}") from e
    overrides = {}
    for f in dataclasses.fields(Recipe):
        value = getattr(args, "ovr_" + f.name, None)
        if value is not None:
            try:
                overrides[f.name] = _parse_value(f, value)
            except ValueError as e:
                raise LipzooUserError(f"--{f.name.replace('_', '-')} {value!r}: not a valid {f.type} ({e})") from e
    if getattr(args, "no_fast", False):
        overrides["fast"] = False
    return recipe.replace(**overrides) if overrides else recipe


def check_out_dir(out: str, resume: bool) -> None:
    """Refuse, before any data or model is loaded, to start a new run in a folder that holds one."""
    from .._errors import LipzooUserError

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise LipzooUserError(f"--out {out} is a file: pass a folder for the run")
    if not resume and (out_dir / "checkpoint.pt").exists():
        raise LipzooUserError(f"--out {out} holds a training run (checkpoint.pt): add --resume to continue it, "
                              "or pass a new --out folder")


def run_from_args(args: argparse.Namespace) -> int:
    from .._errors import LipzooUserError

    recipe = recipe_from_args(args)
    check_out_dir(args.out, args.resume)
    if args.initial_checkpoint is not None and not Path(args.initial_checkpoint).is_file():
        raise LipzooUserError(f"--initial-checkpoint {args.initial_checkpoint} is not a file: pass a lipzoo weights "
                              f"file of {recipe.model} (e.g. hub/lipzoo/{recipe.model}.cifar10/model.safetensors)")
    from ..train.loop import train

    result = train(recipe, args.out, resume=args.resume, data_root=args.data, device=args.device,
                   max_steps=args.max_steps, evaluate=not args.no_eval,
                   progress=not args.no_progress, train_subset=args.train_subset, eval_subset=args.eval_subset,
                   initial_checkpoint=args.initial_checkpoint)
    print(json.dumps(result, indent=2, default=str))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model with a named recipe (resumable; torchrun for DDP)",
                       formatter_class=RecipeHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(func=run_from_args)
