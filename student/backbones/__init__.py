"""Student backbones (C3D, R(2+1)D-10, R3D-18), their stage split and RSPNet weight loading.

Every backbone is a sequence of named stages whose module names are exactly RSPNet's released
backbone keys (``reference/rspnet_*_backbone_state_dict.txt`` after stripping
``encoder_q.encoder.``), so a split backbone (``f_l`` = stages 1..split_after, high-level part =
the remaining stages) keeps RSPNet's key names in both halves and the same checkpoint loads into
``f_l`` and into every high-level instance.

Stage numbering (1-based; the default ``split_after=3`` puts stages 1-3 into ``f_l``):
    c3d:      1 conv1+pool1, 2 conv2+pool2, 3 conv3a/b+pool3, 4 conv4a/b+pool4, 5 conv5a/b
    r2plus1d: 1 stem (conv1, bn1), 2 conv2, 3 conv3, 4 conv4, 5 conv5   (R(2+1)D-10, VCOP variant)
    r3d18:    1 stem (conv1, bn1, maxpool), 2 layer1, 3 layer2, 4 layer3, 5 layer4
A part ends with the raw feature map: no pooling, no classifier.

The width multiplier scales every channel count (``max(8, round(c·width))``); RSPNet's releases
are width 1.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from student.backbones.c3d import c3d_stages
from student.backbones.r2plus1d import r2plus1d10_stages
from student.backbones.r3d import r3d18_stages

__all__ = [
    "BACKBONE_NAMES", "Backbone", "BackbonePart", "NetStage", "build_backbone", "build_part",
    "canonical_name", "scaled_channels", "split_backbone", "load_rspnet_backbone",
    "rspnet_backbone_state", "RSPNET_PREFIX",
]

RSPNET_PREFIX = "encoder_q.encoder."

_SPECS = {"c3d": c3d_stages, "r2plus1d": r2plus1d10_stages, "r3d18": r3d18_stages}
BACKBONE_NAMES: tuple[str, ...] = tuple(_SPECS)
_ALIASES = {
    "c3d": "c3d",
    "r2plus1d": "r2plus1d", "r2plus1d10": "r2plus1d", "r21d": "r2plus1d", "r(2+1)d": "r2plus1d",
    "r(2+1)d10": "r2plus1d", "r2plus1dvcop": "r2plus1d",
    "r3d18": "r3d18", "r3d": "r3d18", "resnet18": "r3d18",
}


class NetStage(NamedTuple):
    """One stage of the network (not a pipeline stage, ``pipeline.stage.Stage``): its name, the child-module
    names it holds (in order) and its output channels."""

    name: str
    modules: tuple[str, ...]
    out_channels: int


def canonical_name(name: str) -> str:
    """``"c3d"``, ``"r2plus1d"`` or ``"r3d18"`` for a backbone name or a known alias."""
    key = name.lower().replace("-", "").replace("_", "").replace(" ", "")
    if key not in _ALIASES:
        raise ValueError(f"student.backbones: unknown backbone {name!r}; choose one of {list(BACKBONE_NAMES)}")
    return _ALIASES[key]


def scaled_channels(channels: int, width: float) -> int:
    """A full-width channel count under the width multiplier: ``max(8, round(channels·width))``."""
    if width <= 0:
        raise ValueError(f"student.backbones: width must be > 0, got {width}")
    return max(8, int(round(channels * width)))


def num_stages(name: str) -> int:
    return len(_SPECS[canonical_name(name)](lambda c: c))


class BackbonePart(nn.Sequential):
    """Consecutive stages ``first_stage..last_stage`` of a backbone, applied in order.

    The children keep RSPNet's names (``conv1``, ``bn1``, ``layer3``, ...), so the part's
    state-dict keys are a subset of RSPNet's backbone keys. The output is the last stage's
    feature map (B, out_channels, T', H', W').
    """

    def __init__(self, backbone: str, width: float, first_stage: int, stages: Sequence[NetStage],
                 children: Sequence[tuple[str, nn.Module]]) -> None:
        super().__init__(OrderedDict(children))
        self.backbone = backbone
        self.width = width
        self.first_stage = first_stage
        self.stages: tuple[NetStage, ...] = tuple(stages)

    @property
    def last_stage(self) -> int:
        return self.first_stage + len(self.stages) - 1

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    @property
    def out_channels(self) -> int:
        return self.stages[-1].out_channels

    def extra_repr(self) -> str:
        return f"backbone={self.backbone!r}, width={self.width}, stages={self.first_stage}..{self.last_stage}"


class Backbone(BackbonePart):
    """A whole backbone (all stages): what ``build_backbone`` returns and ``split_backbone`` cuts."""

    @property
    def num_stages(self) -> int:
        return len(self.stages)


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs with zero bias; BN weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_part(name: str, width: float, first_stage: int, last_stage: int) -> BackbonePart:
    """Freshly initialised stages ``first_stage..last_stage`` (1-based, inclusive) of a backbone."""
    name = canonical_name(name)
    specs = _SPECS[name](functools.partial(scaled_channels, width=width))
    if not 1 <= first_stage <= last_stage <= len(specs):
        raise ValueError(f"student.backbones: stages {first_stage}..{last_stage} out of range "
                         f"1..{len(specs)} for {name}")
    stages, children = [], []
    for stage_name, out_ch, build in specs[first_stage - 1:last_stage]:
        mods = build()
        stages.append(NetStage(stage_name, tuple(n for n, _ in mods), out_ch))
        children.extend(mods)
    cls = Backbone if (first_stage, last_stage) == (1, len(specs)) else BackbonePart
    part = cls(name, width, first_stage, stages, children)
    _init_weights(part)
    return part


def build_backbone(name: str, width: float = 1.0) -> Backbone:
    """The whole backbone ``name`` (``c3d`` | ``r2plus1d`` | ``r3d18``) at ``width``."""
    part = build_part(name, width, 1, num_stages(name))
    assert isinstance(part, Backbone)
    return part


_UNSET = object()


def split_backbone(backbone: str | Backbone, width=_UNSET, split_after=_UNSET
                   ) -> tuple[BackbonePart, Callable[[], BackbonePart]]:
    """Cut a backbone into ``(f_l, make_high)``.

    ``f_l`` holds stages ``1..split_after``; ``make_high()`` builds a FRESH, independently
    initialised instance of stages ``split_after+1..last`` each time it is called (one for
    ``h_h``, one for ``h_c``, one for the key encoder...). ``make_high()(f_l(x))`` has the shape
    of ``backbone(x)`` and, with the same weights, the same values.

    Two call forms:
      - ``split_backbone("c3d", width=1.0, split_after=3)``: ``f_l`` is newly built;
      - ``split_backbone(backbone_instance, split_after)`` (CONTRACTS form): ``f_l`` SHARES the
        instance's stage modules (same weights); the width is the instance's, so a second
        positional argument is read as ``split_after``.
    ``split_after`` defaults to 3 and must leave at least one stage on each side.
    """
    if isinstance(backbone, BackbonePart):
        if not isinstance(backbone, Backbone):
            raise TypeError("split_backbone: pass a whole Backbone (from build_backbone), not a part")
        if width is not _UNSET and split_after is _UNSET and isinstance(width, int):
            width, split_after = _UNSET, width  # split_backbone(backbone, 3)
        if width is not _UNSET and width != backbone.width:
            raise ValueError(f"split_backbone: width {width} differs from the backbone's width {backbone.width}")
        name, width = backbone.backbone, backbone.width
    else:
        name = canonical_name(backbone)
        width = 1.0 if width is _UNSET else float(width)
    split_after = 3 if split_after is _UNSET else int(split_after)
    n = num_stages(name)
    if not 1 <= split_after <= n - 1:
        raise ValueError(f"split_backbone: split_after must be in 1..{n - 1} for {name} ({n} stages), "
                         f"got {split_after}")
    if isinstance(backbone, Backbone):
        stages = backbone.stages[:split_after]
        children = [(m, getattr(backbone, m)) for s in stages for m in s.modules]
        f_l = BackbonePart(name, width, 1, stages, children)
    else:
        f_l = build_part(name, width, 1, split_after)
    return f_l, functools.partial(build_part, name, width, split_after + 1, n)


def rspnet_backbone_state(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The bare backbone state dict (RSPNet key names) inside ``checkpoint``.

    Accepts a released RSPNet checkpoint (``{"model": {"encoder_q.encoder.conv1.weight": ...,
    "encoder_q.fc1.2.weight": ..., "encoder_k...": ..., "queue": ...}}``), the same dict without
    the ``"model"`` level, or a bare backbone state dict (optionally with DDP's ``module.``).
    Only the query encoder's backbone is returned (``encoder_k``, heads and queue are dropped).
    """
    sd: Mapping[str, object] = checkpoint
    for wrapper in ("model", "state_dict"):
        inner = sd.get(wrapper) if isinstance(sd, Mapping) else None
        if isinstance(inner, Mapping):
            sd = inner
            break
    if not isinstance(sd, Mapping) or not sd:
        raise ValueError("load_rspnet_backbone: checkpoint is empty or not a state dict")
    keys = [k for k in sd if isinstance(k, str)]
    for prefix in (RSPNET_PREFIX, "module." + RSPNET_PREFIX):
        picked = {k[len(prefix):]: sd[k] for k in keys if k.startswith(prefix)}
        if picked:
            return _tensors(picked)
    if any(k.startswith(("encoder_q.", "module.encoder_q.")) for k in keys):
        raise ValueError("load_rspnet_backbone: checkpoint has encoder_q.* keys but none under "
                         f"{RSPNET_PREFIX!r}; not an RSPNet backbone layout")
    if keys and all(k.startswith("module.") for k in keys):
        return _tensors({k[len("module."):]: sd[k] for k in keys})
    return _tensors({k: sd[k] for k in keys})


def _tensors(sd: Mapping[str, object]) -> dict[str, torch.Tensor]:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"load_rspnet_backbone: non-tensor entries in the backbone state dict: {bad[:5]}")
    return dict(sd)  # type: ignore[arg-type]


def load_rspnet_backbone(f_l: BackbonePart, highs: Sequence[BackbonePart],
                         state_dict: Mapping[str, object]) -> list[str]:
    """Load one RSPNet backbone checkpoint into ``f_l`` and into EVERY high-level instance.

    ``state_dict`` is a released RSPNet checkpoint or a bare backbone state dict (see
    ``rspnet_backbone_state``). Strict: every key of the architecture must be present with the
    model's shape, and no unknown key may sit under a backbone module; keys outside the
    backbone's modules (a dummy classifier head) are skipped and returned. ``f_l`` must start at
    stage 1 and every high part must continue right after it to the last stage.
    Raises ValueError naming the missing / unexpected / mis-shaped keys.
    """
    sd = rspnet_backbone_state(state_dict)
    name, width = f_l.backbone, f_l.width
    for h in highs:
        if (h.backbone, h.width) != (name, width):
            raise ValueError(f"load_rspnet_backbone: high part is {h.backbone}@{h.width}, f_l is {name}@{width}")
        if h.first_stage != f_l.last_stage + 1 or h.last_stage != num_stages(name):
            raise ValueError(f"load_rspnet_backbone: high part covers stages {h.first_stage}..{h.last_stage}, "
                             f"expected {f_l.last_stage + 1}..{num_stages(name)} after f_l")
    if f_l.first_stage != 1:
        raise ValueError("load_rspnet_backbone: f_l must start at stage 1")
    with torch.device("meta"):
        full = build_backbone(name, width)
    expected = {k: v.shape for k, v in full.state_dict().items()}
    top = {k.split(".", 1)[0] for k in expected}
    in_backbone = {k for k in sd if k.split(".", 1)[0] in top}
    ignored = sorted(set(sd) - in_backbone)
    missing = sorted(set(expected) - in_backbone)
    unexpected = sorted(in_backbone - set(expected))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])}"
              for k in sorted(in_backbone & set(expected)) if tuple(sd[k].shape) != tuple(expected[k])]
    if missing or unexpected or shapes:
        lines = [f"load_rspnet_backbone: checkpoint does not match {name} at width {width}:"]
        if missing:
            lines.append(f"  missing {len(missing)} keys, e.g. {missing[:5]}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} keys, e.g. {unexpected[:5]}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatches, e.g. {shapes[:3]}"
                         " (RSPNet releases are width 1.0: build the model at the checkpoint's width)")
        raise ValueError("\n".join(lines))
    for part in (f_l, *highs):
        own = part.state_dict().keys()
        part.load_state_dict({k: sd[k] for k in own}, strict=True)
    return ignored
