"""Export the pretrained encoder for other codebases (``pipeline export``).

Two kinds of file:
- ``student`` layout: the whole ``[z_h || z_c]`` encoder (``f_l``, ``h_h``, ``h_c``) with its model
  config, a ``student.pt`` that this project's ``finetune`` / ``retrieval`` / ``pretrain.init_from``
  read back exactly;
- one branch (``human``: f_l + h_h, ``contrastive``: f_l + h_c) as ONE plain backbone, which is
  what other codebases can hold, in RSPNet's or torchvision's key layout (``student.export_layouts``),
  or a one-line refusal where the target has no network of the same architecture.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from student.checkpointing import load_checkpoint, save_checkpoint
from pipeline.core.errors import CheckpointError
from student.export_layouts import LAYOUTS, RSPNET_ARCH, available_layouts, refusal, rspnet_state, torchvision_state
from student.model import MultiTaskStudent, load_encoders

BRANCHES: tuple[str, ...] = ("both", "human", "contrastive")

LOADS_INTO = {
    "student": "this project: pipeline --set pretrain.init_from=FILE, or student.model.load_encoders",
    "rspnet": "RSPNet's finetune.py / retrieval.py --moco-checkpoint FILE (arch + epoch + model, prefix "
              "encoder_q.encoder.); also this project",
    "torchvision": "torchvision.models.video.VideoResNet(BasicBlock, [Conv3DSimple]*4, [2,2,2,2], stem=<7x7x7 "
                   "conv + BN + ReLU + 3x3x3 max-pool>) with fc = nn.Identity(), strict",
}


@dataclass
class ExportResult:
    """What was written: enough for the command's summary."""

    path: Path
    layout: str
    branch: str
    backbone: str
    width: float
    tensors: int
    parameters: int
    sha256: str
    loads_into: str
    notes: list[str] = field(default_factory=list)


def student_from_file(path: Path) -> tuple[MultiTaskStudent, dict[str, Any]]:
    """The pretrained student of a ``student.pt`` (encoders loaded strictly, heads too) and its metadata."""
    from student.artifacts import pretrained_student, read_pretrained_file

    ckpt = read_pretrained_file(Path(path))
    student = pretrained_student(ckpt)
    try:
        load_encoders(student, ckpt)
    except ValueError as err:
        raise CheckpointError(f"{path} does not fit its own model_config: {err}") from None
    heads = {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("g_m.", "g_a."))}
    if heads:
        student.load_state_dict(heads, strict=False)
    return student.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}


def branch_backbone(student: MultiTaskStudent, branch: str) -> dict[str, torch.Tensor]:
    """f_l + the branch's high-level encoder as ONE backbone state dict with RSPNet's key names."""
    if branch == "human":
        high = student.h_h
        if high is None:
            raise CheckpointError("export --branch human: this student was pretrained without KD (model.kd = false), "
                                  "so it has no human-prior encoder; use --branch contrastive")
    elif branch == "contrastive":
        high = student.h_c
    else:
        raise CheckpointError(f"export --branch {branch}: a backbone file holds one branch; pass --branch human "
                              f"or --branch contrastive (--branch both needs --layout student)")
    out = {k: v.detach().clone() for k, v in student.f_l.state_dict().items()}
    out.update({k: v.detach().clone() for k, v in high.state_dict().items()})
    return out


def export_state(student: MultiTaskStudent, meta: dict[str, Any], layout: str, branch: str | None) -> dict[str, Any]:
    """The object to save for ``layout`` / ``branch`` (raises CheckpointError with the reason when impossible).

    ``branch`` None: ``both`` for the student layout; a backbone layout then asks for one.
    """
    if layout not in LAYOUTS:
        raise CheckpointError(f"export --layout {layout}: unknown layout; choose one of {', '.join(LAYOUTS)}")
    if branch is not None and branch not in BRANCHES:
        raise CheckpointError(f"export --branch {branch}: choose one of {', '.join(BRANCHES)}")
    name, width = student.f_l.backbone, float(student.f_l.width)
    why = refusal(layout, name, width)
    if why is not None:
        raise CheckpointError(f"export --layout {layout}: {why}")
    if branch is None and layout != "student":
        raise CheckpointError(f"export --layout {layout} writes one backbone: pass --branch human (f_l + h_h) or "
                              f"--branch contrastive (f_l + h_c)")
    branch = branch or "both"
    if layout == "student":
        if branch != "both":
            raise CheckpointError(f"export --layout student holds the whole [z_h || z_c] encoder; for one branch "
                                  f"({branch}) use --layout rspnet")
        encoders = {k: v.detach().clone() for k, v in student.state_dict().items()
                    if k.split(".", 1)[0] in ("f_l", "h_h", "h_c")}
        keep: dict[str, Any] = {k: meta[k] for k in ("model_config", "num_parts", "label_names", "clip_len", "epochs")
                                if k in meta}
        return {**keep, "format": "humanprior-student-encoders", "state_dict": encoders}
    backbone = branch_backbone(student, branch)
    if layout == "rspnet":
        heads = None
        if branch == "contrastive":  # RSPNet's heads sit on its (contrastive) encoder
            heads = {"fc1": student.g_a[2].state_dict(), "fc2": student.g_m[2].state_dict()}
        return rspnet_state(backbone, RSPNET_ARCH[name], int(meta.get("epochs", 0)), heads)
    return torchvision_state(backbone)


def _named_tensors(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in _named_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    return []


_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export_checkpoint(source: Path, out: Path, layout: str, branch: str | None = None) -> ExportResult:
    """Read a pretrained ``student.pt`` and write ``out`` in ``layout`` (branch default: ``both`` for the
    student layout; a backbone layout needs ``human`` or ``contrastive``)."""
    student, meta = student_from_file(Path(source))
    try:
        state = export_state(student, meta, layout, branch)
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    branch = branch or "both"
    save_checkpoint(Path(out), state)
    tensors = _named_tensors(state)
    params = sum(t.numel() for k, t in tensors if not k.endswith(_BUFFERS))  # learnt weights, not BN statistics
    name, width = student.f_l.backbone, float(student.f_l.width)
    notes = []
    if layout == "torchvision":
        notes.append("no fc keys: set model.fc = nn.Identity() (pooled features) or load with strict=False")
    return ExportResult(path=Path(out), layout=layout, branch=branch, backbone=name, width=width,
                        tensors=len(tensors), parameters=params, sha256=_sha256(Path(out)),
                        loads_into=LOADS_INTO[layout], notes=notes)


def read_exported(path: Path) -> dict[str, Any]:
    """Load an exported file (weights only) for checks and tests."""
    return load_checkpoint(Path(path))


__all__ = ["BRANCHES", "CheckpointError", "ExportResult", "available_layouts", "branch_backbone", "export_checkpoint",
           "export_state", "student_from_file", "read_exported"]
