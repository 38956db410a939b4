"""AOL (berndprach/1LipschitzLayersCompared, ``lipnn``: the PyTorch port of berndprach/AOL) modules and
checkpoints -> lipzoo.

Authors' conventions. ``AOLConv2d(cin, cout, k)`` / ``AOLConv2dOrth`` is an ``nn.Conv2d`` with ``padding='same'``,
``padding_mode='circular'`` and a torch parametrization of ``weight``: the state holds the unconstrained kernel as
``parametrizations.weight.original`` and ``bias``; the realised kernel is ``P / sqrt(v + 1e-6)`` over input
channels, exactly lipzoo's :class:`~lipzoo.layers.aol.AOLConv2d` with ``padding_mode='circular'``. PyTorch refuses
``padding='same'`` with a stride, so the port has no strided AOL layer.

The AOL paper's TensorFlow layers (berndprach/AOL ``AOLConv2D(filters, kernel_size, padding)``, ``AOLDense(units)``)
hold ``kernel_parameters`` ([kh, kw, in, out] / [in, out]) and ``bias_parameters`` and work on NHWC tensors:
:func:`tf_layer_state` transposes them to lipzoo's layout and :class:`ChannelsLast` applies the lipzoo layer to NHWC
inputs, so a recorded TF case is reproduced as a function of the authors' own layout. They have no strides either.

The 1LLC ConvNet (``lipnn.lip_conv_net.LipConvNet``; ConvNetXS..L in the paper) is rebuilt here from lipzoo layers
with the authors' module names, so its keys map one to one: ``ZeroConcatenation`` (zero channel pad), ``FirstConv``
(1x1), ``FirstActivation`` (MaxMin on adjacent channel pairs), ``Block{i}`` = [conv k x k, MaxMin] x length,
``FirstChannels(c/2)``, ``PixelUnshuffle(2)`` (last block k = 1), ``AdaptiveMaxPool`` (global max), ``ClassificationHead``
(1x1 conv, Flatten), ``FirstChannels(classes)``.

Format ``aol-tf``: the weights of the AOL paper's TensorFlow patch-wise network (berndprach/AOL
``models/patchwise.py``, ``get_patchwise_model``; AOL-S/M/L) -> lipzoo's :class:`~lipzoo.models.aol.AOLNet`
(:func:`tf_network_state`). Accepted files, keyed by the Keras variable paths (``[sequential/]AOLConv2DLayer2/
kernel_parameters``; a Keras 2 ``:0`` suffix or any leading path is allowed):

* a safetensors file or a plain torch state dict (e.g. ``{v.path: v.numpy() for v in model.weights}`` saved with
  ``safetensors.numpy.save_file``);
* an ``.npz`` (read with ``numpy.load(allow_pickle=False)``);
* a Keras ``.h5`` / ``.weights.h5`` weights file (``model.save_weights``), read with ``h5py`` if it is installed. In
  the Keras 3 layout (``layers/<layer>/vars/<i>``, the layer name in the ``vars`` group's ``name`` attribute, as
  TF 2.21 writes it) the 1-D variable is the bias, the other the kernel.

The layers are matched in the order of the authors' global layer counter (the number in ``AOLConv2DLayer<n>``, which
follows construction order), to lipzoo's AOL layers in module order; shapes are checked one by one. Three things
differ from lipzoo's layout and are converted exactly: the patches (``tf.image.extract_patches``: channel
``(dy*p + dx)*3 + c``; lipzoo's ``PixelUnshuffle``: ``c*p*p + dy*p + dx``) permute the first 1x1 kernel's inputs,
the NHWC flatten permutes the first dense kernel's inputs, and the TF model has no input normalisation: lipzoo's
centring ``x - m`` is undone by the first bias, ``b + W_r m`` (``W_r`` the rescaled 1x1 kernel). An AOL layer's
rescaling is per input channel, so permuting inputs permutes it along; the Lipschitz bound is unchanged.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers.activations import MaxMin
from ..layers.aol import AOLConv2d, AOLLinear, aol_conv_scaling
from ..layers.shapes import ChannelPad, FirstChannels, PixelUnshuffle
from ..models.aol import AOLNet
from . import ConversionError
from ._common import load_exact, spec_parts

__all__ = ["from_reference", "convert_state_dict", "read_checkpoint", "lipconvnet_1llc", "tf_layer_state",
           "tf_network_state", "ChannelsLast", "ImagesNHWC"]

_CONV_CLASSES = ("AOLConv2d", "AOLConv2dOrth", "AOLConv2dDirac")


def _conv(cin: int, cout: int, k: int) -> AOLConv2d:
    return AOLConv2d(cin, cout, k, padding_mode="circular")


def lipconvnet_1llc(base_width: int = 16, nrof_blocks: int = 5, nrof_layers_per_block: int = 3,
                    kernel_size: int = 3, nrof_classes: int = 10) -> nn.Sequential:
    """The 1LLC ``LipConvNet`` with AOL convolutions and MaxMin, from lipzoo layers, under the authors' names."""
    blocks = []
    for i in range(nrof_blocks):
        c, k = base_width * 2 ** i, kernel_size if i < nrof_blocks - 1 else 1
        layers: list[nn.Module] = []
        for _ in range(nrof_layers_per_block):
            layers += [_conv(c, c, k), MaxMin("adjacent")]
        layers += [FirstChannels(c // 2), PixelUnshuffle(2)]
        blocks.append((f"Block{i + 1}", nn.Sequential(*layers)))
    feats = base_width * 2 ** nrof_blocks
    return nn.Sequential(OrderedDict([
        ("ZeroConcatenation", ChannelPad(base_width)),
        ("FirstConv", _conv(base_width, base_width, 1)),
        ("FirstActivation", MaxMin("adjacent")),
        *blocks,
        ("AdaptiveMaxPool", nn.AdaptiveMaxPool2d(1)),
        ("ClassificationHead", nn.Sequential(_conv(feats, feats, 1), nn.Flatten())),
        ("FirstChannels", FirstChannels(nrof_classes)),
    ]))


_PARAM = re.compile(r"^(?:module\.)?(.*?)parametrizations\.weight\.original$")


def convert_state_dict(state: dict[str, torch.Tensor], fmt: str = "aol-1llc", model: nn.Module | None = None
                       ) -> dict[str, torch.Tensor]:
    """``aol-1llc``: ``<prefix>parametrizations.weight.original`` -> ``<prefix>weight`` (the unconstrained kernel;
    lipzoo rescales it in the forward), other keys unchanged (a DataParallel ``module.`` prefix is removed).
    ``aol-tf``: :func:`tf_network_state` for ``model`` (an :class:`~lipzoo.models.aol.AOLNet`)."""
    if fmt == "aol-tf":
        if not isinstance(model, AOLNet):
            raise ConversionError(f"checkpoint_format 'aol-tf' loads into an AOLNet (aol_*), not {type(model).__name__}")
        return tf_network_state(state, model)
    if fmt != "aol-1llc":
        raise ConversionError(f"_aol cannot convert format {fmt!r}")
    out = {}
    for key, value in state.items():
        m = _PARAM.match(key)
        out[f"{m.group(1)}weight" if m else key.removeprefix("module.")] = value
    return out


class ChannelsLast(nn.Module):
    """``layer`` applied to an NHWC tensor (NHWC in, NHWC out); a permutation on each side, so the bound is the
    layer's."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def lipschitz_bound(self) -> float:
        return self.layer.lipschitz_bound()


def tf_layer_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """TF ``kernel_parameters`` [kh, kw, in, out] or [in, out] and ``bias_parameters`` -> lipzoo ``weight``
    (out, in, kh, kw) or (out, in) and ``bias``."""
    k = state["kernel_parameters"]
    weight = k.permute(3, 2, 0, 1) if k.dim() == 4 else k.T
    return {"weight": weight.contiguous(), "bias": state["bias_parameters"]}


def _tf_layer(cls: str, args: list, kwargs: dict, c: dict[str, Any]) -> nn.Module:
    if cls == "AOLDense":
        return AOLLinear(c["input_channels"], args[0])
    k = args[1][0] if isinstance(args[1], (list, tuple)) else args[1]
    if kwargs.get("padding", "valid").lower() != "same" or kwargs.get("strides", (1, 1)) not in ((1, 1), [1, 1]):
        raise ConversionError("only AOLConv2D(padding='same') with stride 1 has a lipzoo equivalent")
    return AOLConv2d(c["input_channels"], args[0], k, padding_mode="zeros")


_TF_KEY = re.compile(r"(?:^|/)(AOLConv2D|AOLDense)Layer(\d+)/(kernel|bias)_parameters(?::\d+)?$")


def _tf_layers(state: dict[str, torch.Tensor]) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """``[(layer name, {kernel_parameters, bias_parameters})]`` of a TF state, in the authors' layer-counter order."""
    layers: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state.items():
        m = _TF_KEY.search(key)
        if m is None:
            unknown.append(key)
            continue
        layers.setdefault((int(m.group(2)), m.group(1)), {})[f"{m.group(3)}_parameters"] = value
    if unknown:
        raise ConversionError(f"aol-tf: keys that are not AOLConv2D/AOLDense variables: {sorted(unknown)[:8]}"
                              " (expected '<...>/AOLConv2DLayer<n>/kernel_parameters' and '.../bias_parameters')")
    out = []
    for (n, cls), variables in sorted(layers.items()):
        name = f"{cls}Layer{n}"
        missing = {"kernel_parameters", "bias_parameters"} - set(variables)
        if missing:
            raise ConversionError(f"aol-tf: {name} has no {sorted(missing)[0]} in the checkpoint")
        out.append((name, variables))
    return out


def tf_network_state(state: dict[str, torch.Tensor], model: AOLNet) -> dict[str, torch.Tensor]:
    """The TF patch-wise network's variables (Keras paths, see the module docstring) -> ``model``'s state dict
    (its own ``normalize`` buffers kept): layer by layer in order, the patch and flatten permutations applied to the
    first 1x1 conv and the first dense kernel, and the first bias shifted by ``W_r m`` for lipzoo's input centring."""
    if not torch.all(model.normalize.std == 1):
        raise ConversionError("aol-tf: the TF network has no input scaling; load it into an AOLNet with std 1")
    tf_layers = _tf_layers(state)
    ours = [(name, m) for name, m in model.named_modules() if isinstance(m, (AOLConv2d, AOLLinear))]
    kinds = ["dense" if isinstance(m, AOLLinear) else "conv" for _, m in ours]
    theirs = ["dense" if name.startswith("AOLDense") else "conv" for name, _ in tf_layers]
    if kinds != theirs:
        raise ConversionError(
            f"aol-tf: the checkpoint has {theirs.count('conv')} AOLConv2D + {theirs.count('dense')} AOLDense layers, "
            f"the model {kinds.count('conv')} + {kinds.count('dense')}: pick the variant the TF model was built as "
            "(aol_s/m/l: filters_after_downsize 16/32/48) or pass its model arguments")
    patch = next(m.factor for m in model.features if isinstance(m, PixelUnshuffle))
    kept = next(m.n for m in model.features if isinstance(m, FirstChannels))
    side = round((model.num_features // kept) ** 0.5)
    out: dict[str, torch.Tensor] = {}
    for i, ((tf_name, variables), (name, module)) in enumerate(zip(tf_layers, ours)):
        converted = tf_layer_state(variables)
        for key, var in (("weight", "kernel_parameters"), ("bias", "bias_parameters")):
            if converted[key].shape != getattr(module, key).shape:
                raise ConversionError(f"aol-tf: {tf_name}/{var} has shape {tuple(variables[var].shape)}, which does not "
                                      f"fit {name}.{key} {tuple(getattr(module, key).shape)} (lipzoo's layout)")
        k = variables["kernel_parameters"]
        if i == 0:  # patch channels (dy, dx, c) -> PixelUnshuffle's (c, dy, dx)
            k = k.reshape(1, 1, patch, patch, -1, k.shape[-1]).permute(0, 1, 4, 2, 3, 5).reshape(k.shape)
        if i == kinds.index("dense"):  # NHWC flatten (h, w, c) -> NCHW (c, h, w)
            k = k.reshape(side, side, kept, k.shape[-1]).permute(2, 0, 1, 3).reshape(k.shape)
        converted = tf_layer_state({"kernel_parameters": k, "bias_parameters": variables["bias_parameters"]})
        out.update({f"{name}.{key}": value for key, value in converted.items()})
    # lipzoo centres the input: W_r (x - m) + b' = W_r x + b  <=>  b' = b + W_r m (m per patch channel)
    first = ours[0][0]
    w = out[f"{first}.weight"].double()
    w_r = (w * aol_conv_scaling(w).view(1, -1, 1, 1))[:, :, 0, 0]
    mean = model.normalize.mean.double().flatten().repeat_interleave(patch * patch)
    out[f"{first}.bias"] = out[f"{first}.bias"].double() + w_r @ mean
    out.update({f"normalize.{k}": v for k, v in model.normalize.state_dict().items()})
    return out


def read_checkpoint(path: Path, fmt: str) -> dict[str, torch.Tensor] | None:
    """The ``aol-tf`` file forms lipzoo's reader does not know: ``.npz`` and Keras ``.h5``; ``None`` otherwise."""
    import numpy as np

    if fmt != "aol-tf" or path.suffix not in (".npz", ".h5"):
        return None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return {k: torch.from_numpy(f[k].copy()) for k in f.files}
    try:
        import h5py
    except ImportError:
        raise ConversionError(f"checkpoint {path}: reading a Keras .h5 file needs h5py (pip install h5py), or save "
                              "the weights as .npz / safetensors keyed by the variable paths") from None
    state: dict[str, torch.Tensor] = {}

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        parent = obj.parent
        if parent.name.endswith("/vars") and "name" in parent.attrs:  # Keras 3: layers/<layer>/vars/<i>
            layer = parent.attrs["name"]
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            name = f"{layer}/{'bias' if obj.ndim == 1 else 'kernel'}_parameters"
        state[name] = torch.from_numpy(obj[()])

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return state


class ImagesNHWC(nn.Module):
    """``model`` applied to NHWC images (TensorFlow's layout); a permutation of the input, so the bound is the
    model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.permute(0, 3, 1, 2))

    def lipschitz_bound(self) -> float:
        return self.model.lipschitz_bound()


# the authors' PatchwiseHyperparameters defaults (models/patchwise.py), used where a sidecar does not pass them
_TF_PATCHWISE_DEFAULTS = dict(patch_size=(4, 4), input_size=(32, 32), filters_after_downsize=8, patch_encoding_sizes=192,
                              nrof_encoding_layers=12, nrof_aggregation_layers=14, nrof_classes=10, nrof_input_channels=3)


def _tf_patchwise(kwargs: dict[str, Any], dtype: torch.dtype, state: dict[str, torch.Tensor]) -> nn.Module:
    hp = {**_TF_PATCHWISE_DEFAULTS, **kwargs}
    if len(set(hp["patch_size"])) != 1 or len(set(hp["input_size"])) != 1 or hp["nrof_input_channels"] != 3:
        raise ConversionError("AOLNet has square patches and inputs and 3 input channels")
    model = AOLNet(patch_size=hp["patch_size"][0], encoding_channels=hp["patch_encoding_sizes"],
                   n_encoding=hp["nrof_encoding_layers"], filters_after_downsize=hp["filters_after_downsize"],
                   n_dense=hp["nrof_aggregation_layers"], num_classes=hp["nrof_classes"], input_size=hp["input_size"][0],
                   mean=(0.0, 0.0, 0.0))  # the TF network has no input normalisation
    return ImagesNHWC(load_exact(model, tf_network_state(state, model), dtype))


def from_reference(spec: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    cls, args, kwargs, dtype = spec_parts(spec, state)
    if cls == "get_patchwise_model":  # the AOL paper's TF network (NHWC images in)
        return _tf_patchwise(kwargs, dtype, state)
    if cls in ("AOLConv2D", "AOLDense"):  # the AOL paper's TensorFlow layers (NHWC)
        layer = load_exact(_tf_layer(cls, args, kwargs, spec["constructor"]), tf_layer_state(state), dtype)
        return ChannelsLast(layer) if cls == "AOLConv2D" else layer
    if cls in _CONV_CLASSES:
        if kwargs.get("padding", "same") != "same" or kwargs.get("padding_mode", "circular") != "circular":
            raise ConversionError("only the 1LLC default padding='same', padding_mode='circular' is supported")
        module = _conv(args[0], args[1], args[2])
    elif cls == "LipConvNet":
        if kwargs.get("conv") not in _CONV_CLASSES or kwargs.get("activation") != "MaxMin" or kwargs.get("linear"):
            raise ConversionError("only LipConvNet(conv=AOLConv2d, activation=MaxMin, linear=None) is supported")
        module = lipconvnet_1llc(**{k: kwargs[k] for k in ("base_width", "nrof_blocks", "nrof_layers_per_block",
                                                           "kernel_size", "nrof_classes") if k in kwargs})
    else:
        raise ConversionError(f"no lipzoo equivalent for AOL class {cls!r}")
    module = module.to(dtype)
    module.load_state_dict({k: v.to(dtype) for k, v in convert_state_dict(state).items()}, strict=True)
    return module
