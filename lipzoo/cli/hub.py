"""``lipzoo hub serve`` and ``lipzoo publish``."""
from __future__ import annotations

import argparse
import os
import sys


def _serve(args: argparse.Namespace) -> int:
    from ..hub.server import ServeError, serve

    try:
        serve(args.root, args.port, allow_writes=args.allow_writes)
    except (FileNotFoundError, ModuleNotFoundError, ServeError) as e:
        hint = " (install the hub extra: pip install 'lipzoo[hub]')" if isinstance(e, ModuleNotFoundError) else ""
        print(f"lipzoo hub serve: {e}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT or SIGTERM: the server has cleaned up
        pass
    return 0


def _publish(args: argparse.Namespace) -> int:
    from ..hub.publish import PublishError, publish

    if (args.checkpoint is None) != args.card_only:
        print("lipzoo publish: pass a CHECKPOINT to certify and publish, or --card-only (without one) to rewrite the "
              "card and config.json of published weights", file=sys.stderr)
        return 2
    try:
        if args.card_only:
            from ..hub.republish import republish_card
            from ..models._registry import resolve_name

            result = republish_card(f"{resolve_name(args.arch)}.{args.tag}", repo_url=args.repo_url,
                                    hardware=args.hardware, run_dir=args.results, hub=args.hub_dir,
                                    endpoint=args.endpoint, upload=not args.no_upload)
        else:
            result = publish(args.checkpoint, args.arch, args.tag, repo_id=args.repo_id, endpoint=args.endpoint,
                             results=args.results, hub=args.hub_dir, quick=args.quick, quick_n=args.quick_n,
                             data_root=args.data, batch_size=args.batch_size, upload=not args.no_upload,
                             repo_url=args.repo_url, hardware=args.hardware,
                             attack=False if args.no_attack else None, attack_n=args.attack_n)
    except (PublishError, ValueError, FileNotFoundError) as e:
        print(f"lipzoo publish: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    from ..hub.server import DEFAULT_PORT, TOKEN_ENV  # no torch: the parser stays cheap

    parser.add_argument("--port", type=int, default=int(os.environ.get("LIPZOO_HUB_PORT", DEFAULT_PORT)),
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}, or $LIPZOO_HUB_PORT)")
    parser.add_argument("--root", default=None, help="the hub folder to serve (default: $LIPZOO_HUB_DIR or the project's hub/)")
    parser.add_argument("--allow-writes", action="store_true",
                        help=f"accept uploads (lipzoo publish, HfApi) carrying the write token (${TOKEN_ENV}, else a "
                             "random one in ~/.cache/lipzoo/hub-server/PORT.token); default: read-only")


def register(sub) -> None:
    hub = sub.add_parser("hub", help="the local Hugging Face hub (serves hub/ on 127.0.0.1)")
    hub_sub = hub.add_subparsers(dest="hub_command", metavar="COMMAND")
    serve = hub_sub.add_parser("serve", help="serve every repo under hub/ on 127.0.0.1 (olah + upload routes)",
                               description="Serve hub/ as a Hugging Face hub on 127.0.0.1 until Ctrl-C/SIGTERM. "
                                           "Then: export HF_ENDPOINT=http://127.0.0.1:PORT. Read-only unless "
                                           "--allow-writes (then uploads need the hub's token; lipzoo publish "
                                           "finds it).")
    _add_serve_arguments(serve)
    serve.set_defaults(func=_serve)
    hub.set_defaults(func=lambda args: _usage(hub))  # `lipzoo hub` alone: its help, exit code 2

    p = sub.add_parser("publish", help="certify a checkpoint on the test set and publish it as lipzoo/ARCH.TAG",
                       description="Certify CHECKPOINT on the full test set, write hub/<org>/<name>/ (model.safetensors, "
                                   "config.json, README.md model card, certified_accuracy.png), upload it to the hub "
                                   "(HF_ENDPOINT, the Hugging Face Hub when a token is set, else the local hub) when "
                                   "reachable, and record it in published.json.")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="model.safetensors, a training run directory, or a lipzoo checkpoint file")
    p.add_argument("--arch", required=True, help="architecture, e.g. sll_xs")
    p.add_argument("--tag", required=True, help="weights tag: <dataset>[_<recipe>], e.g. cifar10")
    p.add_argument("--repo-id", default=None, help="hub repo (default lipzoo/ARCH.TAG)")
    p.add_argument("--endpoint", default=None, help="hub URL to upload to (default: $HF_ENDPOINT, see above)")
    p.add_argument("--results", default=None, help="the training run's results.json (default: next to the checkpoint)")
    p.add_argument("--hub-dir", default=None, help="hub folder (default: $LIPZOO_HUB_DIR or the project's hub/)")
    p.add_argument("--data", default=None, help="dataset root (default: LIPZOO_DATA, ../shared/data, download)")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--no-upload", action="store_true", help="write hub/ and published.json only")
    p.add_argument("--quick", action="store_true",
                   help="certify only lipzoo.verify's quick subset of 1000 test images (tests only)")
    p.add_argument("--quick-n", type=int, default=None, help="with --quick: the first N test images instead")
    p.add_argument("--repo-url", default=None,
                   help="the code's repository shown on the card (default: [project.urls] Repository of pyproject.toml)")
    p.add_argument("--hardware", default=None,
                   help="what the run was trained on, for the card (default: what the run's results.json records)")
    p.add_argument("--no-attack", action="store_true",
                   help="skip AutoAttack (l2, standard, on the first --attack-n test images; run by default except "
                        "with --quick; slow on a CPU); publishing refuses a model the attack breaks where certified")
    p.add_argument("--attack-n", type=int, default=None, metavar="N", help="images for AutoAttack (default 1000)")
    p.add_argument("--card-only", action="store_true",
                   help="no CHECKPOINT: rewrite the card and config.json of the published ARCH.TAG as a new revision, "
                        "weights and claims unchanged (checked against published.json); --results then names the "
                        "run folder with log.jsonl/results.json (default results/runs/ARCH.TAG)")
    p.set_defaults(func=_publish)
