"""``lipzoo list``, ``lipzoo info NAME``, ``lipzoo run``."""
from __future__ import annotations


def _list(args) -> int:
    import lipzoo

    published = set(lipzoo.list_pretrained())
    for name in lipzoo.list_models(args.pattern):
        info = lipzoo.models.ARCHS[name]
        tags = sorted(p for p in published if p.split(".")[0] == name)
        print(f"{name:22s} {info.family:9s} {'weights: ' + ', '.join(tags) if tags else ''}")
    return 0


def _info(args) -> int:
    import lipzoo

    from .paper import print_reported

    info = lipzoo.model_info(args.name, num_classes=args.num_classes)
    print_reported(args.name, info, args.json)  # the info, then the rows papers report for the architecture
    return 0


def _run(args) -> int:
    from .run import main_job

    return main_job(n=args.n, data_root=args.data)


def register(sub) -> None:
    p = sub.add_parser("list", help="list registered architectures and their published weights")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=_list)
    p = sub.add_parser("info", help="family, paper, parameter count, head rule, published tags of an architecture")
    p.add_argument("name")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)
    p = sub.add_parser("run", help="the main job (make run): hub, download, verify, claims vs measured")
    p.add_argument("--n", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--data", default=None)
    p.set_defaults(func=_run)
