"""SOC repos -> lipzoo: singlasahil14/SOC (ICML'21 + ICLR'22; fixture family ``"soc"``, checkpoint_format
``"soc"``) and singlasahil14/improved_l2_robustness (NeurIPS'22; family ``"improved"``, format ``"soc-improved"``).

Key maps (authors -> lipzoo):

* SOC layer: ``random_conv_filter`` (ICML'21) / ``weight`` (improved) -> ``weight``; ``u1..v4`` / ``_u1.._v4``
  -> ``u1..v4``; ``correction`` kept (the improved layer has none: its multiplier 1.0 is taken from the model).
* ICML'21 ``LipConvNet``: ``layer{s}.{j}.conv`` -> ``features.{s-1}.{j}.conv``, ``layer{s}.{j}.activation``
  -> ``features.{s-1}.{j}.act``, ``last_layer`` -> ``head.conv`` (SOC) or ``head`` (``NormalizedLinear``). The
  authors normalise in the data pipeline: a converted *checkpoint* gets the model's own normaliser (same
  mean/std), while :func:`from_reference` builds the module with an identity normaliser (it takes the same
  pre-normalised inputs as the authors' module).
* improved ``LipConvNet``: ``shift``/``scale`` -> ``normalize.mean``/``std``; ``init_layer`` -> ``features.0.0``;
  ``block{i}.{j}`` -> ``features.{i}.{j}``; ``ortho`` -> ``conv``; ``logits_layer.ortho`` -> ``head.conv``,
  ``logits_layer.linear1/2`` -> ``head.fc1/2``.

ICML'21 power iterations are normalised in float64 here (``float32_norm=False``): the authors' float32 norm
makes the last bits of the vectors depend on the float32 summation order of the machine, so emulating it does
not reproduce another machine's train-mode state any better (see :class:`~lipzoo.layers.soc.SOCConv2d`).
"""
from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from ..layers.activations import HouseHolder, HouseHolder2, LipPool, MaxMin, PairMaxPool
from ..layers.heads import LLN, MLPHead
from ..layers.soc import SOCConv2d, SOCHead
from ..models.soc import SOCLipConvNet
from . import ConversionError

__all__ = ["from_reference", "convert_state_dict"]

_SOC_TENSOR = {"random_conv_filter": "weight", "weight": "weight", "bias": "bias", "correction": "correction",
               **{f"{p}{i}": f"{p}{i}" for p in "uv" for i in range(1, 5)},
               **{f"_{p}{i}": f"{p}{i}" for p in "uv" for i in range(1, 5)}}
_MLP_TENSOR = {"linear1.weight": "fc1.weight", "linear1.bias": "fc1.bias", "linear2.weight": "fc2.weight",
               "linear2.bias": "fc2.bias", "_u": "_u", "_v": "_v"}


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v
    return out


def _soc_key(name: str) -> str:
    if name not in _SOC_TENSOR:
        raise ConversionError(f"unknown SOC tensor {name!r}")
    return _SOC_TENSOR[name]


def _map_soc_repo(key: str, soc_head: bool) -> str:
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv|activation)\.(.+)", key)
    if m:
        s, j, part, name = m.groups()
        prefix = f"features.{int(s) - 1}.{j}"
        return f"{prefix}.conv.{_soc_key(name)}" if part == "conv" else f"{prefix}.act.{name}"
    if key.startswith("last_layer."):
        name = key[len("last_layer."):]
        return f"head.conv.{_soc_key(name)}" if soc_head else f"head.{name}"
    raise ConversionError(f"unexpected key {key!r} in a singlasahil14/SOC LipConvNet checkpoint")


def _map_improved(key: str) -> str:
    if key == "shift":
        return "normalize.mean"
    if key == "scale":
        return "normalize.std"
    m = re.fullmatch(r"(init_layer|block(\d+)\.(\d+))\.(ortho|act)\.(.+)", key)
    if m:
        _, blk, j, part, name = m.groups()
        prefix = "features.0.0" if blk is None else f"features.{blk}.{j}"
        return f"{prefix}.conv.{_soc_key(name)}" if part == "ortho" else f"{prefix}.act.{name}"
    m = re.fullmatch(r"logits_layer\.(.+)", key)
    if m:
        name = m.group(1)
        if name.startswith("ortho."):
            return f"head.conv.{_soc_key(name[len('ortho.'):])}"
        if name in _MLP_TENSOR:
            return f"head.{_MLP_TENSOR[name]}"
        if name in ("weight", "bias"):
            return f"head.{name}"
    raise ConversionError(f"unexpected key {key!r} in a singlasahil14/improved_l2_robustness LipConvNet checkpoint")


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """Authors' LipConvNet state dict -> ``model``'s state dict (``fmt`` = ``"soc"`` or ``"soc-improved"``).

    ``module.`` prefixes (DataParallel) are stripped. Tensors the authors' checkpoint lacks but ``model`` has
    (the normaliser of an ICML'21 model, the improved SOC layers' ``correction`` = 1) are taken from ``model``.
    """
    if fmt not in ("soc", "soc-improved"):
        raise ConversionError(f"_soc converts checkpoint formats 'soc' and 'soc-improved', not {fmt!r}")
    soc_head = isinstance(getattr(model, "head", None), SOCHead)
    mapper: Callable[[str], str] = (lambda k: _map_soc_repo(k, soc_head)) if fmt == "soc" else _map_improved
    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in _strip_module(state).items():
        new = mapper(key)
        if new not in target:
            raise ConversionError(f"{key!r} -> {new!r} has no counterpart in {type(model).__name__}")
        out[new] = value.reshape(target[new].shape) if new.startswith("normalize.") else value
    for key, value in target.items():
        if key not in out and (key.startswith("normalize.") or key.endswith(".correction")):
            out[key] = value.clone()
    return out


# --- fixtures / reference modules ------------------------------------------------------------------------------

def _bind(spec: dict[str, Any], names: list[str], defaults: dict[str, Any]) -> dict[str, Any]:
    ctor = spec.get("constructor", {})
    args, kwargs = list(ctor.get("args", [])), dict(ctor.get("kwargs", {}))
    bound = dict(defaults)
    bound.update(zip(names, args))
    unknown = set(kwargs) - set(names) - set(defaults)
    if unknown:
        raise ConversionError(f"unexpected constructor arguments {sorted(unknown)} for {spec.get('class')}")
    bound.update(kwargs)
    return bound


def _soc_layer_args(a: dict[str, Any], improved: bool) -> dict[str, Any]:
    """The authors' SOC constructor arguments -> :class:`SOCConv2d` arguments."""
    if improved:
        return dict(version="improved", train_order=a["train_terms"] - 1, eval_order=a["eval_terms"] - 1,
                    correction=a["multiplier"], init_iters=a["init_iters"], update_iters=a["update_iters"],
                    update_freq=0, bias=a["bias"])
    return dict(version="icml21", train_order=a["train_terms"], eval_order=a["eval_terms"], correction=a["correction"],
                init_iters=a["init_iters"], update_iters=a["update_iters"], update_freq=a["update_freq"],
                bias=a["bias"])


_SOC_ICML_DEFAULTS = dict(kernel_size=3, stride=1, padding=None, bias=True, train_terms=5, eval_terms=12, init_iters=50,
                          update_iters=1, update_freq=200, correction=0.7)
_SOC_IMPROVED_DEFAULTS = dict(stride=1, padding=None, bias=True, train_terms=6, eval_terms=15, init_iters=50,
                              update_iters=1, multiplier=1.0, fast_train=True)


def _build_soc(spec: dict[str, Any], improved: bool) -> tuple[nn.Module, Callable[[str], str]]:
    defaults = _SOC_IMPROVED_DEFAULTS if improved else _SOC_ICML_DEFAULTS
    a = _bind(spec, ["in_channels", "out_channels", "kernel_size", "stride", "padding"], defaults)
    k = a["kernel_size"]
    if a["padding"] not in (None, k // 2):
        raise ConversionError(f"SOC with padding {a['padding']} != kernel_size // 2 is not a skew operator")
    layer = SOCConv2d(a["in_channels"], a["out_channels"], k, a["stride"], **_soc_layer_args(a, improved))
    return layer, _soc_key


def _build_soc_cert(spec: dict[str, Any]) -> tuple[nn.Module, Callable[[str], str]]:
    a = _bind(spec, ["num_features", "num_classes"], {})
    head = SOCHead(a["num_features"], a["num_classes"], version="improved",
                   **{k: v for k, v in _soc_layer_args(dict(_SOC_IMPROVED_DEFAULTS), True).items() if k != "version"})

    def key(name: str) -> str:
        if not name.startswith("ortho."):
            raise ConversionError(f"unexpected SOC_Cert key {name!r}")
        return f"conv.{_soc_key(name[len('ortho.'):])}"

    return head, key


def _build_lipconvnet(spec: dict[str, Any], improved: bool) -> tuple[nn.Module, Callable[[str], str]]:
    if improved:
        a = _bind(spec, ["conv_name", "activation_name", "pooling_name", "last_name"], dict(
            conv_name="soc", activation_name="maxmin", pooling_name="max", last_name="ortho", init_channels=32,
            block_size=1, num_hidden=None, num_classes=10, input_size=32, fast_train=True, attack_radius=0.0,
            cifar_mean=(0.4914, 0.4822, 0.4465), cifar_std=(0.2507, 0.2507, 0.2507)))
        heads = {"ortho": "soc", "lln": "lln", "crc_full": "mlp"}
        if a["conv_name"] != "soc" or a["last_name"] not in heads:
            raise ConversionError(f"only conv 'soc' with last layer {sorted(heads)} is supported, got {a}")
        feats = 64 * a["init_channels"] if a["last_name"] == "crc_full" else 32 * a["init_channels"]
        model = SOCLipConvNet(
            block_size=a["block_size"], init_channels=a["init_channels"], num_classes=a["num_classes"],
            activation=a["activation_name"], head=heads[a["last_name"]], pooling=a["pooling_name"], version="improved",
            num_hidden=a["num_hidden"] or feats, input_size=a["input_size"],
            mean=a["cifar_mean"], std=a["cifar_std"])
        fmt = "soc-improved"
    else:
        a = _bind(spec, ["conv_name", "activation"], dict(init_channels=32, block_size=1, num_classes=10,
                                                          input_side=32, lln=False))
        if a["conv_name"] != "soc":
            raise ConversionError(f"only conv_name 'soc' is supported, got {a['conv_name']!r}")
        # the authors' module takes pre-normalised inputs: identity normaliser
        model = SOCLipConvNet(
            block_size=a["block_size"], init_channels=a["init_channels"], num_classes=a["num_classes"],
            activation=a["activation"], head="lln" if a["lln"] else "soc", version="icml21",
            input_size=a["input_side"], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        fmt = "soc"
    return model, fmt


def _identity_key(name: str) -> str:
    return name


def _build_simple(spec: dict[str, Any], improved: bool) -> tuple[nn.Module, Callable[[str], str]]:
    cls = spec["class"]
    if cls == "MaxMin":
        return MaxMin("halves"), _identity_key
    if cls == "MaxPool":
        return PairMaxPool("halves"), _identity_key
    if cls == "HouseHolder":
        return HouseHolder(_bind(spec, ["channels"], {})["channels"]), _identity_key
    if cls == "HouseHolder_Order_2":
        return HouseHolder2(_bind(spec, ["channels"], {})["channels"]), _identity_key
    if cls == "LipPool":
        a = _bind(spec, ["channels", "stride", "theta"], dict(stride=2, theta=None))
        return LipPool(a["channels"]), _identity_key
    if cls in ("NormalizedLinear", "LLN_Linear"):
        a = _bind(spec, ["in_features", "out_features", "bias"], dict(bias=True))
        return LLN(a["in_features"], a["out_features"], bias=a["bias"], eps=0.0), _identity_key
    if cls == "CRC_Full":
        a = _bind(spec, ["num_features", "num_classes", "num_hidden"],
                  dict(num_hidden=None, act_beta=1.0, act_thresh=20.0, init_iters=50, update_iters=1))
        head = MLPHead(a["num_features"], a["num_classes"], num_hidden=a["num_hidden"], beta=a["act_beta"],
                       threshold=a["act_thresh"], init_iters=a["init_iters"], update_iters=a["update_iters"])

        def key(name: str) -> str:
            if name not in _MLP_TENSOR:
                raise ConversionError(f"unexpected CRC_Full key {name!r}")
            return _MLP_TENSOR[name]

        return head, key
    if cls == "SOC":
        return _build_soc(spec, improved)
    if cls == "SOC_Cert":
        return _build_soc_cert(spec)
    raise ConversionError(f"no lipzoo counterpart for {spec.get('family')}/{cls}")


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The lipzoo module equivalent to the authors' ``spec['class']`` built with ``spec['constructor']``, with
    ``state`` (the authors' key names) loaded. Computation dtype: ``spec['dtype']`` when given (whole-model
    fixtures store float32 values that are cast to float64), else the state's dtype. Returned in eval mode."""
    improved = spec.get("family") == "improved"
    if spec.get("family") not in ("soc", "improved"):
        raise ConversionError(f"_soc converts families 'soc' and 'improved', not {spec.get('family')!r}")
    dtype = getattr(torch, spec["dtype"]) if isinstance(spec.get("dtype"), str) else None
    if dtype is None:
        floats = [v.dtype for v in state.values() if v.is_floating_point()]
        dtype = floats[0] if floats else torch.float32
    if spec["class"] == "LipConvNet":
        module, fmt = _build_lipconvnet(spec, improved)
        module = module.to(dtype)
        mapped = convert_state_dict(state, fmt, module)
    else:
        module, key = _build_simple(spec, improved)
        module = module.to(dtype)
        mapped = {key(k): v for k, v in state.items()}
        for k, v in module.state_dict().items():  # improved SOC layers have no `correction`: keep the model's 1.0
            if k not in mapped and k.endswith("correction"):
                mapped[k] = v.clone()
    mapped = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    module.load_state_dict(mapped, strict=True)
    return module.eval()
