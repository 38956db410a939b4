"""Independent checks shared by the Cayley and BCOP tests: dense operators from basis vectors, and power iteration
on the Jacobian (a lower estimate of the local Lipschitz constant, which every proven bound must dominate)."""
from __future__ import annotations

import torch
from torch.autograd.functional import jvp, vjp


def dense_operator(layer: torch.nn.Module, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The linear part of ``layer`` (bias removed) as a dense float64 matrix: its columns are the responses to the
    unit inputs (basis vectors) of ``in_shape``."""
    n = 1
    for s in in_shape:
        n *= s
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)
    with torch.no_grad():
        zero = layer(torch.zeros(1, *in_shape, dtype=torch.float64))
        return (layer(eye) - zero).reshape(n, -1).T


def jacobian_norm_estimate(f, x: torch.Tensor, iters: int = 30, seed: int = 0) -> float:
    """Power iteration on ``J^T J`` of ``f`` at ``x`` (float64): ``||J v||`` for the final unit vector ``v``, a lower
    estimate of ``||J||_2``."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    v = v / v.norm()
    for _ in range(iters):
        _, u = jvp(f, x, v)
        _, v = vjp(f, x, u)
        v = v / v.norm()
    return float(jvp(f, x, v)[1].norm())


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Move every parameter away from its initialisation (relative Gaussian noise), in place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.add_(scale * noise * (p.detach().abs().mean() + 1e-3))
