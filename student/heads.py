"""Heads on the high-level feature maps: the parsing decoder g_h and the projection heads g_m / g_a."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Sequential):
    """RSPNet's head: GAP → Linear(C, proj_dim) → L2 normalise.

    Laid out as RSPNet's ``fc1`` / ``fc2`` (``0`` pool, ``1`` flatten, ``2`` linear), so a released
    head ``encoder_q.fc1.2.*`` (A-VID) / ``encoder_q.fc2.2.*`` (RSP) loads as ``g_a`` / ``g_m``.
    Input (B, C, T, H, W) feature map; output (B, proj_dim), unit rows.
    """

    def __init__(self, in_channels: int, proj_dim: int = 128) -> None:
        super().__init__(nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(in_channels, proj_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(super().forward(z), dim=1)


class ParsingDecoder(nn.Module):
    """g_h: high-level feature map → human-parsing logits at ``parse_size``² (paper Eq. 3).

    z_h (B, C, T, h, w) → mean over T → 3×3 conv (C → mid) + BN + ReLU → 1×1 conv (mid →
    num_parts) → bilinear upsample to (parse_size, parse_size) → logits (B, num_parts, S, S).

    Why this shape: the teacher target is the parsing of the clip's middle frame, a 2-D map,
    so time is averaged away first. The decoder is deliberately light (one 3×3 conv): the
    point of the KD task is to put human-part semantics into z_h, not into a strong decoder
    that could learn parsing on its own. The 1×1 classifier runs BEFORE the upsampling: bilinear
    interpolation is a convex per-pixel combination and a 1×1 conv is per-pixel affine, so the
    two orders give identical logits, and this one upsamples num_parts channels instead of mid.
    ``upscale`` r > 1 (``model.decoder_upscale``): the 1×1 classifier predicts an r×r block of logits
    per feature cell (pixel shuffle) before the bilinear resize. Why: a small input leaves z_h only a
    few cells wide (3×3 for C3D at 48²), narrower than a limb, and bilinear logits cannot draw a
    shape inside a cell; the per-cell linear map adds no spatial context of its own, so the shape
    must still be encoded in z_h. r = 1 is the plain decoder (same weights and state-dict shapes).
    Upsampling uses ``align_corners=False`` (pixel-edge convention, the same one the cached
    teacher maps are cut and resampled with).
    """

    def __init__(self, in_channels: int, num_parts: int = 7, parse_size: int = 28,
                 mid_channels: int | None = None, upscale: int = 1) -> None:
        super().__init__()
        mid = mid_channels if mid_channels is not None else max(8, in_channels // 2)
        if upscale < 1:
            raise ValueError(f"ParsingDecoder: upscale must be >= 1, got {upscale}")
        self.parse_size = parse_size
        self.upscale = upscale
        self.conv = nn.Conv2d(in_channels, mid, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = nn.Conv2d(mid, num_parts * upscale * upscale, 1)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 5:
            raise ValueError(f"ParsingDecoder: expected a (B, C, T, H, W) feature map, got shape {tuple(z.shape)}")
        x = self.classifier(self.relu(self.bn(self.conv(z.mean(dim=2)))))
        if self.upscale > 1:
            x = F.pixel_shuffle(x, self.upscale)
        return F.interpolate(x, size=(self.parse_size, self.parse_size), mode="bilinear", align_corners=False)
