"""Certified accuracy against eps, as a plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .eps import DEFAULT_EPS
from .result import CertificationResult

__all__ = ["plot_certified_accuracy"]


def _radii_and_n(obj: Any) -> tuple[np.ndarray, float | None]:
    if isinstance(obj, CertificationResult):
        return obj.radii.numpy(), obj.clean_accuracy
    r = obj.detach().cpu().numpy() if torch.is_tensor(obj) else np.asarray(obj, dtype=np.float64)
    return r.astype(np.float64), None


def plot_certified_accuracy(
    result_or_radii: CertificationResult | torch.Tensor | np.ndarray | Mapping[str, Any],
    path: str | Path,
    title: str | None = None,
    eps_max: float = 1.5,
    marks: Sequence[float] = DEFAULT_EPS,
) -> Path:
    """Plot the fraction of samples certified (correct and radius > eps) against eps in [0, eps_max].

    ``result_or_radii``: a :class:`CertificationResult`, per-sample radii (0 for misclassified), or a mapping
    ``label -> either`` for several curves. The default eps are marked. Writes ``path`` (PNG/SVG/PDF).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    curves = dict(result_or_radii) if isinstance(result_or_radii, Mapping) else {None: result_or_radii}
    grid = np.linspace(0.0, eps_max, 301)
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for label, obj in curves.items():
        radii, clean = _radii_and_n(obj)
        n = max(len(radii), 1)
        frac = (radii[None, :] > grid[:, None]).sum(axis=1) / n
        line, = ax.plot(grid, 100 * frac, label=label)
        ms = [e for e in marks if e <= eps_max]
        ax.plot(ms, [100 * float((radii > e).sum()) / n for e in ms], "o", color=line.get_color(), ms=4)
        if clean is not None:
            ax.plot([0.0], [100 * clean], "s", color=line.get_color(), ms=4)
    for e in marks:
        if e <= eps_max:
            ax.axvline(e, color="0.85", lw=0.8, zorder=0)
    ax.set_xlim(0, eps_max)
    ax.set_ylim(0, 100)
    ax.set_xlabel("l2 radius eps (pixel space, [0, 1] images)")
    ax.set_ylabel("certified accuracy (%)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if any(k is not None for k in curves):
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
