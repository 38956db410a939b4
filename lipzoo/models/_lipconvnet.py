"""The LipConvNet skeleton (Singla & Feizi, SOC ICML'21 ``LipConvNet``; the LOT repo trains the same net with LOT
layers), written once for the families that use it.

Five stages; stage ``s`` has ``b_s`` blocks: the first ``b_s - 1`` are 3x3 stride 1, the last is stride 2 (3x3 in
stages 1-4, 1x1 in stage 5) and doubles the channels. Widths ``3 -> c`` (stage-1 inner blocks, at the input side)
``-> 2c @ side/2 -> 4c @ side/4 -> 8c -> 16c -> 32c @ side/32`` with ``c = init_channels``.
"""
from __future__ import annotations

from typing import Callable, Sequence

from torch import nn

__all__ = ["NUM_STAGES", "lipconvnet_stages"]

NUM_STAGES = 5

# make_block(c_in, c_out, kernel_size, stride, side): one block (conv + activation) at input side ``side``
BlockFactory = Callable[[int, int, int, int, int], nn.Module]


def lipconvnet_stages(blocks_per_stage: Sequence[int], init_channels: int, input_size: int,
                      make_block: BlockFactory) -> tuple[list[list[nn.Module]], int, int]:
    """The blocks of each stage, built in order by ``make_block``; returns ``(stages, channels, side)`` of the output."""
    if len(blocks_per_stage) != NUM_STAGES or min(blocks_per_stage) < 1:
        raise ValueError(f"block_size must be >= 1 or {NUM_STAGES} values >= 1, got {list(blocks_per_stage)}")
    stages, c_in, side = [], 3, input_size
    for s, b in enumerate(blocks_per_stage):
        planes = init_channels if s == 0 else c_in
        blocks = []
        for j in range(b):
            stride, k = (2, 1 if s == NUM_STAGES - 1 else 3) if j == b - 1 else (1, 3)
            blocks.append(make_block(c_in, planes * stride, k, stride, side))
            c_in, side = planes * stride, side // stride
        stages.append(blocks)
    return stages, c_in, side
