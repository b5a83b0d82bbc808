"""Model files: the pretrained student (``student.pt``) and the finetuned classifier (``classifier.pt``).

One way from config to model and back (as nanoGPT's ``GPTConfig(**model_args)``): a file stores its
:class:`~pipeline.core.config.ModelConfig` as a dict (``dataclasses.asdict``); a reader rebuilds the
``ModelConfig`` from it (:func:`model_config_from`) and the network with :func:`build_student`, the
one constructor every reader uses (finetune, evaluate, retrieval, linear-probe, export, CAMs).
A key the file lacks takes ``ModelConfig``'s own default (files written before ``parse_size`` or
``proj_dim`` existed), never a second, private default; the keys that decide the architecture
(:data:`REQUIRED_KEYS`) must be there.

Why a module of its own: finetuning writes these files and evaluation reads them, and finetuning
also calls evaluation's scoring. With the readers here, ``student.evaluate`` no longer needs a
late import of ``student.finetune`` to break the cycle.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import ModelConfig
from pipeline.core.errors import TrainingError
from student.checkpointing import load_checkpoint
from student.model import ClassifierModel, MultiTaskStudent, load_encoders, student_state_dict

DEFAULT_CLIP_LEN = 16  # RSPNet's finetune clip length
MATCH_KEYS = ("backbone", "width", "split_after", "kd", "task_dependent")  # pretrained vs [model]
REQUIRED_KEYS = ("backbone", "width", "split_after", "kd", "task_dependent")  # a file must say these
# Parts of the KD head when a file does not say (a classifier, or training from scratch): the head is
# not part of the classifier's features, so this only sizes unused weights. LIP without background.
UNKNOWN_NUM_PARTS = 7


def model_config_from(saved: ModelConfig | dict[str, Any], where: str = "model_config") -> ModelConfig:
    """The ``ModelConfig`` a file stored (keys it lacks: ModelConfig's defaults; unknown keys: ignored)."""
    if isinstance(saved, ModelConfig):
        return saved
    if dataclasses.is_dataclass(saved) and not isinstance(saved, type):
        saved = dataclasses.asdict(saved)
    missing = [k for k in REQUIRED_KEYS if k not in saved]
    if missing:
        raise TrainingError(f"{where}: model_config lacks {missing}; the file was not written by this pipeline")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in saved.items() if k in known})


def build_student(model_cfg: ModelConfig | dict[str, Any], num_parts: int) -> MultiTaskStudent:
    """A fresh :class:`MultiTaskStudent` for ``model_cfg`` (a ModelConfig or its saved dict)."""
    cfg = model_config_from(model_cfg)
    return MultiTaskStudent(backbone=cfg.backbone, width=float(cfg.width), split_after=int(cfg.split_after),
                            num_parts=int(num_parts), parse_size=int(cfg.parse_size), kd=bool(cfg.kd),
                            task_dependent=bool(cfg.task_dependent), proj_dim=int(cfg.proj_dim),
                            decoder_upscale=int(cfg.decoder_upscale))


def pretrained_student(ckpt: dict[str, Any]) -> MultiTaskStudent:
    """The (untrained) network a ``student.pt`` dict describes; load its weights with ``load_encoders``."""
    return build_student(ckpt["model_config"], ckpt.get("num_parts", UNKNOWN_NUM_PARTS))


def read_pretrained_file(path: Path) -> dict[str, Any]:
    """A pretraining ``student.pt`` ({"model_config", "num_parts", "state_dict"}), checked for shape."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"pretrained student {path} does not exist (run `pipeline pretrain` first)")
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("model_config"), dict) or "state_dict" not in ckpt:
        raise TrainingError(f"{path} is not a pretrained student (expected keys model_config, num_parts, state_dict)")
    return ckpt


def load_pretrained_student(pretrain_dir: Path, device: str | torch.device = "cpu"
                            ) -> tuple[MultiTaskStudent, dict[str, Any]]:
    """The WHOLE pretrained student of ``pretrain_dir/student.pt`` (encoders, parsing decoder g_h and the
    projection heads, loaded strictly) in eval mode, and the file's metadata.

    Why not ``load_encoders``: that loads f_l / h_h / h_c only (all finetuning needs) and leaves g_h at
    its random initialisation; anything that shows or measures the student's parsing needs this one.
    """
    path = Path(pretrain_dir) / "student.pt"
    ckpt = read_pretrained_file(path)
    student = pretrained_student(ckpt)
    try:
        student.load_state_dict(student_state_dict(ckpt), strict=True)
    except RuntimeError as err:
        raise TrainingError(f"{path}: weights do not fit the model_config stored in the file: "
                            f"{str(err).splitlines()[0]}") from None
    return student.to(device).eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}


def read_pretrained(pretrain_dir: Path, model_cfg: Any) -> dict[str, Any]:
    """``pretrain_dir/student.pt`` after checking its model_config agrees with ``model_cfg``."""
    path = Path(pretrain_dir) / "student.pt"
    ckpt = read_pretrained_file(path)
    saved = ckpt["model_config"]
    ours = dataclasses.asdict(model_cfg)
    diff = [f"{k}: pretrained {saved.get(k)!r} vs config {ours.get(k)!r}" for k in MATCH_KEYS
            if saved.get(k) != ours[k]]
    if diff:
        raise TrainingError(f"{path} was pretrained with a different model than [model] asks for: "
                            + "; ".join(diff) + ". Finetune with the pretraining run's model settings.")
    return ckpt


def build_classifier(model_cfg: Any, num_classes: int, pretrained: dict[str, Any] | None) -> ClassifierModel:
    """A ClassifierModel over a fresh student, with encoders loaded from ``pretrained`` when given."""
    num_parts = pretrained.get("num_parts", UNKNOWN_NUM_PARTS) if pretrained else UNKNOWN_NUM_PARTS
    student = build_student(model_cfg, num_parts)
    if pretrained is not None:
        try:
            load_encoders(student, pretrained)
        except ValueError as err:
            raise TrainingError(f"pretrained student does not fit the model: {err}") from None
    return ClassifierModel(student, num_classes)


def classifier_record(model_cfg: Any, manifest: Any, state: dict[str, torch.Tensor],
                      **extra: Any) -> dict[str, Any]:
    """What ``classifier.pt`` holds: the model config, the classes and the weights, plus ``extra``."""
    return {"model_config": dataclasses.asdict(model_cfg), "num_classes": len(manifest.classes),
            "classes": list(manifest.classes), "state_dict": state, **extra}


def load_classifier(path: Path, device: str | torch.device = "cpu") -> tuple[ClassifierModel, dict[str, Any]]:
    """(model in eval mode on ``device``, the file's metadata) from a ``classifier.pt``."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"classifier {path} does not exist (run `pipeline finetune` first)")
    ckpt = load_checkpoint(path)
    missing = [k for k in ("model_config", "num_classes", "classes", "state_dict") if k not in ckpt]
    if missing:
        raise TrainingError(f"{path} is not a finetuned classifier (missing {missing})")
    model_cfg = model_config_from(ckpt["model_config"], str(path))
    model = build_classifier(model_cfg, int(ckpt["num_classes"]), None)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise TrainingError(f"{path}: weights do not fit the model described in the file: {err}") from None
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    info.setdefault("clip_len", DEFAULT_CLIP_LEN)
    info.setdefault("input_size", model_cfg.input_size)
    return model.to(device).eval(), info


def resolve_clip_len(clip_len: int | None, pretrained: dict[str, Any] | None,
                     pretrain_dir: Path | None) -> tuple[int, str]:
    """Explicit value > student.pt's ``clip_len`` > pretrain_dir/config.toml [clips] clip_len > 16."""
    if clip_len is not None:
        return int(clip_len), "argument"
    if pretrained is not None and "clip_len" in pretrained:
        return int(pretrained["clip_len"]), "student.pt"
    if pretrain_dir is not None and (Path(pretrain_dir) / "config.toml").is_file():
        with open(Path(pretrain_dir) / "config.toml", "rb") as fh:
            value = tomllib.load(fh).get("clips", {}).get("clip_len")
        if value:
            return int(value), "pretraining config.toml"
    return DEFAULT_CLIP_LEN, "RSPNet default"
