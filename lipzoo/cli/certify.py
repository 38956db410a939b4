"""``lipzoo certify``, ``lipzoo audit`` and ``lipzoo verify``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_model_args(p: argparse.ArgumentParser, random_init: bool = True) -> None:
    from ..convert import CHECKPOINT_FORMATS  # read from the registry on use: the parser stays cheap (no torch)

    p.add_argument("model", help="architecture (sll_xs) or published weights (sll_xs.cifar10)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", default=None, help="a local checkpoint (.safetensors, or --checkpoint-format)")
    src.add_argument("--pretrained", action="store_true", help="download the published weights")
    if random_init:
        src.add_argument("--random-init", action="store_true",
                         help="use randomly initialised weights on purpose (otherwise a model without --pretrained "
                              "or --checkpoint is refused)")
    p.add_argument("--checkpoint-format", default=None, choices=CHECKPOINT_FORMATS, metavar="FORMAT",
                   help="the authors' format of --checkpoint, as the families declare them: %(choices)s (default: a "
                        "lipzoo .safetensors state dict)")
    p.add_argument("--dataset", choices=("cifar10", "cifar100"), default=None,
                   help="default: from the claims (verify), else cifar10")
    p.add_argument("--data", default=None, help="dataset root (default: LIPZOO_DATA, ../shared/data, download)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--dtype", choices=("float32", "float64"), default=None)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu); "
                   "images are moved batch by batch")


def _weights_source(args: argparse.Namespace) -> str:
    """``'pretrained'``, ``'checkpoint'`` or ``'random'``; refuses a model without a stated source of weights, and
    checks the combination of options before anything slow is loaded."""
    from .._errors import LipzooUserError

    tagged = "." in args.model
    if args.checkpoint_format and not args.checkpoint:
        raise LipzooUserError(f"--checkpoint-format {args.checkpoint_format} needs --checkpoint FILE")
    if args.checkpoint:
        return "checkpoint"
    if getattr(args, "random_init", False):
        if tagged:
            raise LipzooUserError(f"--random-init with {args.model}, the name of published weights: pass the "
                                  f"architecture ({args.model.split('.')[0]}) for random weights")
        return "random"
    if args.pretrained or tagged:
        return "pretrained"
    ways = ["--pretrained (the published weights)", "--checkpoint FILE"]
    if hasattr(args, "random_init"):
        ways.append("--random-init (untrained weights, on purpose)")
    raise LipzooUserError(f"{args.model} has no weights to {args.command}: pass {', '.join(ways[:-1])} or {ways[-1]}")


def _load_model(args: argparse.Namespace, dataset: str, verify_download: bool = True,
                model_args: dict | None = None):
    """The model of ``args`` (published weights, a checkpoint or random weights) on ``--device``, in eval mode;
    ``model_args`` are architecture arguments (they may override ``num_classes`` and ``verify``)."""
    import lipzoo
    from lipzoo.data import NUM_CLASSES

    # 'arch.tag' names published weights: download them unless a local checkpoint is given
    pretrained = _weights_source(args) == "pretrained"
    kwargs = {"verify": verify_download} if pretrained else {"num_classes": NUM_CLASSES[dataset]}
    kwargs.update(model_args or {})
    model = lipzoo.create_model(args.model, pretrained=pretrained, checkpoint_path=args.checkpoint,
                                checkpoint_format=args.checkpoint_format, **kwargs)
    return model.to(_device(args)).eval()


def _device(args: argparse.Namespace):
    """``--device``, checked: a typo or a GPU that is not there is one line, not a traceback."""
    import torch

    from .._errors import LipzooUserError

    if not args.device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise LipzooUserError(f"--device {args.device} is not a device ({e}); use cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LipzooUserError(f"--device {args.device}: no CUDA device is available here; use --device cpu")
    return device


def _setup(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def _dtype(args: argparse.Namespace, default: str = "float32"):
    import torch

    return getattr(torch, args.dtype or default)


def _images(args: argparse.Namespace, dataset: str):
    from lipzoo.data import CIFAR

    ds = CIFAR(dataset, args.split, root=args.data)
    x, y = ds.tensors()
    if args.n is not None:
        x, y = x[: args.n], y[: args.n]
    return x, y


# --------------------------------------------------------------------------------------------- certify
def _certify(args: argparse.Namespace) -> int:
    from lipzoo.certification import DEFAULT_EPS, certify, parse_eps, plot_certified_accuracy

    _weights_source(args)
    eps = tuple(parse_eps(e) for e in args.eps) if args.eps else DEFAULT_EPS  # a bad --eps fails before the model loads
    _setup(args)
    dataset = args.dataset or "cifar10"
    model = _load_model(args, dataset)
    x, y = _images(args, dataset)
    result = certify(model, x, y, eps=eps, batch_size=args.batch_size, dtype=_dtype(args), progress=not args.quiet)
    subset = "full" if args.n is None else f"first_{len(y)}"
    claims = result.to_claims(dataset=dataset, split=args.split, subset=subset)
    print(f"{args.model} on {dataset}/{args.split} ({subset}, n={result.n})")
    print(result.summary())
    if args.json:
        out = dict(claims)
        out["model"] = args.model
        out["checkpoint"] = args.checkpoint
        out["seconds"] = round(result.seconds, 2)
        if args.radii:
            out["radii"] = result.radii.tolist()
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        plot_certified_accuracy(result, args.plot, title=f"{args.model}: {dataset} {args.split}, n={result.n}")
        print(f"wrote {args.plot}")
    return 0


# ----------------------------------------------------------------------------------------------- audit
def _audit(args: argparse.Namespace) -> int:
    from lipzoo.auditing import audit

    _weights_source(args)
    _setup(args)
    dataset = args.dataset or "cifar10"
    model = _load_model(args, dataset)
    x, y = _images(args, dataset)
    report = audit(model, x, y, n_probe=args.n_probe, power_iters=args.power_iters, pgd_steps=args.pgd_steps,
                   restarts=args.restarts, n_attack=args.n_attack, pair_steps=args.pair_steps, deep=args.deep,
                   dtype=_dtype(args), progress=True)
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0 if report.ok else 1


# ---------------------------------------------------------------------------------------------- verify
def _read_claims(path: str) -> dict:
    """A claims record from ``path``: claims.json, a results.json holding ``claims``, or a published config.json
    (its ``lipzoo.claims``)."""
    from .._errors import LipzooUserError
    from ..verification import load_claims

    text = Path(path).read_text()
    try:
        record = json.loads(text)
    except ValueError as e:
        raise LipzooUserError(f"--claims {path} is not a JSON file ({e})") from e
    if isinstance(record, dict) and isinstance(record.get("lipzoo"), dict) and isinstance(record["lipzoo"].get("claims"), dict):
        record = record["lipzoo"]["claims"]  # a hub config.json
    try:
        return load_claims(record)
    except ValueError as e:
        raise LipzooUserError(f"--claims {path}: {e}; pass a claims.json, a results.json or a published config.json") from e


def _published_claims(args: argparse.Namespace) -> dict:
    """The claims published with the weights ``args.model`` names (``arch.tag``, or ``arch --pretrained``)."""
    from .. import _manifest
    from .._errors import LipzooUserError
    from ..models._registry import pretrained_name, resolve_name

    if args.checkpoint:
        raise LipzooUserError("verify --checkpoint needs --claims (claims.json, results.json or config.json): "
                              "a local checkpoint has no published claims")
    name = pretrained_name(resolve_name(args.model))
    claims = _manifest.read().get(name, {}).get("claims")
    if not claims:
        raise LipzooUserError(f"no claims are published for {name}: pass --claims")
    return dict(claims)


def _verify(args: argparse.Namespace) -> int:
    from lipzoo.verification import verify

    from .paper import refuse_without_against, verify_against_paper

    if args.against:
        return verify_against_paper(args)
    refuse_without_against(args)
    _weights_source(args)
    if args.attack:
        from ..attack import require_torchattacks

        require_torchattacks()  # before the long verification
    claims = _read_claims(args.claims) if args.claims else _published_claims(args)
    _setup(args)
    dataset = args.dataset or claims.get("dataset", "cifar10")
    if dataset != claims.get("dataset", dataset):
        print(f"lipzoo verify: --dataset {dataset} but the claims are for {claims.get('dataset')}", file=sys.stderr)
        return 2
    model = _load_model(args, dataset, verify_download=False)
    dtype = _dtype(args, claims.get("dtype", "float32")) if args.dtype else None
    report = verify(model, claims, mode="quick" if args.quick else "full", root=args.data,
                    batch_size=args.batch_size, dtype=dtype, progress=not args.quiet, name=args.model)
    print(report.to_markdown())
    if args.json:
        report.to_json(args.json)
        print(f"wrote {args.json}")
    rc = 0 if report.passed else 1
    return max(rc, _attack(args, model, dataset)) if args.attack else rc


def _attack(args: argparse.Namespace, model, dataset: str) -> int:
    """``verify --attack``: AutoAttack beside the certificate on the first ``--attack-n`` test images; 1 when a
    certified image is broken (certified <= robust <= clean fails)."""
    from ..attack import DEFAULT_ATTACK_EPS, attack_dataset
    from ..certification import parse_eps

    eps = [parse_eps(e) for e in args.attack_eps] if args.attack_eps else DEFAULT_ATTACK_EPS
    record = attack_dataset(model, dataset, args.attack_n, eps, root=args.data, progress=not args.quiet)
    print(f"\nAutoAttack ({record['version']}, L2, torchattacks {record['torchattacks_version']}) on the first "
          f"{record['n']} {dataset} test images: clean {100 * record['clean_accuracy']:.2f}%")
    print(f"{'eps':>10}  {'certified':>9}  {'robust':>8}  {'broken':>6}  time")
    for key, robust in record["robust_accuracy"].items():
        print(f"{key:>10}  {100 * record['certified_accuracy'][key]:8.2f}%  {100 * robust:7.2f}%  "
              f"{record['broken'][key]:>6}  {record['seconds'][key]:.0f} s")
    print("certified <= robust <= clean: " + ("PASSED" if record["passed"] else "FAILED (a broken certificate)"))
    if args.attack_json:
        Path(args.attack_json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.attack_json}")
    return 0 if record["passed"] else 1


def register(sub) -> None:
    p = sub.add_parser("certify", help="certified accuracy of a model on a CIFAR test set (table, JSON, plot)",
                       description="Certify MODEL with the shared certifier: clean and certified accuracy at each eps, "
                                   "the claims record as JSON (--json) and the certified-accuracy curve (--plot).")
    _add_model_args(p)
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--n", type=int, default=None, help="only the first N images (claims subset 'first_N')")
    p.add_argument("--eps", nargs="+", default=None, help="radii, e.g. 36/255 72/255 0.5 (default 36,72,108,255 /255)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the claims record (and --radii) to OUT")
    p.add_argument("--radii", action="store_true", help="include the per-sample radii in --json")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="plot certified accuracy vs eps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_certify)

    p = sub.add_parser("audit", help="independent checks: per-layer power iteration, Lipschitz ratio search, PGD "
                                     "inside certified radii; exit code 1 if a claim is refuted")
    _add_model_args(p)
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--n", type=int, default=512, help="test images used (default 512)")
    p.add_argument("--n-probe", type=int, default=16)
    p.add_argument("--power-iters", type=int, default=30)
    p.add_argument("--pgd-steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--n-attack", type=int, default=128)
    p.add_argument("--pair-steps", type=int, default=50)
    p.add_argument("--deep", action="store_true", help="also check every nested module that states a bound")
    p.add_argument("--json", default=None, metavar="OUT")
    p.set_defaults(func=_audit)

    p = sub.add_parser("verify", help="re-certify and compare with a claims record (results.json, claims.json); "
                                      "exit code 1 if a claim fails")
    _add_model_args(p, random_init=False)
    p.add_argument("--claims", default=None,
                   help="claims.json, a results.json holding 'claims', or a published config.json (default: the "
                        "claims published with the weights MODEL names)")
    p.add_argument("--quick", action="store_true",
                   help="1000-image stratified subset, 99.9%% Clopper-Pearson test (default: full split, 0.1 pp)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the verification report")
    from .paper import add_arguments

    add_arguments(p)  # --against paper[:ROW], --tolerance, --n, --model-args
    p.add_argument("--attack", action="store_true",
                   help="also run AutoAttack (l2, standard set; pip install 'lipzoo[attack]') on the first --attack-n "
                        "test images and check certified <= robust <= clean there (slow on a CPU: see "
                        "results/autoattack/README.md); exit code 1 on a broken certificate")
    p.add_argument("--attack-n", type=int, default=1000, metavar="N", help="images for --attack (default %(default)s)")
    p.add_argument("--attack-eps", nargs="+", default=None, metavar="EPS",
                   help="radii for --attack (default 36/255 0.5, RobustBench's l2 threat model)")
    p.add_argument("--attack-json", default=None, metavar="OUT", help="write the --attack record to OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_verify)
