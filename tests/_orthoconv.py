"""Independent checks shared by the families' layer and model tests: dense operators from basis vectors, power
iteration on the Jacobian (a lower estimate of the local Lipschitz constant, which every proven bound must dominate),
perturbed random models and the certification of random images."""
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


def add_noise(module: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    """Add Gaussian noise of standard deviation ``scale`` to every parameter, in place; returns ``module``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def dense_matrix(fn, in_shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map ``fn`` on float64 tensors of ``in_shape``, built column by column."""
    n = 1
    for s in in_shape:
        n *= s
    eye = torch.eye(n, dtype=torch.float64).view(n, *in_shape)
    with torch.no_grad():
        return fn(eye).reshape(n, -1).T


def jacobian_power_iteration(f, x: torch.Tensor, iters: int, seed: int) -> float:
    """A lower estimate of ``||J_f(x)||_2``: power iteration on ``J^T J`` with ``torch.func`` jvp / vjp."""
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    v = v / v.norm()
    sigma = 0.0
    for _ in range(iters):
        _, jv = torch.func.jvp(f, (x,), (v,))
        _, vjp_fn = torch.func.vjp(f, x)
        (jtjv,) = vjp_fn(jv)
        sigma = float(jv.norm())
        v = jtjv / jtjv.norm()
    return sigma


def random_model(arch: str, scale: float, seed: int = 0, dtype=torch.float32, **kwargs) -> torch.nn.Module:
    """``lipzoo.create_model(arch)`` in eval mode and ``dtype``, moved off its initialisation by :func:`add_noise`."""
    import lipzoo

    torch.manual_seed(seed)
    return add_noise(lipzoo.create_model(arch, **kwargs).to(dtype).eval(), scale, seed)


def check_certifies_random_images(arch: str, n: int, min_bound: float) -> None:
    """A compact model (1-3M parameters, Lipschitz head rule) certifies ``n`` random images: its bound lies in
    ``[min_bound, 1 + 1e-4]``, radii are finite and non-negative, ``correct`` is ``predictions == labels``."""
    import lipzoo

    torch.manual_seed(0)
    model = lipzoo.create_model(arch)
    assert model.family == arch.split("_")[0] and model.head_rule == "lipschitz"
    assert 1e6 <= sum(p.numel() for p in model.parameters()) <= 3e6
    images = torch.rand(n, 3, 32, 32)
    labels = torch.randint(0, 10, (n,))
    res = lipzoo.certify(model, images, labels)
    assert res.n == n and min_bound <= res.lipschitz_bound <= 1 + 1e-4
    assert (res.radii >= 0).all() and torch.isfinite(res.radii).all()
    assert torch.equal(res.correct, res.predictions == labels)
