"""R(2+1)D-10 in VCOP's variant, as RSPNet builds it (NOT torchvision's r2plus1d_18).

Every (2+1)D conv (``SpatioTemporalConv``) is a spatial (1,k,k) conv without bias → BN →
ReLU → temporal (t,1,1) conv without bias, with the intermediate width
``M = ⌊t·k²·in·out / (k²·in + t·out)⌋`` (the parameter count of the full t×k×k conv); spatial
stride on the spatial conv, temporal stride on the temporal one. One residual block per stage;
the downsampling shortcut is itself a factorised 1×1×1 conv (stride 2) + BN. Stem: (3,7,7)
conv, stride (1,2,2), + BN + ReLU, no max-pool. A 16×112×112 clip gives 512×2×7×7; 14.37 M
parameters at width 1.

Stages: 1 ``stem`` (conv1, bn1, relu1), 2..5 ``conv2``..``conv5`` (64, 128, 256, 512 channels
times the width multiplier; conv3..conv5 halve T, H and W).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

StageBuild = Callable[[], list[tuple[str, nn.Module]]]


def intermediate_width(cin: int, cout: int, t: int, k: int) -> int:
    """VCOP/RSPNet's M = ⌊t·k²·in·out / (k²·in + t·out)⌋."""
    return (t * k * k * cin * cout) // (k * k * cin + t * cout)


class SpatioTemporalConv(nn.Module):
    """(1,k,k) spatial conv → BN → ReLU → (t,1,1) temporal conv; no biases."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1),
                 padding: tuple[int, int] = (0, 0)) -> None:
        """``kernel``, ``stride``, ``padding`` are (temporal, spatial) pairs."""
        super().__init__()
        t, k = kernel
        st, ss = stride
        pt, ps = padding
        mid = intermediate_width(cin, cout, t, k)
        self.spatial_conv = nn.Conv3d(cin, mid, (1, k, k), stride=(1, ss, ss), padding=(0, ps, ps), bias=False)
        self.bn = nn.BatchNorm3d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.temporal_conv = nn.Conv3d(mid, cout, (t, 1, 1), stride=(st, 1, 1), padding=(pt, 0, 0), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal_conv(self.relu(self.bn(self.spatial_conv(x))))


class SpatioTemporalResBlock(nn.Module):
    """conv1 → bn1 → ReLU → conv2 → bn2, plus (factorised-conv) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, downsample: bool) -> None:
        super().__init__()
        s = 2 if downsample else 1
        self.downsample = downsample
        if downsample:
            self.downsampleconv = SpatioTemporalConv(cin, cout, (1, 1), stride=(2, 2))
            self.downsamplebn = nn.BatchNorm3d(cout)
        self.conv1 = SpatioTemporalConv(cin, cout, (3, 3), stride=(s, s), padding=(1, 1))
        self.bn1 = nn.BatchNorm3d(cout)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = SpatioTemporalConv(cout, cout, (3, 3), padding=(1, 1))
        self.bn2 = nn.BatchNorm3d(cout)
        self.outrelu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsamplebn(self.downsampleconv(x)) if self.downsample else x
        res = self.relu1(self.bn1(self.conv1(x)))
        res = self.bn2(self.conv2(res))
        return self.outrelu(shortcut + res)


class SpatioTemporalResLayer(nn.Module):
    """One stage: ``block1`` (RSPNet's R(2+1)D-10 has exactly one block per stage)."""

    def __init__(self, cin: int, cout: int, downsample: bool) -> None:
        super().__init__()
        self.block1 = SpatioTemporalResBlock(cin, cout, downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block1(x)


def r2plus1d10_stages(ch: Callable[[int], int]) -> list[tuple[str, int, StageBuild]]:
    """``(stage name, output channels, builder)`` for the stem and conv2..conv5."""
    c64, c128, c256, c512 = ch(64), ch(128), ch(256), ch(512)

    def stem() -> list[tuple[str, nn.Module]]:
        return [
            ("conv1", SpatioTemporalConv(3, c64, (3, 7), stride=(1, 2), padding=(1, 3))),
            ("bn1", nn.BatchNorm3d(c64)),
            ("relu1", nn.ReLU(inplace=True)),
        ]

    def layer(name: str, cin: int, cout: int, downsample: bool) -> StageBuild:
        return lambda: [(name, SpatioTemporalResLayer(cin, cout, downsample))]

    return [("stem", c64, stem),
            ("conv2", c64, layer("conv2", c64, c64, False)),
            ("conv3", c128, layer("conv3", c64, c128, True)),
            ("conv4", c256, layer("conv4", c128, c256, True)),
            ("conv5", c512, layer("conv5", c256, c512, True))]
