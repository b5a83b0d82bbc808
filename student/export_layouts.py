"""Checkpoint key layouts of other codebases, for ``pipeline export``.

Each layout turns ONE backbone state dict with RSPNet's key names (what ``f_l`` + one high-level
encoder hold, see ``student.backbones``) into the file another codebase loads without conversion
code, or refuses, in one line, when that codebase has no module of the same architecture (a
renamed state dict that loads but computes something else would be worse than no file).

What the targets are (facts read from their published code and configs; none of it is used here):
- RSPNet: ``{"arch": ..., "epoch": ..., "model": {"encoder_q.encoder.<backbone key>": ...,
  "encoder_q.fc1.2.*" (A-VID head), "encoder_q.fc2.2.*" (RSP head)}}``; the backbone keys are exactly
  ours. Its ``finetune.py`` (``load_moco_checkpoint``) takes the MoCo branch (prefix ``encoder_q.``)
  only when the file has BOTH ``model`` and ``arch``; otherwise it treats the file as a third-party
  checkpoint, strips nothing and loads with ``strict=False``: every tensor is missed, with only a
  warning. ``retrieval.py`` reads ``epoch`` (an int) and ``model`` with prefix ``encoder_q.encoder.``.
  Its architectures are named ``c3d``, ``r2plus1d-vcop`` and ``resnet18`` and are built at full width
  (no width option), so a narrower backbone cannot load there.
- torchvision ``VideoResNet`` (the class behind ``r3d_18``): ``stem.0`` conv, ``stem.1`` BN;
  ``layerN.i.conv1.0`` conv, ``conv1.1`` BN, ``conv2.0`` conv, ``conv2.1`` BN, ``downsample.0/1``;
  ``fc`` head. ``r3d_18()`` itself builds a 3×7×7 stem conv (padding 1,3,3) and NO max-pool, while
  RSPNet's R3D-18 has a 7×7×7 stem conv and a 3×3×3 max-pool: the same key names, a different
  network. ``VideoResNet(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], stem=<that stem>)`` is the
  same network, so the ``torchvision`` layout targets it and ``torchvision-r3d_18`` refuses.
- MMAction2 (``backbone.`` prefix, ConvModule ``.conv`` / ``.bn`` children): its ``C3D`` ends with
  pool5 + fc6/fc7 (a 4096-d vector; its configs use ``in_channels=4096`` heads); its ``ResNet3d``
  max-pools the stem with a (1, 3, 3) kernel; its ``ResNet2Plus1d`` max-pools after the stem too,
  has depth 18/34, and sizes the middle width of a 1×1×1 (2+1)D shortcut as
  3·in·out / (in + 3·out) where RSPNet's R(2+1)D-10 uses in·out / (in + out). None matches, so
  every MMAction2 request is refused with the reason.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from pipeline.core.errors import CheckpointError
from student.backbones import RSPNET_PREFIX

LAYOUTS: tuple[str, ...] = ("student", "rspnet", "torchvision", "torchvision-r3d_18", "mmaction2")


_MMACTION2_REASONS = {
    "c3d": "MMAction2's C3D ends with pool5 and fc6/fc7 (a 4096-d output) while this C3D ends at conv5b "
           "(a 512-channel map), so no MMAction2 C3D has this architecture",
    "r3d18": "MMAction2's ResNet3d max-pools the stem with a (1,3,3) kernel while RSPNet's R3D-18 uses a "
             "3x3x3 max-pool, so no MMAction2 ResNet3d has this architecture",
    "r2plus1d": "MMAction2's ResNet2Plus1d max-pools after the stem, has depth 18/34 and sizes (2+1)D shortcut "
                "widths as 3*in*out/(in+3*out), while RSPNet's R(2+1)D-10 has no stem pool, one block per "
                "stage and in*out/(in+out), so no MMAction2 ResNet2Plus1d has this architecture",
}

_TORCHVISION_R3D18_REASON = (
    "torchvision's r3d_18 has a 3x7x7 stem conv and no max-pool while RSPNet's R3D-18 has a 7x7x7 stem conv and a "
    "3x3x3 max-pool, so these weights cannot load into r3d_18()")


RSPNET_ARCH = {"c3d": "c3d", "r2plus1d": "r2plus1d-vcop", "r3d18": "resnet18"}


def refusal(layout: str, backbone: str, width: float) -> str | None:
    """The one-line reason ``layout`` cannot hold ``backbone`` at ``width``, or None when it can."""
    why = _why_not(layout, backbone, width)
    if why is None:
        return None
    fits = ", ".join(available_layouts(backbone, width))
    return f"{why}; layouts that can hold this {backbone} x{width:g}: {fits}"


def available_layouts(backbone: str, width: float) -> list[str]:
    """The layouts whose target can load ``backbone`` at ``width`` (``student`` always can)."""
    return [name for name in LAYOUTS if _why_not(name, backbone, width) is None]


def _why_not(layout: str, backbone: str, width: float) -> str | None:
    if layout == "student":
        return None
    if layout == "rspnet":
        if width != 1.0:
            return (f"RSPNet's scripts build {RSPNET_ARCH[backbone]} at full width (they have no width option), "
                    f"so a width-{width:g} backbone would not load there")
        return None
    if layout == "mmaction2":
        return _MMACTION2_REASONS[backbone]
    if backbone != "r3d18":
        return f"torchvision has no {backbone} video model"
    if layout == "torchvision-r3d_18":
        return f"{_TORCHVISION_R3D18_REASON} (--layout torchvision targets VideoResNet with RSPNet's stem)"
    if width != 1.0:
        return f"torchvision's VideoResNet has fixed widths (64..512) and this R3D-18 has width {width:g}"
    return None


def rspnet_state(backbone: Mapping[str, torch.Tensor], arch: str, epoch: int,
                 heads: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> dict[str, object]:
    """``{"arch", "epoch", "model"}`` as RSPNet's pretraining saves it (``arch`` and ``epoch`` are what
    its finetune / retrieval scripts test for): the backbone under ``encoder_q.encoder.``, heads as
    ``encoder_q.fc1.2.*`` (A-VID) and ``encoder_q.fc2.2.*`` (RSP) when given."""
    model: dict[str, torch.Tensor] = {RSPNET_PREFIX + k: v for k, v in backbone.items()}
    for fc, state in (heads or {}).items():
        model.update({f"encoder_q.{fc}.2.{k}": v for k, v in state.items()})
    return {"arch": arch, "epoch": int(epoch), "model": model}


_TV_BLOCK = re.compile(r"^(layer\d\.\d+\.)(conv|bn)([12])\.(.+)$")


def torchvision_key(key: str) -> str:
    """RSPNet R3D-18 key → torchvision VideoResNet key (``conv1`` → ``stem.0``, ``layer1.0.bn2`` →
    ``layer1.0.conv2.1``, ...); raises CheckpointError on a key with no torchvision counterpart."""
    head, _, rest = key.partition(".")
    if head == "conv1":
        return f"stem.0.{rest}"
    if head == "bn1":
        return f"stem.1.{rest}"
    if ".downsample." in key:
        return key
    m = _TV_BLOCK.match(key)
    if m is None:
        raise CheckpointError(f"export: R3D-18 key {key!r} has no torchvision VideoResNet counterpart")
    prefix, kind, idx, tail = m.groups()
    return f"{prefix}conv{idx}.{0 if kind == 'conv' else 1}.{tail}"


def torchvision_state(backbone: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain state dict in torchvision VideoResNet's names, without ``fc`` (set ``model.fc =
    nn.Identity()`` to load it strictly and get the pooled 512-d features, or load with strict=False)."""
    return {torchvision_key(k): v for k, v in backbone.items()}


__all__ = ["LAYOUTS", "RSPNET_ARCH", "CheckpointError", "available_layouts", "refusal",
           "rspnet_state", "torchvision_key", "torchvision_state"]
