"""torch.hub entry points: one per lipzoo architecture.

    model = torch.hub.load('<repo or local dir>', 'sll_xs', pretrained=True)            # GitHub / source='local'

Each entry point is ``lipzoo.create_model(<arch>, pretrained=pretrained, **kwargs)``: pretrained weights are
downloaded through huggingface_hub, sha256-checked and verified on first download.
"""
dependencies = ["torch", "timm", "safetensors", "huggingface_hub"]

import lipzoo as _lipzoo  # noqa: E402


def _entry_point(arch: str):
    def entry(pretrained: bool = False, **kwargs):
        return _lipzoo.create_model(arch, pretrained=pretrained, **kwargs)

    info = _lipzoo.models.ARCHS[arch]
    entry.__name__ = entry.__qualname__ = arch
    entry.__doc__ = (
        f"{arch} ({info.family}; {info.paper}). {info.description}\n\n"
        "Args:\n    pretrained: load the published CIFAR-10 weights (verified on first download).\n"
        "    **kwargs: model arguments, e.g. num_classes=100; verify='full'|'quick'|False; revision=...\n"
    )
    return entry


for _arch in _lipzoo.list_models():
    globals()[_arch] = _entry_point(_arch)
