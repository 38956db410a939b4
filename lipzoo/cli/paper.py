"""``lipzoo verify ARCH --checkpoint FILE --checkpoint-format FMT --against paper[:ROW]``: an authors' checkpoint
against the numbers its paper printed (``lipzoo/reported.json``, :mod:`lipzoo.reported`), and the reported rows
``lipzoo info ARCH`` shows."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``lipzoo verify`` that compare with a paper's reported row."""
    p.add_argument("--against", default=None, metavar="paper[:ROW]",
                   help="compare with the paper's reported numbers instead of claims: 'paper' (the row reported for "
                        "MODEL on --dataset, default cifar10), 'paper:ROW' (a row id, see `lipzoo info MODEL`) or "
                        "FILE.json[:ROW] (rows in lipzoo/reported.json's format)")
    p.add_argument("--tolerance", type=float, default=None, metavar="PP",
                   help="with --against: 'reproduced' within this many percentage points (default 0.5)")
    p.add_argument("--n", type=int, default=None,
                   help="with --against: only the first N test images -- a smoke test, NOT a reproduction")
    p.add_argument("--model-args", default=None, metavar="JSON",
                   help="with --against: architecture arguments as JSON, e.g. '{\"version\": \"improved\"}'")


def verify_against_paper(args: argparse.Namespace) -> int:
    from lipzoo.data import NUM_CLASSES
    from lipzoo.reported import DEFAULT_TOLERANCE_PP, resolve_against, verify_against

    from .._errors import LipzooUserError
    from .certify import _dtype, _load_model, _setup, _weights_source

    if args.claims or args.quick:
        raise LipzooUserError("--against compares with a paper's reported row: drop --claims / --quick")
    _weights_source(args)  # a model without a stated source of weights is refused before anything loads
    try:
        model_args = json.loads(args.model_args) if args.model_args else {}
    except ValueError as e:
        raise LipzooUserError(f"--model-args is not JSON ({e})") from e
    if not isinstance(model_args, dict):
        raise LipzooUserError("--model-args must be a JSON object, e.g. '{\"width\": 8}'")
    if args.n is not None and args.n <= 0:
        raise LipzooUserError(f"--n must be positive, got {args.n}")
    row = resolve_against(args.against, args.model, args.dataset)  # an unknown row fails before anything loads
    dataset = row["dataset"]
    if dataset not in NUM_CLASSES:
        raise LipzooUserError(f"reported row {row['id']} is on {dataset}, which lipzoo cannot load "
                              f"({', '.join(sorted(NUM_CLASSES))})")
    _setup(args)
    model = _load_model(args, dataset, verify_download=False, model_args=model_args)
    tol = DEFAULT_TOLERANCE_PP if args.tolerance is None else args.tolerance
    cmp = verify_against(model, row, n=args.n, root=args.data, tolerance_pp=tol, batch_size=args.batch_size,
                         dtype=_dtype(args), progress=not args.quiet, name=args.model)
    cmp.checkpoint, cmp.checkpoint_format = args.checkpoint, args.checkpoint_format
    print(cmp.to_text())
    if args.json:
        cmp.to_json(args.json)
        print(f"wrote {args.json}")
    return 0 if cmp.verdict in ("reproduced", "better") else 1


def refuse_without_against(args: argparse.Namespace) -> None:
    """``--n``, ``--tolerance`` and ``--model-args`` only go with ``--against``: never ignored silently."""
    from .._errors import LipzooUserError

    given = [o for o, v in (("--n", args.n), ("--tolerance", args.tolerance), ("--model-args", args.model_args))
             if v is not None]
    if given:
        raise LipzooUserError(f"{', '.join(given)} only go with --against paper[:ROW]")


def print_reported(name: str, info: dict, as_json: bool) -> None:
    """``lipzoo info``: the model info and, after it, the rows papers report for the architecture."""
    from lipzoo.reported import format_row, rows_for

    rows = rows_for(name)
    if as_json:
        print(json.dumps({**info, "reported": rows}, indent=2, default=str))
        return
    for k, v in info.items():
        print(f"{k:24s} {v}")
    if not rows:
        print(f"{'reported':24s} no paper reports a number for this architecture in lipzoo/reported.json")
        return
    print(f"{'reported':24s} (percent; compare a checkpoint with `lipzoo verify ARCH --checkpoint FILE "
          "--checkpoint-format FMT --against paper:ROW`)")
    for r in rows:
        print(f"{'':24s} {format_row(r)}")
