"""Batched augmentation of uint8 CIFAR images (N, 32, 32, 3), fast enough not to starve 2 CPU cores.

Every random choice comes from an explicit ``torch.Generator`` so a step's augmentation is a pure function of
(seed, epoch, step): resuming a run, or splitting a global batch across DDP ranks, sees the same images.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment_batch"]

# YIQ <-> RGB (NTSC); a hue shift is a rotation of the (I, Q) chroma plane
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)
_GRAY = torch.tensor([0.299, 0.587, 0.114])


@dataclass
class AugmentConfig:
    """``crop``: pad then random 32x32 crop (``pad_mode`` 'reflect' as in SLL/LBDN, 'constant' = zeros as in
    SOC/LOT); ``flip``: horizontal flip with p = 1/2; ``jitter``: (brightness, contrast range, saturation range,
    hue) as in torchvision's ColorJitter of the SLL recipe (0.1, (0.5, 2), (0.3, 2), 0.02), applied per image in
    random order-free form (brightness, contrast, saturation, hue); hue is a chroma rotation in YIQ space."""

    crop: int = 4
    pad_mode: str = "reflect"
    flip: bool = True
    jitter: tuple[float, tuple[float, float], tuple[float, float], float] | None = None


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1], channels_last, augmented per ``cfg``."""
    n, h, w, _ = images.shape
    x = images.permute(0, 3, 1, 2).float().div_(255)  # NCHW view of NHWC memory = channels_last
    if cfg.crop:
        p = cfg.crop
        mode = "reflect" if cfg.pad_mode == "reflect" else "constant"
        padded = F.pad(x, (p, p, p, p), mode=mode)
        dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
        rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # (n, h)
        cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # (n, w)
        idx_n = torch.arange(n).view(n, 1, 1)
        x = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    if cfg.flip:
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    if cfg.jitter is not None:
        b, (c_lo, c_hi), (s_lo, s_hi), hue = cfg.jitter
        if b:
            x = x * _uniform(n, max(0.0, 1 - b), 1 + b, g).view(n, 1, 1, 1)
            x = x.clamp_(0, 1)
        gray = torch.einsum("nchw,c->nhw", x, _GRAY).unsqueeze(1)
        cf = _uniform(n, c_lo, c_hi, g).view(n, 1, 1, 1)
        x = (cf * x + (1 - cf) * gray.mean(dim=(2, 3), keepdim=True)).clamp_(0, 1)
        gray = torch.einsum("nchw,c->nhw", x, _GRAY).unsqueeze(1)
        sf = _uniform(n, s_lo, s_hi, g).view(n, 1, 1, 1)
        x = (sf * x + (1 - sf) * gray).clamp_(0, 1)
        if hue:
            theta = _uniform(n, -hue, hue, g) * 2 * torch.pi
            cos, sin = theta.cos(), theta.sin()
            rot = torch.zeros(n, 3, 3)
            rot[:, 0, 0] = 1
            rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
            m = _YIQ2RGB @ rot @ _RGB2YIQ  # (n, 3, 3)
            x = torch.einsum("nij,njhw->nihw", m, x).clamp_(0, 1)
    return x.contiguous(memory_format=torch.channels_last).to(dtype)
