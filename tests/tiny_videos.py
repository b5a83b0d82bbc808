"""Tiny real video datasets for the finetune / evaluate / retrieval tests (written with cv2.VideoWriter).

Class c draws a bright square in its own corner of the frame (easy to learn), over noise that
differs per video. Videos are MJPG AVI, 40 × 48 (non-square, so crop geometry matters).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import torch

from data_manifests.manifest import Manifest, VideoEntry, write_manifest

H, W = 40, 48
TINY_MODEL = dict(backbone="r2plus1d", width=0.125, split_after=3, input_size=32, parse_size=8, kd=True,
                  task_dependent=True, proj_dim=16)
CLIP_LEN = 4


def write_video(path: Path, frames_rgb: np.ndarray, fps: float = 25.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames_rgb.shape[1:3]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"cannot open a video writer for {path}")
    for f in frames_rgb:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()


def class_frames(label: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, size=(n, H, W, 3), dtype=np.uint8)
    corners = [(2, 2), (2, W - 18), (H - 18, 2), (H - 18, W - 18)]
    y, x = corners[label % 4]
    for t in range(n):
        frames[t, y:y + 16, x:x + 16] = (240, 240 - 60 * (label // 4), 200)
    return frames


def make_dataset(tmp: Path, *, classes: int = 3, train_per_class: int = 4, test_per_class: int = 2,
                 frames: int = 12, name: str = "tiny") -> Path:
    """Videos under tmp/videos, a manifest under tmp/manifest; returns the manifest folder."""
    root = tmp / "videos"
    entries = []
    k = 0
    for c in range(classes):
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            for i in range(count):
                rel = f"class{c}/{split}_{i}.avi"
                write_video(root / rel, class_frames(c, frames, seed=1000 + k))
                entries.append(VideoEntry(id=f"c{c}_{split}{i}", path=rel, label=c, split=split, frames=frames,
                                          fps=25.0, width=W, height=H))
                k += 1
    manifest = Manifest(dataset=name, root=root, classes=[f"class{c}" for c in range(classes)], entries=entries)
    out = tmp / "manifest"
    write_manifest(out, manifest, [])
    return out


def tiny_model_config(**over):
    from pipeline.core.config import ModelConfig

    return ModelConfig(**{**TINY_MODEL, **over})


def write_student(pretrain_dir: Path, model_cfg, seed: int = 0, num_parts: int = 7, clip_len: int = CLIP_LEN) -> Path:
    """A (random) pretrained student.pt in the pretraining stage's format."""
    from student.model import MultiTaskStudent

    torch.manual_seed(seed)
    cfg = dataclasses.asdict(model_cfg)
    s = MultiTaskStudent(backbone=cfg["backbone"], width=cfg["width"], split_after=cfg["split_after"],
                         num_parts=num_parts, parse_size=cfg["parse_size"], kd=cfg["kd"],
                         task_dependent=cfg["task_dependent"], proj_dim=cfg["proj_dim"])
    pretrain_dir.mkdir(parents=True, exist_ok=True)
    path = pretrain_dir / "student.pt"
    torch.save({"model_config": cfg, "num_parts": num_parts, "state_dict": s.state_dict(), "clip_len": clip_len}, path)
    return path


def write_classifier(finetune_dir: Path, manifest_dir: Path, model_cfg, seed: int = 0,
                     clip_len: int = CLIP_LEN) -> Path:
    """A random classifier.pt in the finetune stage's format (no training: evaluation plumbing tests)."""
    from data_manifests.manifest import load_manifest
    from student.artifacts import build_classifier, classifier_record

    man = load_manifest(manifest_dir)
    torch.manual_seed(seed)
    net = build_classifier(model_cfg, len(man.classes), None).eval()
    finetune_dir.mkdir(parents=True, exist_ok=True)
    path = finetune_dir / "classifier.pt"
    torch.save(classifier_record(model_cfg, man, net.state_dict(), selected_epoch=1, selected_on="last",
                                  clip_len=clip_len, input_size=model_cfg.input_size), path)
    return path
