"""Architectures of the four families, registered in timm's registry on import."""
from ._base import HeadReplacementError, LipschitzClassifier
from ._builder import ARCHS
from . import sll  # noqa: F401

for _family in ("soc", "lot", "sandwich", "aol", "cpl", "cayley", "bcop"):
    try:  # families land one by one; a missing module must not break the others
        __import__(f"{__name__}.{_family}")
    except ModuleNotFoundError as _e:
        if _e.name != f"{__name__}.{_family}":
            raise

__all__ = ["ARCHS", "LipschitzClassifier", "HeadReplacementError"]
