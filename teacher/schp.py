"""SCHP's human-parsing network ("AugmentCE2P", ResNet-101) in plain PyTorch.

Module paths and Sequential indices follow the released checkpoints exactly (603 tensors, the
fusion head spelled ``fushion``), so they load with ``strict=True``. The norm layers use the
in-place-ABN arithmetic (see ``teacher.norm``): 106 plain norms, 13 with leaky ReLU 0.01. All
bilinear resizes inside the network use ``align_corners=True``, as SCHP does.
"""
from __future__ import annotations

from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from teacher.norm import ABNNorm

LAYERS_101 = (3, 4, 23, 3)


def _norm(channels: int) -> ABNNorm:
    return ABNNorm(channels, activation="none")


def _norm_act(channels: int) -> ABNNorm:
    return ABNNorm(channels, activation="leaky_relu")


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class Bottleneck(nn.Module):
    """ResNet bottleneck, stride on the 3×3 conv, optional dilation on the 3×3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = _norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = _norm(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _norm(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class PSPModule(nn.Module):
    """Pyramid pooling context: pools to 1, 2, 3, 6, projects, upsamples, concatenates with the input."""

    def __init__(self, features: int = 2048, out_features: int = 512, sizes: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(s), nn.Conv2d(features, out_features, 1, bias=False), _norm_act(out_features)
            )
            for s in sizes
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(features + len(sizes) * out_features, out_features, 3, padding=1, bias=False),
            _norm_act(out_features),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        size = (feats.shape[2], feats.shape[3])
        priors = [_resize(stage(feats), size) for stage in self.stages] + [feats]
        return self.bottleneck(torch.cat(priors, dim=1))


class EdgeModule(nn.Module):
    """Edge branch on layer1/2/3; returns (edge logits at layer1 size, 768-channel edge features)."""

    def __init__(self, in_channels: tuple[int, int, int] = (256, 512, 1024), mid: int = 256, out: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels[0], mid, 1, bias=False), _norm_act(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(in_channels[1], mid, 1, bias=False), _norm_act(mid))
        self.conv3 = nn.Sequential(nn.Conv2d(in_channels[2], mid, 1, bias=False), _norm_act(mid))
        self.conv4 = nn.Conv2d(mid, out, 3, padding=1, bias=True)
        self.conv5 = nn.Conv2d(out * 3, out, 1, bias=True)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = (x1.shape[2], x1.shape[3])
        fea1, fea2, fea3 = self.conv1(x1), self.conv2(x2), self.conv3(x3)
        edges = [_resize(self.conv4(f), size) if i else self.conv4(f) for i, f in enumerate((fea1, fea2, fea3))]
        feas = [fea1, _resize(fea2, size), _resize(fea3, size)]
        return self.conv5(torch.cat(edges, dim=1)), torch.cat(feas, dim=1)


class DecoderModule(nn.Module):
    """Parsing decoder: context (upsampled) + layer1 skip; returns (parsing logits, 256-channel features)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(512, 256, 1, bias=False), _norm_act(256))
        self.conv2 = nn.Sequential(nn.Conv2d(256, 48, 1, bias=False), _norm_act(48))
        self.conv3 = nn.Sequential(
            nn.Conv2d(304, 256, 1, bias=False), _norm_act(256),
            nn.Conv2d(256, 256, 1, bias=False), _norm_act(256),
        )
        self.conv4 = nn.Conv2d(256, num_classes, 1, bias=True)

    def forward(self, context: torch.Tensor, low: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        top = _resize(self.conv1(context), (low.shape[2], low.shape[3]))
        fea = self.conv3(torch.cat([top, self.conv2(low)], dim=1))
        return self.conv4(fea), fea


class SCHPOutputs(NamedTuple):
    fusion: torch.Tensor   # (N, C, ≈S/4, ≈S/4): the parsing output SCHP's tools use
    parsing: torch.Tensor  # (N, C, ≈S/4, ≈S/4): decoder-only parsing logits
    edge: torch.Tensor     # (N, 2, ≈S/4, ≈S/4)


class AugmentCE2P(nn.Module):
    """SCHP's parsing network. ``forward`` returns the fusion logits; ``forward_all`` all three heads."""

    def __init__(self, num_classes: int, layers: tuple[int, int, int, int] = LAYERS_101) -> None:
        super().__init__()
        self.num_classes = num_classes
        # deep stem
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        self.bn1 = _norm(64)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1, bias=False)
        self.bn2 = _norm(64)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1, bias=False)
        self.bn3 = _norm(128)
        self.relu3 = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = 128
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=2)
        self.context_encoding = PSPModule(2048, 512)
        self.edge = EdgeModule()
        self.decoder = DecoderModule(num_classes)
        self.fushion = nn.Sequential(
            nn.Conv2d(1024, 256, 1, bias=False), _norm_act(256), nn.Dropout2d(0.1),
            nn.Conv2d(256, num_classes, 1, bias=True),
        )

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self._inplanes, planes * 4, 1, stride=stride, bias=False), _norm(planes * 4)
        )
        layers = [Bottleneck(self._inplanes, planes, stride, dilation, downsample)]
        self._inplanes = planes * 4
        layers += [Bottleneck(self._inplanes, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.maxpool(x)

    def forward_all(self, x: torch.Tensor) -> SCHPOutputs:
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        context = self.context_encoding(x4)
        parsing, parsing_fea = self.decoder(context, x1)
        edge, edge_fea = self.edge(x1, x2, x3)
        fusion = self._fusion_fp32_logits(torch.cat([parsing_fea, edge_fea], dim=1))
        return SCHPOutputs(fusion, parsing, edge)

    def _fusion_fp32_logits(self, features: torch.Tensor) -> torch.Tensor:
        """The fusion head (1×1 convolutions over the 1024 concatenated features) outside autocast, in float32.

        Why: under bf16 autocast the logits are rounded to 8 mantissa bits, which moves the cached softmax
        targets by up to ~0.04 on logits of SCHP's range (fp16: ~0.005). In float32 this head halves the bf16
        error, at about 3 % of the network's FLOPs; ``teacher.amp = auto`` also picks fp16 on GPUs.
        """
        kind = features.device.type
        if kind not in ("cpu", "cuda") or not torch.is_autocast_enabled(kind):
            return self.fushion(features)
        with torch.autocast(kind, enabled=False):  # the weights' own dtype (float32 normally)
            return self.fushion(features.to(cast(torch.Tensor, self.fushion[0].weight).dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).fusion


def build_schp(num_classes: int) -> AugmentCE2P:
    """The ResNet-101 AugmentCE2P network for ``num_classes`` (20 LIP, 18 ATR, 7 Pascal-Person-Part)."""
    return AugmentCE2P(num_classes)
