"""LipConvNet with SOC layers (Singla & Feizi, ICML'21; HH activations and LLN, ICLR'22; "improved techniques",
NeurIPS'22 / arXiv 2211.08453).

Two structures (``version=``), both ending at 1x1 spatial size for 32x32 inputs (``n = 5 * block_size`` layers):

* ``"icml21"`` (singlasahil14/SOC ``LipConvNet``): five stages of ``block_size`` blocks ``SOC -> activation``; all
  but the last block of a stage are 3x3 stride 1, the last is stride 2 (``c -> 2c``, 3x3 in stages 1-4, 1x1 in
  stage 5). Widths 3 -> c (stage-1 inner) -> 2c @16 -> 4c @8 -> 8c @4 -> 16c @2 -> 32c @1 (c = init_channels).
* ``"improved"`` (singlasahil14/improved_l2_robustness ``LipConvNet``): an init block ``SOC 3 -> c`` (3x3) +
  activation at 32x32; blocks 1-4: ``(b-1) x SOC(c -> c)`` + activation, then ``SOC(c -> 4c, stride 2)`` +
  pooling (``4c -> 2c``); block 5: ``SOC(c -> 4c, 1x1, stride 2)`` then ``(b-1) x SOC 1x1``, the last one
  followed by pooling, except with the MLP head (activation instead, so the head sees ``64c`` features).

Heads: ``"soc"`` (SOC 1x1 -> first num_classes channels; the whole net is L-Lipschitz), ``"lln"`` (row-normalised
linear, no eps, as the authors'), ``"mlp"`` (the improved repo's ``CRC_Full``, certified by the curvature rule).
Inputs are [0, 1] images; the model normalises with mean (0.4914, 0.4822, 0.4465) and std 0.2507 (the SOC
repos' values), so :meth:`lipschitz_bound` includes the factor 1/0.2507.
"""
from __future__ import annotations

from collections import OrderedDict
from functools import partial
from typing import Any, Sequence

from torch import nn

from ..layers.activations import ACTIVATIONS, HouseHolder, HouseHolder2, LipPool, PairMaxPool, create_activation
from ..layers.heads import LLN, MLPHead
from ..layers.normalize import CIFAR10_MEAN, SOC_STD, InputNormalize
from ..layers.soc import SOCConv2d, SOCHead
from ._base import LipschitzClassifier
from ._lipconvnet import NUM_STAGES, lipconvnet_stages
from ._registry import Family, Variant, cpu_training, register_family

__all__ = ["SOCLipConvNet"]

PAPER = "Singla & Feizi, Skew Orthogonal Convolutions, ICML 2021"
PAPER_IMPROVED = "Singla, Singla & Feizi, Improved techniques for deterministic l2 robustness, NeurIPS 2022"

POOLINGS = ("max", "lip1")
HEADS = ("soc", "lln", "mlp")  # head layers: SOCHead, LLN, MLPHead (each names its head rule)
VERSIONS = ("icml21", "improved")


def _pooling(name: str, channels: int) -> nn.Module:
    if name == "max":
        return PairMaxPool("halves")
    if name == "lip1":
        return LipPool(channels)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {name!r}")


def _block(conv: SOCConv2d, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv=conv, act=act))


class SOCLipConvNet(LipschitzClassifier):
    """LipConvNet-(5 * block_size) with SOC convolutions; see the module docstring.

    Args:
        block_size: layers per stage (1..8 give LipConvNet-5..40).
        init_channels: c (32 in the papers).
        activation: ``"maxmin"`` | ``"hh1"`` | ``"hh2"`` (channel pairing: first half with second half).
        head: ``"soc"`` | ``"lln"`` | ``"mlp"``; the head layer names ``head_rule``.
        pooling: ``"max"`` | ``"lip1"`` (``version="improved"`` only).
        version: ``"icml21"`` | ``"improved"``: the structure and the SOC layer version.
        num_hidden: hidden width of the MLP head (default ``2 * num_features``: 4096 at c = 32, the authors' CLI).
        mean / std: input normalisation (std ``(1, 1, 1)`` and mean 0 for a model fed pre-normalised inputs).
        soc_args: extra :class:`~lipzoo.layers.soc.SOCConv2d` arguments (e.g. ``eval_order``, ``float32_norm``).
    """

    family = "soc"

    def __init__(
        self,
        block_size: int = 1,
        init_channels: int = 32,
        num_classes: int = 10,
        activation: str = "maxmin",
        head: str = "soc",
        pooling: str = "max",
        version: str = "icml21",
        num_hidden: int | None = None,
        input_size: int = 32,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = SOC_STD,
        soc_args: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for SOCLipConvNet: {sorted(kwargs)}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {tuple(HEADS)}, got {head!r}")
        if block_size < 1 or input_size % 32:
            raise ValueError(f"need block_size >= 1 and input_size a multiple of 32, got {block_size}, {input_size}")
        if activation not in ACTIVATIONS or pooling not in POOLINGS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} and pooling one of {POOLINGS}")
        self.version, self.activation, self.pooling, self.head_type = version, activation, pooling, head
        self.num_classes = num_classes
        self._soc_args = dict(soc_args or {}, version=version)
        self.normalize = InputNormalize(mean, std)
        stages, channels = (self._icml21 if version == "icml21" else self._improved)(block_size, init_channels)
        self.features = nn.Sequential(*stages)
        side = input_size // 32
        self.num_features = channels * side * side
        self.num_hidden = 2 * self.num_features if num_hidden is None else num_hidden
        self.head = self._make_head(num_classes)

    def _conv(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> SOCConv2d:
        return SOCConv2d(c_in, c_out, kernel_size, stride, **self._soc_args)

    def _icml21(self, b: int, c: int) -> tuple[list[nn.Module], int]:
        def block(c_in: int, c_out: int, k: int, stride: int, side: int) -> nn.Sequential:
            return _block(self._conv(c_in, c_out, k, stride), create_activation(self.activation, c_out))

        stages, channels, _ = lipconvnet_stages([b] * NUM_STAGES, c, 32, block)
        return [nn.Sequential(*blocks) for blocks in stages], channels

    def _improved(self, b: int, c: int) -> tuple[list[nn.Module], int]:
        stages = [nn.Sequential(_block(self._conv(3, c, 3, 1), create_activation(self.activation, c)))]
        c_in = c
        for s in range(5):
            blocks = []
            for j in range(b):
                if s < 4:  # 3x3 stride-1 layers, the last one strided
                    stride, k, pool = (2, 3, True) if j == b - 1 else (1, 3, False)
                else:  # 1x1, the first one strided; pooling after the last unless the MLP head follows
                    stride, k, pool = (2 if j == 0 else 1), 1, (j == b - 1 and self.head_type != "mlp")
                c_out = c_in * stride * stride
                act = _pooling(self.pooling, c_out) if pool else create_activation(self.activation, c_out)
                blocks.append(_block(self._conv(c_in, c_out, k, stride), act))
                c_in = c_out // 2 if pool else c_out
            stages.append(nn.Sequential(*blocks))
        return stages, c_in

    def _make_head(self, num_classes: int) -> nn.Module:
        if self.head_type == "soc":
            return SOCHead(self.num_features, num_classes, **self._soc_args)
        if self.head_type == "lln":
            return LLN(self.num_features, num_classes, bias=True, eps=0.0)
        return MLPHead(self.num_features, num_classes, num_hidden=self.num_hidden)

    def update_sigma(self) -> None:
        """Refresh every SOC layer's power-iteration vectors (50 sweeps; the improved recipe's mid-epoch call)."""
        for m in self.modules():
            if isinstance(m, SOCConv2d):
                m.update_sigma()

    def no_weight_decay(self) -> set[str]:
        """Activation / pooling angles (the SOC recipe trains them without weight decay)."""
        return {
            f"{name}.{p}" for name, m in self.named_modules()
            if isinstance(m, (HouseHolder, HouseHolder2, LipPool)) for p, _ in m.named_parameters()
        }


# --- the family declaration ----------------------------------------------------------------------------------

# Compact CPU variant: the ICML'21 LipConvNet-5 at c = 8 (widths 16 @16 ... 256 @1) with an LLN head. On the
# 2-core CPU it is the cheapest SOC structure per image (the improved one adds a 32x32 layer).
_XS = dict(block_size=1, init_channels=8, version="icml21", activation="maxmin", head="lln")

_PARAMS_NOTE = (
    "lipzoo counts every tensor of the code (the full SOC kernel P, of which the layer uses the skew half; "
    "u/v vectors are buffers). At init_channels 32 the authors' CIFAR-10 LipConvNet-{n} has {m:.2f}M such "
    "parameters. {paper}"
)
# depth n -> the code's parameter count at init_channels 32 (millions), and the few counts a paper quotes
_CODE_COUNTS = {5: 17.67, 10: 20.92, 15: 24.07, 20: 27.21, 25: 30.35, 30: 33.50, 35: 36.64, 40: 39.78}
_PAPER_COUNTS = {25: 24.0}
_ORDINALS = ("one", "two", "three", "four", "five", "six", "seven", "eight")


def _lipconvnet(n: int) -> Variant:
    paper = (
        f"1LLC (Prach et al. 2023, Table 4) quotes {_PAPER_COUNTS[n]:.0f}M for 'SOC LipNet-{n}', which does not "
        "match the code: another counting rule or width (the ICML'21 code defaulted to init_channels 16)."
        if n in _PAPER_COUNTS else "No parameter count was published for this depth (UNVERIFIED)."
    )
    return Variant(
        f"LipConvNet-{n}: {n} SOC layers (init_channels 32, 5 stages of {n // 5}), MaxMin, SOC 1x1 head; "
        "options: activation hh1/hh2, head lln/mlp, version 'improved' with pooling max/lip1",
        dict(block_size=n // 5),
        doc=f"LipConvNet-{n} (SOC): {_ORDINALS[n // 5 - 1]} SOC layer{'s' if n > 5 else ''} per stage.",
        paper_params=_PAPER_COUNTS.get(n),
        paper_params_note=_PARAMS_NOTE.format(n=n, m=_CODE_COUNTS[n], paper=paper),
    )


# measured_training: scripts/bench.py models, results/bench_models.json (694.4 images/s)
register_family(Family(
    name="soc", paper=PAPER, model=SOCLipConvNet, module=__name__,
    variants={
        **{f"soc_lipconvnet{n}": _lipconvnet(n) for n in _CODE_COUNTS},
        "soc_xs": Variant(
            "compact SOC LipConvNet for 2-core CPU training: " + ", ".join(f"{k}={v}" for k, v in _XS.items()), _XS,
            doc="Compact SOC LipConvNet for CPU training (~1M parameters): LipConvNet-5 at init_channels 8, LLN head.",
            compact=True, measured_training=cpu_training(694.4), targets={"cifar10": (0.62, 0.47)}),
    },
    checkpoint_formats={"soc": "lipzoo.convert._soc", "soc-improved": "lipzoo.convert._soc"},
    reference_converter="lipzoo.convert._soc", reference_aliases=("improved",),
    recipes={  # name -> lipzoo.train.Recipe fields, the compact CPU recipe first
        "soc_cpu": dict(
            model="soc_xs", epochs=70, batch_size=256, optimizer="sgd", lr=0.05, momentum=0.9,
            weight_decay=5e-4, wd_rule="weights", no_wd_keywords=("act", "theta"), schedule="triangular",
            loss="xent", augment="crop_flip", pad_mode="constant",
            # float32, as the published soc_xs run: SOC's Taylor convolutions stay float32 under autocast unless
            # model_args {"soc_args": {"autocast_convs": true}} (scripts/bench.py train)
            fast=False,
            description="SOC on a 2-core CPU: SGD(0.05, m 0.9, wd 5e-4 on weights), triangular, xent, crop+flip, "
            "float32",
        ),
        "soc_paper": dict(
            model="soc_lipconvnet20", epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
            momentum=0.9, weight_decay=5e-4, wd_rule="weights", no_wd_keywords=("act", "activation", "theta"),
            schedule="multistep", milestones=(0.5, 0.75), loss="ce", augment="crop_flip", pad_mode="constant",
            description="SOC ICML'21 repo: SGD(0.1, m 0.9, wd 5e-4 except activations), x0.1 at 50%/75% of steps, "
            "CE (- gamma * mean relu(cert) with --cr-gamma), crop+flip, 200 epochs, batch 128",
        ),
        "soc_improved_paper": dict(
            model="soc_lipconvnet15", epochs=200, batch_size=128, optimizer="sgd", lr=0.1,
            momentum=0.9, weight_decay=5e-4, wd_rule="weights", no_wd_keywords=("head", "logits"),
            schedule="multistep", milestones=(0.5, 0.75), loss="ce", cr_gamma=0.0, grad_clip=1.0,
            augment="crop_flip", pad_mode="constant",
            description="improved_l2_robustness: SGD(0.1), wd 5e-4 on weights except the logits layer, x0.1 at "
            "50%/75%, CE (+ curvature beta for the MLP head), grad clip 1.0, 200 epochs, batch 128; CR works here",
        ),
    },
    convnet_conv=lambda c, k, n: SOCConv2d(c, c, k),
    bench_layers={"SOC 3x3 (64 -> 64)": partial(SOCConv2d, 64, 64, 3)},
))
