"""Certification radii ``eps``: the default set and their labels (``'36/255'``), as claims records write them."""
from __future__ import annotations

__all__ = ["DEFAULT_EPS", "eps_label", "parse_eps"]

DEFAULT_EPS: tuple[float, ...] = (36 / 255, 72 / 255, 108 / 255, 1.0)


def eps_label(eps: float) -> str:
    """``'36/255'`` when ``eps * 255`` is an integer (``1.0 -> '255/255'``), else ``repr(float(eps))``."""
    k = float(eps) * 255.0
    if abs(k - round(k)) < 1e-9:
        return f"{int(round(k))}/255"
    return repr(float(eps))


def parse_eps(text: str | float) -> float:
    """Inverse of :func:`eps_label`: ``'36/255' -> 0.1411...``, ``'0.5' -> 0.5``."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    if "/" in s:
        num, den = s.split("/", 1)
        return float(num) / float(den)
    return float(s)
