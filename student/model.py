"""The multi-task student (paper §3) and the finetuning classifier built from it.

    z_h = h_h(f_l(X)),  z_c = h_c(f_l(X)),  representation = [GAP(z_h) || GAP(z_c)]

Ablation switches (paper Table 2):
  - ``task_dependent=False`` ("TI"): ONE high-level encoder shared by every head; ``h_h`` IS
    ``h_c`` (the same module, registered once, parameters counted once), z_h = z_c, and the
    representation is GAP(z) once (concatenating the same features twice adds nothing).
  - ``kd=False`` ("w/o KD"): no h_h and no decoder g_h exist at all (so DDP sees no unused
    parameters); the representation is GAP(z_c).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from student.backbones import RSPNET_PREFIX, BackbonePart, load_rspnet_backbone, split_backbone
from student.heads import ParsingDecoder, ProjectionHead

ENCODER_MODULES = ("f_l", "h_h", "h_c")


class _BranchEncoder(nn.Module):
    """f_l plus one or two high-level encoders; the part of the student that finetuning keeps."""

    def __init__(self, f_l: BackbonePart, h_c: BackbonePart, h_h: BackbonePart | None) -> None:
        """``h_h`` is a distinct module (task-dependent), ``h_c`` itself (TI) or None (w/o KD)."""
        super().__init__()
        self.f_l = f_l
        self.h_c = h_c
        self._h_h_is_h_c = h_h is h_c
        if h_h is not None and h_h is not h_c:
            # registered directly: add_module refuses a name that the ``h_h`` property already answers
            self._modules["h_h"] = h_h

    @property
    def h_h(self) -> BackbonePart | None:
        """The human-prior encoder: its own module, ``h_c`` itself (TI), or None (w/o KD)."""
        own = self._modules.get("h_h")
        if own is not None:
            return cast(BackbonePart, own)
        return self.h_c if self._h_h_is_h_c else None

    def highs(self) -> list[nn.Module]:
        """The DISTINCT high-level encoders, in representation order ([h_h, h_c] or [h_c])."""
        own = self._modules.get("h_h")
        return [own, self.h_c] if own is not None else [self.h_c]

    @property
    def out_channels(self) -> int:
        return self.h_c.out_channels

    @property
    def feature_dim(self) -> int:
        """D of ``representation``: 2·C_out task-dependent with KD, else C_out."""
        return self.out_channels * len(self.highs())

    def branch_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last conv feature map of every distinct branch: [z_h, z_c] or [z_c] (B, C, T', H', W')."""
        low = self.f_l(x)
        return [h(low) for h in self.highs()]

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """(B, feature_dim) = [GAP(z_h) || GAP(z_c)] (or GAP(z_c) alone, see module docstring)."""
        return torch.cat([z.mean(dim=(2, 3, 4)) for z in self.branch_maps(x)], dim=1)


class MultiTaskStudent(_BranchEncoder):
    """f_l shared; h_h → g_h (parsing decoder); h_c → g_m (RSP) and g_a (A-VID) projection heads."""

    def __init__(self, backbone: str = "c3d", width: float = 1.0, split_after: int = 3, num_parts: int = 7,
                 parse_size: int = 28, kd: bool = True, task_dependent: bool = True, proj_dim: int = 128,
                 decoder_channels: int | None = None, decoder_upscale: int = 1) -> None:
        f_l, make_high = split_backbone(backbone, width=width, split_after=split_after)
        h_c = make_high()
        h_h = (make_high() if task_dependent else h_c) if kd else None
        super().__init__(f_l, h_c, h_h)
        self.config = dict(backbone=f_l.backbone, width=width, split_after=split_after, num_parts=num_parts,
                           parse_size=parse_size, kd=kd, task_dependent=task_dependent, proj_dim=proj_dim,
                           decoder_channels=decoder_channels, decoder_upscale=decoder_upscale)
        self.kd = kd
        self.task_dependent = task_dependent
        c = h_c.out_channels
        self.g_h = ParsingDecoder(c, num_parts, parse_size, decoder_channels, decoder_upscale) if kd else None
        self.g_m = ProjectionHead(c, proj_dim)
        self.g_a = ProjectionHead(c, proj_dim)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """x (B, 3, T, H, W) → dict(z_h, z_c, parse_logits (B, num_parts, S, S) | None, emb_m, emb_a).

        TI: z_h is z_c (one high-level pass). w/o KD: z_h and parse_logits are None.
        """
        low = self.f_l(x)
        z_c = self.h_c(low)
        own = self._modules.get("h_h")
        z_h = own(low) if own is not None else (z_c if self.kd else None)
        parse = self.g_h(z_h) if self.g_h is not None else None
        return dict(z_h=z_h, z_c=z_c, parse_logits=parse, emb_m=self.g_m(z_c), emb_a=self.g_a(z_c))


class ClassifierModel(_BranchEncoder):
    """Finetuning model: the student's encoders → representation → Dropout(p) → Linear.

    Keeps f_l, h_h, h_c (the SAME modules as ``student``: build it from a loaded student) and
    drops g_h, g_m, g_a, which finetuning does not use (DDP would flag them as unused).
    The classifier weight splits by branch in representation order, so for each branch b
    CAM_b(class) = Σ_c W[class, b-slice][c] · map_b[:, c]; see ``class_activation_maps``.
    """

    def __init__(self, student: MultiTaskStudent, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(student.f_l, student.h_c, student.h_h)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.representation(x)))

    def features_and_logits(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(pre-pool maps per branch [z_h, z_c] or [z_c], logits) from one pass."""
        maps = self.branch_maps(x)
        feats = torch.cat([z.mean(dim=(2, 3, 4)) for z in maps], dim=1)
        return maps, self.fc(self.dropout(feats))

    def cam_weights(self) -> list[torch.Tensor]:
        """The classifier weight split per branch: [(num_classes, C_out), ...] matching the maps."""
        return list(self.fc.weight.split(self.out_channels, dim=1))

    def class_activation_maps(self, x: torch.Tensor, classes: torch.Tensor | None = None
                              ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-branch CAMs (B, T', H', W') for ``classes`` (B,) (default: the predicted class), and logits.

        Averaging a CAM over positions gives that branch's share of the logit: Σ_b mean(CAM_b)
        + bias = logit (with dropout inactive).
        """
        maps, logits = self.features_and_logits(x)
        if classes is None:
            classes = logits.argmax(dim=1)
        cams = [torch.einsum("bc,bcthw->bthw", w[classes], z) for w, z in zip(self.cam_weights(), maps)]
        return cams, logits

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path | Mapping[str, object], num_classes: int, *,
                        dropout: float = 0.0, **student_kwargs: object) -> "ClassifierModel":
        """Build ``MultiTaskStudent(**student_kwargs)``, load its encoders from ``checkpoint`` (a path or a
        loaded dict: our pretraining checkpoint or an RSPNet release, see ``load_encoders``) and wrap it."""
        student = MultiTaskStudent(**student_kwargs)  # type: ignore[arg-type]
        load_encoders(student, checkpoint)
        return cls(student, num_classes, dropout)


def _read(checkpoint: str | Path | Mapping[str, object]) -> Mapping[str, object]:
    if isinstance(checkpoint, Mapping):
        return checkpoint
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"student checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: not a checkpoint dict (got {type(obj).__name__})")
    return obj


def _unwrap(checkpoint: Mapping[str, object]) -> Mapping[str, object]:
    """The state dict inside ``{"model": ...}`` / ``{"state_dict": ...}``, else the dict itself."""
    for wrapper in ("model", "state_dict"):
        inner = checkpoint.get(wrapper)
        if isinstance(inner, Mapping):
            return inner
    return checkpoint


def student_state_dict(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Our student's keys (``f_l.*``, ``h_h.*``, ``h_c.*``, ``g_*``) from a checkpoint dict.

    Unwraps ``{"model": ...}`` / ``{"state_dict": ...}``, DDP's ``module.`` and a PretrainModel's
    ``student.`` prefix (dropping its key encoder and queue).
    """
    out = {k: v for k, v in _unwrap(checkpoint).items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if out and all(k.startswith("module.") for k in out):
        out = {k[len("module."):]: v for k, v in out.items()}
    if any(k.startswith("student.") for k in out):
        out = {k[len("student."):]: v for k, v in out.items() if k.startswith("student.")}
    return out


def load_encoders(model: _BranchEncoder, checkpoint: str | Path | Mapping[str, object]) -> list[str]:
    """Load f_l / h_h / h_c of ``model`` (a MultiTaskStudent or ClassifierModel) from a checkpoint.

    Our layout (a pretraining checkpoint, a student state dict): strict on the encoder keys: every
    encoder key of ``model`` must be there with the same shape and the checkpoint must have no
    encoder the model lacks (e.g. a task-dependent checkpoint into a TI model). RSPNet layout
    (``encoder_q.encoder.*``): the one backbone goes into f_l and into every high-level encoder.
    Returns the checkpoint keys that were not used (heads, decoder, ...).
    """
    ckpt = _read(checkpoint)
    raw = _unwrap(ckpt)
    if any(isinstance(k, str) and RSPNET_PREFIX in k for k in raw):
        load_rspnet_backbone(model.f_l, model.highs(), ckpt)  # type: ignore[arg-type]
        return sorted(str(k) for k in raw if RSPNET_PREFIX not in str(k))
    sd = student_state_dict(ckpt)
    own = {k: v for k, v in model.state_dict().items() if k.split(".", 1)[0] in ENCODER_MODULES}
    theirs = {k: v for k, v in sd.items() if k.split(".", 1)[0] in ENCODER_MODULES}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = [f"{k}: checkpoint {tuple(theirs[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(theirs)) if theirs[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = ["load_encoders: checkpoint encoders do not match the model "
                 "(build it with the pretraining run's backbone, width, split_after, kd, task_dependent):"]
        if missing:
            lines.append(f"  missing {len(missing)} keys, e.g. {missing[:5]}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} keys, e.g. {unexpected[:5]}")
        if shapes:
            lines.append(f"  {len(shapes)} shape mismatches, e.g. {shapes[:3]}")
        raise ValueError("\n".join(lines))
    for name in ENCODER_MODULES:
        mod = model._modules.get(name)
        if mod is not None:
            prefix = name + "."
            mod.load_state_dict({k[len(prefix):]: v for k, v in theirs.items() if k.startswith(prefix)}, strict=True)
    return sorted(set(sd) - set(theirs))


def load_rspnet_heads(student: MultiTaskStudent, checkpoint: Mapping[str, object]) -> None:
    """Copy RSPNet's released heads into the student: ``encoder_q.fc1.2`` → g_a (A-VID), ``fc2.2`` → g_m (RSP)."""
    sd = _unwrap(checkpoint)
    for head, fc in ((student.g_a, "fc1"), (student.g_m, "fc2")):
        prefix = f"encoder_q.{fc}.2."
        part = {k[len(prefix):]: v for k, v in sd.items() if isinstance(k, str) and k.startswith(prefix)}
        if not part:
            raise ValueError(f"load_rspnet_heads: checkpoint has no {prefix}* keys")
        try:
            head[2].load_state_dict(part, strict=True)
        except RuntimeError as err:
            raise ValueError(f"load_rspnet_heads: {prefix}* does not fit the student's head: {err}") from None


__all__ = ["MultiTaskStudent", "ClassifierModel", "load_encoders", "load_rspnet_heads", "student_state_dict"]
