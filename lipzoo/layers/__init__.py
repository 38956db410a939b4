"""1-Lipschitz building blocks. A layer knows nothing about models or the hub."""
from .activations import HouseHolder, HouseHolder2, LipPool, MaxMin, PairMaxPool
from .aol import AOLConv2d, AOLLinear
from .base import LipschitzModule, ParametrizationCache, lipschitz_bound_of
from .bcop import BCOPConv2d, BjorckLinear
from .cayley import CayleyConv2d, CayleyLinear
from .cpl import CPLConv2d, CPLLinear
from .heads import LLN, MLPHead, head_rule_of
from .lot import LOTConv2d, LOTLinear
from .normalize import InputNormalize
from .sandwich import SandwichConv, SandwichConv1, SandwichConv1Lin, SandwichFc, SandwichLin
from .shapes import ChannelPad, CloneChannels, FirstChannels, PixelUnshuffle, SLLAvgPool, SumPool2d
from .sll import SLLConv2d, SLLLinear
from .soc import SOCConv2d, SOCHead

__all__ = [
    "LipschitzModule", "ParametrizationCache", "lipschitz_bound_of", "head_rule_of", "LLN", "MLPHead",
    "InputNormalize", "ChannelPad", "CloneChannels", "FirstChannels", "PixelUnshuffle", "SLLAvgPool", "SumPool2d",
    "MaxMin", "HouseHolder", "HouseHolder2", "LipPool", "PairMaxPool",
    "SOCConv2d", "SOCHead", "LOTConv2d", "LOTLinear",
    "SandwichFc", "SandwichLin", "SandwichConv", "SandwichConv1", "SandwichConv1Lin",
    "SLLConv2d", "SLLLinear",
    "AOLConv2d", "AOLLinear", "CPLConv2d", "CPLLinear",
    "CayleyConv2d", "CayleyLinear", "BCOPConv2d", "BjorckLinear",
]
