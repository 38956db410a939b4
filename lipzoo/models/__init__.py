"""Architectures, registered in timm's registry on import: every non-underscore module here declares one family
(:func:`~lipzoo.models._registry.register_family`); a module that fails to import or declares none is an error."""
from ._base import HeadReplacementError, LipschitzClassifier
from ._registry import ARCHS, FAMILIES, discover_families

discover_families(__name__)

__all__ = ["ARCHS", "FAMILIES", "LipschitzClassifier", "HeadReplacementError"]
