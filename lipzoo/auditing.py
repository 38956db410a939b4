"""Independent checks of a model's certification claims (lower bounds against the declared upper bounds).

Every check *searches* for a counter-example; none can prove a claim, each can refute one:

* **layers** — for each part named by ``model.layer_bounds()`` (with ``deep=True`` also every nested module that
  states a ``lipschitz_bound()``; the head is skipped for the ``"lln"``/``"mlp_curvature"`` rules, whose
  certificates do not use its Lipschitz constant), a power iteration on ``J^T J`` (``torch.func`` JVP/VJP) at the module's
  actual inputs (plus noisy copies) estimates the local Lipschitz constant ``||J||_2`` from below. An estimate
  above the declared bound by more than ``rtol`` (1e-4 relative) refutes the bound.
* **model** — the same power iteration on the whole certified map (``x -> forward_features(x)`` for the
  ``"lln"``/``"mlp_curvature"`` rules, ``x -> logits`` otherwise) and a gradient ascent on
  ``||F(x) - F(y)|| / ||x - y||`` from test points, against ``model.lipschitz_bound()``; plus the consistency
  ``model.lipschitz_bound() >= prod(layer_bounds)``.
* **pgd** — PGD-l2 (margin loss, many steps, random restarts) on certified points, each attacked inside its own
  certified radius. Any change of prediction refutes the certifier.
* **rounding** — float32 vs float64 logits on the probe images against the certifier's rounding slack
  (``lipzoo.certification.rounding_slack``): ``2 max_j |z32_j - z64_j|`` must not exceed it.

A failed check emits an :class:`AuditWarning` and makes ``report.ok`` False.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._numerics import certification_context
from .certification import certified_radius, rule_of

__all__ = ["audit", "AuditReport", "LayerCheck", "AuditWarning", "jacobian_norm"]


class AuditWarning(UserWarning):
    """A certification claim was refuted by the audit."""


@dataclass
class LayerCheck:
    name: str
    declared: float
    estimate: float  # largest ||J v|| / ||v|| found (a lower bound of the layer's Lipschitz constant)
    ok: bool
    note: str = ""


@dataclass
class AuditReport:
    head_rule: str
    lipschitz_bound: float
    layers: list[LayerCheck]
    product_of_layer_bounds: float
    model_estimate: float  # largest ratio/Jacobian norm found for the certified map
    model_ok: bool
    pgd: dict[str, Any]
    rounding: dict[str, Any]
    rtol: float
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def summary(self) -> str:
        head = "AUDIT PASSED" if self.ok else "AUDIT FAILED"
        lines = [f"{head}: head_rule={self.head_rule}, declared Lipschitz bound {self.lipschitz_bound:.7g}"]
        lines += [f"  !! {p}" for p in self.problems]
        lines.append(f"  {'layer':<32} {'declared':>12} {'estimate':>12}  ")
        for lc in self.layers:
            mark = "ok" if lc.ok else "ABOVE BOUND"
            lines.append(f"  {lc.name:<32} {lc.declared:>12.7g} {lc.estimate:>12.7g}  {mark} {lc.note}".rstrip())
        mark = "ok" if self.model_ok else "ABOVE BOUND"
        lines.append(f"  {'whole certified map':<32} {self.lipschitz_bound:>12.7g} {self.model_estimate:>12.7g}  {mark}")
        p = self.pgd
        lines.append(f"  PGD-l2 inside certified radii: {p['n_violations']} violations / {p['n_attacked']} points "
                     f"({p['steps']} steps x {p['restarts']} restarts; closest margin ratio "
                     f"{p['closest_margin_ratio']:.3g})")
        r = self.rounding
        if r.get("checked"):
            lines.append(f"  float32 logit error / certifier slack: {r['worst_ratio']:.3g} (must be <= 1)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# --------------------------------------------------------------------------------------- power iteration
def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _scale(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return t * s.view(-1, *([1] * (t.dim() - 1)))


def _jvp_fn(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """``(v -> J v, u -> J^T u)`` at ``x``: torch.func, or autograd double-backward if an op lacks forward AD."""
    _, vjp_fn = torch.func.vjp(fn, x)

    def jtu(u: torch.Tensor) -> torch.Tensor:
        return vjp_fn(u)[0]

    def jv_func(v: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(fn, (x,), (v,))[1]

    def jv_autograd(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            y = fn(xx)
            u = torch.zeros_like(y, requires_grad=True)
            (g,) = torch.autograd.grad(y, xx, u, create_graph=True)
            (jv,) = torch.autograd.grad(g, u, v)
        return jv

    state = {"forward_ad": True}

    def jv(v: torch.Tensor) -> torch.Tensor:
        if state["forward_ad"]:
            try:
                return jv_func(v)
            except (RuntimeError, NotImplementedError):
                state["forward_ad"] = False
        return jv_autograd(v)

    return jv, jtu


def jacobian_norm(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int = 20,
                  seed: int = 0) -> torch.Tensor:
    """Per-sample power-iteration estimate of ``||J_fn(x_i)||_2`` (a lower bound), for a batch ``x`` whose
    samples are processed independently by ``fn``."""
    x = x.detach()
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
    v = _scale(v, 1 / _per_sample_norm(v).clamp_min(1e-30))
    jv, jtu = _jvp_fn(fn, x)
    best = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(iters):
        u = jv(v).detach()
        best = torch.maximum(best, _per_sample_norm(u).double().cpu())
        w = jtu(u).detach()
        v = _scale(w, 1 / _per_sample_norm(w).clamp_min(1e-30))
    return torch.maximum(best, _per_sample_norm(jv(v).detach()).double().cpu())


# ---------------------------------------------------------------------------------------------- helpers
def _modules_to_check(model: nn.Module, top: list[tuple[str, float]], deep: bool) -> list[tuple[str, nn.Module, float]]:
    from .layers.base import lipschitz_bound_of

    rule = rule_of(model)
    out: list[tuple[str, nn.Module, float]] = []
    seen: set[int] = set()
    for name, bound in top:
        m = model.get_submodule(name)
        out.append((name, m, float(bound)))
        seen.add(id(m))
    if deep:
        if not rule.covers_head:  # the head's own Lipschitz constant is not part of the claim
            seen.update(id(m) for m in model.get_classifier().modules())
        for name, m in model.named_modules():
            if not name or id(m) in seen or not callable(getattr(m, "lipschitz_bound", None)):
                continue
            out.append((name, m, float(lipschitz_bound_of(m))))
            seen.add(id(m))
    return out


def _capture_inputs(model: nn.Module, modules: list[tuple[str, nn.Module, float]], x: torch.Tensor) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    handles = []
    for name, m, _ in modules:
        def hook(mod, args, _name=name):
            if _name not in inputs:
                inputs[_name] = args[0].detach() if len(args) == 1 and torch.is_tensor(args[0]) else None
        handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return inputs


def _pair_ascent(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, steps: int, seed: int) -> float:
    """Largest ``||fn(a) - fn(b)|| / ||a - b||`` found by Adam ascent from ``a = x``, ``b = x + small noise``."""
    gen = torch.Generator().manual_seed(seed + 1)
    a = x.detach().clone().requires_grad_(True)
    noise = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(x)
    b = (x.detach() + 0.05 * _scale(noise, 1 / _per_sample_norm(noise))).requires_grad_(True)
    opt = torch.optim.Adam([a, b], lr=1e-2)
    best = 0.0
    for _ in range(max(steps, 1)):
        with torch.enable_grad():
            ratio = _per_sample_norm(fn(a) - fn(b)) / _per_sample_norm(a - b).clamp_min(1e-12)
            a.grad, b.grad = torch.autograd.grad(-ratio.sum(), [a, b])
        best = max(best, float(ratio.detach().max()))
        opt.step()
    with torch.no_grad():
        ratio = _per_sample_norm(fn(a) - fn(b)) / _per_sample_norm(a - b).clamp_min(1e-12)
    return max(best, float(ratio.max()))


def _pgd_probe(model: nn.Module, x: torch.Tensor, pred: torch.Tensor, radius: torch.Tensor, steps: int,
               restarts: int, seed: int, tick: Callable[[], Any] = lambda: None) -> dict[str, Any]:
    """PGD-l2 with a margin loss inside each point's own radius; counts prediction changes at any iterate.
    ``tick()`` is called after every step."""
    n = len(x)
    flipped = torch.zeros(n, dtype=torch.bool)
    closest = torch.ones(n, dtype=torch.float64)
    if n == 0:
        return {"n_attacked": 0, "n_violations": 0, "steps": steps, "restarts": restarts,
                "closest_margin_ratio": 1.0, "violating_indices": []}
    gen = torch.Generator().manual_seed(seed + 2)
    r = radius.to(x.dtype).view(-1, 1) * (1 - 1e-6)
    onehot = F.one_hot(pred, num_classes=int(model(x[:1]).shape[1])).bool().to(x.device)

    def margin(z: torch.Tensor) -> torch.Tensor:  # top-class logit minus the best other one
        return z.gather(1, pred[:, None]).squeeze(1) - z.masked_fill(onehot, float("-inf")).max(1).values

    with torch.no_grad():
        m0 = margin(model(x)).double().cpu().clamp_min(1e-30)
    flat = x.flatten(1)

    def image(delta: torch.Tensor) -> torch.Tensor:
        out = (flat + delta).reshape(x.shape)
        return out.contiguous(memory_format=torch.channels_last) if out.dim() == 4 else out

    for restart in range(restarts):
        d = torch.randn(flat.shape, generator=gen, dtype=torch.float64).to(x)
        u = torch.rand(n, 1, generator=gen, dtype=torch.float64).to(x) if restart else torch.zeros(n, 1, dtype=x.dtype, device=x.device)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-30) * r * u
        step = 2.5 * r / max(steps, 1)
        for _ in range(steps):
            d.requires_grad_(True)
            with torch.enable_grad():
                z = model(image(d))
                m = margin(z)
                (g,) = torch.autograd.grad(-m.sum(), d)
            with torch.no_grad():
                flipped |= (z.argmax(1) != pred).cpu()
                closest = torch.minimum(closest, m.double().cpu() / m0)
                d = d + step * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
                d = d * torch.clamp(r / d.norm(dim=1, keepdim=True).clamp_min(1e-30), max=1.0)
            tick()
        with torch.no_grad():
            z = model(image(d))
            flipped |= (z.argmax(1) != pred).cpu()
            closest = torch.minimum(closest, margin(z).double().cpu() / m0)
    return {"n_attacked": n, "n_violations": int(flipped.sum()), "steps": steps, "restarts": restarts,
            "closest_margin_ratio": float(closest.min()), "violating_indices": flipped.nonzero().flatten().tolist()}


def _rounding_check(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    params = list(model.parameters())
    if not params or params[0].dtype != torch.float32:
        return {"checked": False}
    m64 = copy.deepcopy(model).double().eval()
    rule = rule_of(model)
    with torch.no_grad():
        z32, f32 = rule.logits_and_features(model, x)
        z64, _ = rule.logits_and_features(m64, x.double())
    err = 2 * (z32.double() - z64).abs().max(dim=1).values.cpu()
    slack = rule.slack(z32.cpu(), None if f32 is None else f32.flatten(1).cpu(), torch.float32)
    ratio = err / slack
    return {"checked": True, "worst_ratio": float(ratio.max()), "max_logit_error": float(err.max() / 2),
            "ok": bool((ratio <= 1).all())}


# ------------------------------------------------------------------------------------------------ audit
def audit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    n_probe: int = 4,
    power_iters: int = 10,
    pgd_steps: int = 25,
    restarts: int = 2,
    n_attack: int = 16,
    pair_steps: int = 10,
    deep: bool = False,
    rtol: float = 1e-4,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    rounding: bool = True,
    progress: bool = False,
) -> AuditReport:
    """Audit ``model`` (see the module docstring) on test ``images`` in [0, 1] (N, C, H, W).

    ``n_probe`` images feed the Jacobian and ratio checks; up to ``n_attack`` points with a positive certified
    radius (correct ones only when ``labels`` are given) are attacked with ``pgd_steps`` x ``restarts`` PGD-l2.
    ``pair_steps`` Adam steps search for a large ``||F(x) - F(y)|| / ||x - y||``. ``dtype`` float64 audits in float64
    (tighter layer estimates). ``rounding=False`` skips the float32-vs-float64 check (it recomputes every
    parametrisation in float64). The defaults are CI-sized; ``lipzoo audit`` uses larger ones. ``progress`` shows a
    bar per phase (layers, whole map, PGD, rounding) on stderr.

    The model is audited in eval mode with its parameters frozen (gradients flow only to the inputs); its
    modes and ``requires_grad`` flags are restored afterwards and its weights are never written. It runs in the
    certification context (IEEE float32, no autocast; each parametrisation recomputed once from the current
    parameters, then reused for the whole audit). A ``dtype`` other than the model's works on a converted copy.
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError("audit in float32 or float64")
    params = list(model.parameters())
    if params and any(p.dtype != dtype for p in params):
        model = copy.deepcopy(model).to(dtype)
    # the certification context: IEEE float32, no autocast, every parametrisation recomputed once from the
    # current parameters (a cache never vouches for an audit)
    with _frozen(model), certification_context():
        return _audit(model, images, labels, n_probe, power_iters, pgd_steps, restarts, n_attack, pair_steps, deep,
                      rtol, dtype, seed, rounding, progress)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without parameter gradients; every module's mode and flag restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:  # parents first: a child is corrected after its parent's recursive train()
            if m.training != mode:
                m.train(mode)


def _audit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, n_probe: int, power_iters: int,
           pgd_steps: int, restarts: int, n_attack: int, pair_steps: int, deep: bool, rtol: float,
           dtype: torch.dtype, seed: int, rounding: bool, progress: bool = False) -> AuditReport:
    from . import _progress

    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    images = images.to(device=device, dtype=dtype)
    if images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    probe = images[:n_probe]
    rule = rule_of(model)
    bound = float(model.lipschitz_bound())
    problems: list[str] = []
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    phases = _progress.bar(4, "audit", show=progress, unit="phase")
    phases.set_postfix_str("layer bounds vs power iteration")
    top = [(n, float(b)) for n, b in model.layer_bounds()] if callable(getattr(model, "layer_bounds", None)) else []
    checks = _check_layers(model, _modules_to_check(model, top, deep), probe, power_iters, rtol, seed)
    problems += [f"layer {c.name}: power iteration found ||J|| = {c.estimate:.7g} > declared bound {c.declared:.7g}"
                 for c in checks if not c.ok]
    product = math.prod(b for _, b in top) if top else 0.0
    if product > bound * (1 + 1e-9):
        problems.append(f"model.lipschitz_bound() = {bound:.7g} is below the product of its parts' bounds {product:.7g}")
    seconds["layers"], clock = time.perf_counter() - clock, time.perf_counter()
    phases.update()
    phases.set_postfix_str("whole certified map")

    fmap = rule.certified_output(model)
    model_est = float(jacobian_norm(fmap, probe, power_iters, seed).max())
    if pair_steps > 0:
        model_est = max(model_est, _pair_ascent(fmap, probe, pair_steps, seed))
    model_ok = model_est <= bound * (1 + rtol)
    if not model_ok:
        problems.append(f"the certified map ({rule.certified_map_name}) has a local "
                        f"Lipschitz constant >= {model_est:.7g} > declared {bound:.7g}")
    seconds["model"], clock = time.perf_counter() - clock, time.perf_counter()
    phases.update()
    phases.set_postfix_str(f"PGD inside the certified radii ({restarts} x {pgd_steps} steps)")

    pgd = _check_pgd(model, images, labels, n_attack, pgd_steps, restarts, dtype, bound, seed, progress)
    if pgd["n_violations"]:
        problems.append(f"PGD changed the prediction of {pgd['n_violations']} of {pgd['n_attacked']} points "
                        f"inside their certified radius (indices {pgd['violating_indices'][:10]})")
    seconds["pgd"], clock = time.perf_counter() - clock, time.perf_counter()
    phases.update()
    phases.set_postfix_str("float32 vs float64 logits")

    rounded = _rounding_check(model, probe) if dtype == torch.float32 and rounding else {"checked": False}
    if rounded.get("checked") and not rounded["ok"]:
        problems.append(f"float32 logit error is {rounded['worst_ratio']:.3g}x the certifier's rounding slack")
    seconds["rounding"] = time.perf_counter() - clock
    phases.update()
    phases.close()

    report = AuditReport(rule.name, bound, checks, product, model_est, model_ok, pgd, rounded, rtol, problems,
                         {k: round(v, 3) for k, v in seconds.items()})
    for p in problems:
        warnings.warn(f"lipzoo audit: {p}", AuditWarning, stacklevel=3)
    return report


def _check_layers(model: nn.Module, modules: list[tuple[str, nn.Module, float]], probe: torch.Tensor, iters: int,
                  rtol: float, seed: int) -> list[LayerCheck]:
    inputs = _capture_inputs(model, modules, probe)
    gen = torch.Generator().manual_seed(seed)
    checks: list[LayerCheck] = []
    for name, m, declared in modules:
        xin = inputs.get(name)
        if xin is None:
            checks.append(LayerCheck(name, declared, float("nan"), True, "(not called, or a non-tensor input)"))
            continue
        # the actual inputs, and copies with noise of half their norm
        noise = torch.randn(xin.shape, generator=gen, dtype=torch.float64).to(xin)
        noisy = xin + _scale(noise, 0.5 * _per_sample_norm(xin).clamp_min(1e-3) / _per_sample_norm(noise))
        est = float(jacobian_norm(m, torch.cat([xin, noisy]), iters, seed).max())
        checks.append(LayerCheck(name, declared, est, est <= declared * (1 + rtol)))
    return checks


def _check_pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, n_attack: int, steps: int,
               restarts: int, dtype: torch.dtype, bound: float, seed: int, progress: bool = False) -> dict[str, Any]:
    radii, pred = certified_radius(model, images, dtype=dtype, return_predictions=True, lipschitz_bound=bound)
    sel = radii > 0
    if labels is not None:
        sel &= pred == torch.as_tensor(labels).long().cpu()[: len(pred)]
    idx = sel.nonzero().flatten()[:n_attack]
    dev = images.device
    from . import _progress

    with _progress.bar(restarts * steps, f"PGD on {len(idx)} points", show=progress, unit="step") as bar:
        pgd = _pgd_probe(model, images[idx.to(dev)], pred[idx].to(dev), radii[idx].to(dev), steps, restarts, seed,
                         bar.update)
    pgd["violating_indices"] = [int(idx[i]) for i in pgd["violating_indices"]]
    pgd["radius_median"] = float(radii[idx].median()) if len(idx) else 0.0
    return pgd
