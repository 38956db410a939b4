"""1-Lipschitz building blocks. A layer knows nothing about models or the hub."""
from .base import LipschitzModule, ParametrizationCache, lipschitz_bound_of
from .heads import HEAD_RULES, LLN
from .normalize import InputNormalize
from .shapes import ChannelPad, CloneChannels, FirstChannels, PixelUnshuffle, SLLAvgPool, SumPool2d
from .sll import SLLConv2d, SLLLinear

__all__ = [
    "LipschitzModule", "ParametrizationCache", "lipschitz_bound_of", "HEAD_RULES", "LLN", "InputNormalize",
    "ChannelPad", "CloneChannels", "FirstChannels", "PixelUnshuffle", "SLLAvgPool", "SumPool2d",
    "SLLConv2d", "SLLLinear",
]
