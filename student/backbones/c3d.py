"""C3D with batch norm, as RSPNet builds it (module names match its released backbone keys).

Eight 3×3×3 convs (padding 1, with bias), each followed by BatchNorm3d and ReLU; channels
64, 128, 256×2, 512×2, 512×2 (times the width multiplier); max-pools (1,2,2) after conv1 and
(2,2,2) after conv2, conv3b and conv4b; no pool after conv5b. A 16×112×112 clip gives a
512×2×7×7 feature map; 27.66 M parameters at width 1.

Stages (the unit of the f_l / high-level split):
    1 ``conv1``: conv1, bn1, relu1, pool1       (64 ch,  T×56×56 for 112² input)
    2 ``conv2``: conv2, bn2, relu2, pool2       (128 ch, T/2×28×28)
    3 ``conv3``: conv3a/b (+bn, relu), pool3    (256 ch, T/4×14×14)
    4 ``conv4``: conv4a/b (+bn, relu), pool4    (512 ch, T/8×7×7)
    5 ``conv5``: conv5a/b (+bn, relu)           (512 ch, T/8×7×7)
"""
from __future__ import annotations

from typing import Callable

from torch import nn

StageBuild = Callable[[], list[tuple[str, nn.Module]]]


def _conv_bn_relu(suffix: str, cin: int, cout: int) -> list[tuple[str, nn.Module]]:
    return [
        (f"conv{suffix}", nn.Conv3d(cin, cout, kernel_size=3, padding=1, bias=True)),
        (f"bn{suffix}", nn.BatchNorm3d(cout)),
        (f"relu{suffix}", nn.ReLU(inplace=True)),
    ]


def c3d_stages(ch: Callable[[int], int]) -> list[tuple[str, int, StageBuild]]:
    """``(stage name, output channels, builder)`` for each of C3D's five stages.

    ``ch`` maps a full-width channel count to the scaled one (the width multiplier).
    """
    c64, c128, c256, c512 = ch(64), ch(128), ch(256), ch(512)

    def stage1() -> list[tuple[str, nn.Module]]:
        return _conv_bn_relu("1", 3, c64) + [("pool1", nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2)))]

    def stage2() -> list[tuple[str, nn.Module]]:
        return _conv_bn_relu("2", c64, c128) + [("pool2", nn.MaxPool3d(2, stride=2))]

    def stage3() -> list[tuple[str, nn.Module]]:
        return (_conv_bn_relu("3a", c128, c256) + _conv_bn_relu("3b", c256, c256)
                + [("pool3", nn.MaxPool3d(2, stride=2))])

    def stage4() -> list[tuple[str, nn.Module]]:
        return (_conv_bn_relu("4a", c256, c512) + _conv_bn_relu("4b", c512, c512)
                + [("pool4", nn.MaxPool3d(2, stride=2))])

    def stage5() -> list[tuple[str, nn.Module]]:
        return _conv_bn_relu("5a", c512, c512) + _conv_bn_relu("5b", c512, c512)

    return [("conv1", c64, stage1), ("conv2", c128, stage2), ("conv3", c256, stage3),
            ("conv4", c512, stage4), ("conv5", c512, stage5)]
