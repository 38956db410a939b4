"""LOT networks (Xu, Li & Li, "LOT: Layer-wise Orthogonal Training on Improving l2 Certified Robustness",
NeurIPS 2022, arXiv 2210.11620).

The LOT repo (AI-secure/Layerwise-Orthogonal-Training) trains the SOC repo's ``LipConvNet`` with LOT layers,
plain or with ``--residual`` (its ``LipResNet``). Structure (``LipConvNet-n``, ``b = n / 5`` blocks per stage):
``[0,1] image -> (x - mean) / 0.2507 -> 5 stages -> head``. A block is ``LOT conv -> activation``
(MaxMin pairing channel i with i + C/2, or HH1). In stage i the first b - 1 blocks are 3x3 stride 1 and the
last is stride 2 (PixelUnshuffle, then 4C -> 2C), 3x3 in stages 1-4 and 1x1 in stage 5:
``3 -> c (stage-1 inner blocks, 32x32) -> 2c@16 -> 4c@8 -> 8c@4 -> 16c@2 -> 32c@1``; head ``LOT 1x1 (32c -> classes)``
(head rule "lipschitz") or ``LLN`` (rows normalised, plain division; head rule "lln").
The residual variant replaces each stage's middle blocks by ``x <- x/2 + block(x)/2`` (a convex combination,
so its bound is ``1/2 + L_block/2``).

``lipschitz_bound()`` is proven: ``1/0.2507`` (normalisation) times the product of the measured per-layer
bounds of the LOT layers (exact spectral norms of the realised per-frequency matrices, for the 32x32 input
the layers were built for, or the size of the last forward).
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import nn

from ..layers.activations import create_activation
from ..layers.base import LipschitzModule, lipschitz_bound_of
from ..layers.heads import LLN
from ..layers.lot import LOTConv2d, LOTLinear
from ..layers.normalize import CIFAR10_MEAN, SOC_STD, InputNormalize
from ._base import LipschitzClassifier
from ._lipconvnet import NUM_STAGES, lipconvnet_stages
from ._registry import Family, Variant, cpu_training, register_family

__all__ = ["LOTBlock", "LOTResidualStage", "LOTLipConvNet"]

PAPER = "Xu, Li & Li, LOT: Layer-wise Orthogonal Training on Improving l2 Certified Robustness, NeurIPS 2022"


class LOTBlock(LipschitzModule):
    """``activation(LOT conv(x))`` (the repos' ``LipBlock``); ``in_channels -> planes * stride`` channels."""

    def __init__(self, in_channels: int, planes: int, stride: int, kernel_size: int, activation: str,
                 input_size: int, **lot_kwargs):
        super().__init__()
        self.conv = LOTConv2d(in_channels, planes * stride, kernel_size, stride, input_size=input_size, **lot_kwargs)
        self.act = create_activation(activation, planes * stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def lipschitz_bound(self) -> float:
        return self.conv.lipschitz_bound() * lipschitz_bound_of(self.act)


class LOTResidualStage(LipschitzModule):
    """The LOT repo's ``ResLayer``: ``blocks[-1](h_m(... h_1(blocks[0](x))))`` with the middle blocks mixed
    as ``h_j(x) = lam x + (1 - lam) blocks[j](x)``, ``lam = sigmoid(mix_logit)`` (fixed, 0 -> 1/2).

    Bound: ``L_0 * prod_j (lam + (1 - lam) L_j) * L_last`` (a convex combination of 1 and L_j).
    """

    def __init__(self, blocks: Sequence[nn.Module], mix_logit: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.register_buffer("mix_logit", torch.tensor([float(mix_logit)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.blocks)
        x = self.blocks[0](x)
        if n == 1:
            return x
        lam = torch.sigmoid(self.mix_logit.float()).to(x.dtype)
        for block in self.blocks[1:-1]:
            x = lam * x + (1 - lam) * block(x)
        return self.blocks[-1](x)

    def lipschitz_bound(self) -> float:
        bounds = [lipschitz_bound_of(b) for b in self.blocks]
        if len(bounds) == 1:
            return bounds[0]
        lam = float(torch.sigmoid(self.mix_logit.double()))
        out = bounds[0] * bounds[-1]
        for b in bounds[1:-1]:
            out *= lam + (1 - lam) * b
        return out


class LOTLipConvNet(LipschitzClassifier):
    """LipConvNet / LipResNet with LOT layers (see the module docstring).

    Args:
        block_size: blocks per stage (``LipConvNet-5b``), or one count per stage (5 values).
        init_channels: c (the repos use 32).
        activation: ``'maxmin'`` or ``'hh1'``.
        lln: LLN head (rule "lln") instead of the LOT 1x1 head (rule "lipschitz").
        residual: the LOT repo's ``--residual`` LipResNet.
        train_iters, eval_iters, eps, ortho_dtype: passed to every LOT layer (:class:`LOTConv2d`).
        input_size: image side the layers are built (and their bounds stated) for; must be divisible by 32.
        mean, std: input normalisation inside the model (LOT/SOC repos: CIFAR-10 mean, std 0.2507, for
            CIFAR-10 and CIFAR-100 alike).
    """

    family = "lot"

    def __init__(
        self,
        block_size: int | Sequence[int] = 1,
        init_channels: int = 32,
        num_classes: int = 10,
        activation: str = "maxmin",
        lln: bool = False,
        residual: bool = False,
        train_iters: int = 10,
        eval_iters: int = 10,
        eps: float = 1e-4,
        ortho_dtype: torch.dtype | None = None,
        input_size: int = 32,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = SOC_STD,
        **kwargs,
    ):
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for LOTLipConvNet: {sorted(kwargs)}")
        sizes = [block_size] * NUM_STAGES if isinstance(block_size, int) else list(block_size)
        if input_size % 32:
            raise ValueError(f"LOTLipConvNet needs an input side divisible by 32, got {input_size}")
        self.num_classes, self.residual, self.activation = num_classes, residual, activation
        self._lot_kwargs = dict(train_iters=train_iters, eval_iters=eval_iters, eps=eps, ortho_dtype=ortho_dtype)
        self.lln_head = lln
        self.normalize = InputNormalize(mean, std)

        def block(c_in: int, c_out: int, k: int, stride: int, side: int) -> LOTBlock:
            return LOTBlock(c_in, c_out // stride, stride, k, activation, side, **self._lot_kwargs)

        blocks, in_ch, side = lipconvnet_stages(sizes, init_channels, input_size, block)
        stages = [LOTResidualStage(b) if residual else nn.Sequential(*b) for b in blocks]
        self.features = nn.Sequential(*stages)
        self.num_features = in_ch * side * side
        self.head = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if self.lln_head:
            return LLN(self.num_features, num_classes, bias=True, eps=0.0)
        return LOTLinear(self.num_features, num_classes, **self._lot_kwargs)


# Compact CPU variant: LOT LipConvNet-5 at init_channels 8 (widths 16@16, 32@8, 64@4, 128@2, 256@1). On CPU the
# Newton-Schulz work is batch independent and grows as c_out^3 per frequency (the stride-2 layers of stages 3-5
# dominate), so the width is what costs; extra stride-1 blocks cost ~0.1 s (stages 2-3) to ~0.5 s (stage 1,
# 34x34 FFT grid) per 256-image training step, so none are added.
_XS = dict(init_channels=8, block_size=1)
_PAPER_PARAMS_NOTE_25 = (
    "1LLC (arXiv 2311.16833) Table 4 quotes 27M for 'LOT LipNet-25'; the LOT repo's code gives 20.94M for "
    "LipConvNet-25 (init_channels 32, CIFAR-10, LOT head), and 27.23M is its LipConvNet-35 count; the quoted "
    "number follows a different counting rule or depth. lipzoo reports sum(p.numel())."
)
_DEPTHS = range(5, 45, 5)  # LipConvNet-n has n / 5 blocks per stage


def _depth(n: int, residual: bool) -> Variant:
    kind = "LipResNet (x <- x/2 + block(x)/2 inside stages, the repo's --residual)" if residual else "LipConvNet"
    desc = (f"LOT {kind}-{n}: 5 stages of {n // 5} LOT blocks, init_channels 32, MaxMin (or HH1), "
            "LOT 1x1 head (or LLN with lln=True)")
    if residual and n <= 10:
        desc += "; identical to lot_lipconvnet%d (no middle blocks at this depth)" % n
    note = "no verified published parameter count for this variant (the LOT paper's tables were not checked)"
    if n == 25:
        note = "see lot_lipconvnet25: " + _PAPER_PARAMS_NOTE_25 if residual else _PAPER_PARAMS_NOTE_25
    return Variant(desc, dict(block_size=n // 5, init_channels=32, residual=residual),
                   doc=f"LOT {'LipResNet' if residual else 'LipConvNet'}-{n} (init_channels 32).",
                   paper_params=27.0 if (n == 25 and not residual) else None, paper_params_note=note)


# measured_training: scripts/bench.py models, results/bench_models.json (671.8 images/s)
register_family(Family(
    name="lot", paper=PAPER, model=LOTLipConvNet, module=__name__,
    variants={
        **{f"lot_lipconvnet{n}": _depth(n, residual=False) for n in _DEPTHS},
        **{f"lot_lipresnet{n}": _depth(n, residual=True) for n in _DEPTHS},
        "lot_xs": Variant("compact LOT for 2-core CPU training: LipConvNet-5 at init_channels 8 (0.52M parameters), "
                          "MaxMin, LOT 1x1 head", _XS, compact=True,
                          doc="Compact LOT: LipConvNet-5 at init_channels 8, for CPU training.",
                          measured_training=cpu_training(671.8), targets={"cifar10": (0.62, 0.47)}),
    },
    checkpoint_formats={"lot": "lipzoo.convert._lot"},
    reference_converter="lipzoo.convert._lot",
    recipes={  # name -> lipzoo.train.Recipe fields, the compact CPU recipe first
        "lot_cpu": dict(
            model="lot_xs", epochs=70, batch_size=256, optimizer="sgd", lr=0.05, momentum=0.9,
            weight_decay=0.0, schedule="triangular", loss="xent", augment="crop_flip", pad_mode="constant",
            description="LOT on a 2-core CPU: SGD(0.05, m 0.9), triangular, xent, crop+flip",
        ),
        "lot_paper": dict(
            model="lot_lipconvnet20", epochs=200, batch_size=256, optimizer="sgd", lr=0.1,
            momentum=0.9, weight_decay=0.0, schedule="multistep", milestones=(0.5, 0.75), loss="ce",
            augment="crop_flip", pad_mode="constant",
            description="LOT repo: SGD(0.1, m 0.9), no weight decay for LOT, x0.1 at 50%/75%, CE (CReg gamma 0.5 "
            "with --cr-gamma 0.5), crop+flip, 200 epochs, batch 256",
        ),
    },
    convnet_conv=lambda c, k, n: LOTConv2d(c, c, k, input_size=n),
    bench_layers={"LOT 3x3 (64 -> 64)": partial(LOTConv2d, 64, 64, 3)},
))
