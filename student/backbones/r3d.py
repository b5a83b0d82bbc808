"""R3D-18 as RSPNet builds it (torchvision-style names: conv1, bn1, layer1..4, downsample.0/1).

Stem: 7×7×7 conv (stride (1,2,2), padding 3, no bias) + BN + ReLU + 3×3×3 max-pool stride 2
(padding 1); then BasicBlocks [2, 2, 2, 2] with 64, 128, 256, 512 channels (times the width
multiplier), stride 2 in the first block of layer2..4 with a 1×1×1 conv + BN shortcut. A
16×112×112 clip gives 512×1×4×4; 33.2 M parameters at width 1.

Stages: 1 ``stem`` (conv1, bn1, relu, maxpool), 2..5 ``layer1``..``layer4``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

StageBuild = Callable[[], list[tuple[str, nn.Module]]]


class BasicBlock(nn.Module):
    """Two 3×3×3 convs with BN; identity or 1×1×1-conv shortcut; ReLU after the sum."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm3d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


def _layer(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride),
                         *[BasicBlock(cout, cout) for _ in range(blocks - 1)])


def r3d18_stages(ch: Callable[[int], int]) -> list[tuple[str, int, StageBuild]]:
    """``(stage name, output channels, builder)`` for the stem and layer1..layer4."""
    c64, c128, c256, c512 = ch(64), ch(128), ch(256), ch(512)

    def stem() -> list[tuple[str, nn.Module]]:
        return [
            ("conv1", nn.Conv3d(3, c64, 7, stride=(1, 2, 2), padding=3, bias=False)),
            ("bn1", nn.BatchNorm3d(c64)),
            ("relu", nn.ReLU(inplace=True)),
            ("maxpool", nn.MaxPool3d(3, stride=2, padding=1)),
        ]

    def layer(name: str, cin: int, cout: int, stride: int) -> StageBuild:
        return lambda: [(name, _layer(cin, cout, 2, stride))]

    return [("stem", c64, stem),
            ("layer1", c64, layer("layer1", c64, c64, 1)),
            ("layer2", c128, layer("layer2", c64, c128, 2)),
            ("layer3", c256, layer("layer3", c128, c256, 2)),
            ("layer4", c512, layer("layer4", c256, c512, 2))]
