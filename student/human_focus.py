"""How much of a classifier's attention falls on the person: the paper's Fig. 3, measured.

The paper shows class-activation maps of RSPNet ("w/o KD") beside the full model's and says the
full model looks at the person, not the background. On the synthetic data every pixel's body
part is known (``*.parts.npz`` beside each video), so this is a number, not a picture:

    focus(video) = Σ_{t,y,x} CAM(t,y,x) · person(t,y,x) / Σ_{t,y,x} CAM(t,y,x)

for the centred test clip, with CAM the predicted class's activation map upsampled to the frames
and min-max normalised to [0, 1] (as drawn), and ``person`` the union of the body-part masks.
The score of a model is the mean over the videos; the share of frame area covered by the person
is reported beside it, since a model attending uniformly would score exactly that.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from data_manifests.synthetic.masks import load_part_masks, mask_path_for
from data_manifests.video import count_frames, read_frames
from student.cam import centred_start, clip_cam, overlay, strip_indices
from student.finetune_data import consecutive_frames, resize_frames, short_side_size, to_tensor


def focus_share(heat: np.ndarray, person: np.ndarray) -> float:
    """Share of the CAM mass (T, H, W) inside the boolean person mask (T, H, W); 0 when the CAM is empty."""
    if heat.shape != person.shape:
        raise ValueError(f"focus_share: CAM {heat.shape} and mask {person.shape} differ in shape")
    total = float(heat.sum())
    return float((heat * person).sum()) / total if total > 0 else 0.0


def _clip_with_mask(video: Path, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    masks_file = mask_path_for(video)
    if not masks_file.is_file():
        raise FileNotFoundError(f"{video}: no part masks at {masks_file} (human focus needs the synthetic data)")
    n = count_frames(video)
    idx = consecutive_frames(centred_start(n, clip_len), clip_len, n)
    return read_frames(video, idx), load_part_masks(video, idx) > 0


@torch.no_grad()
def human_focus(model: Any, videos: Sequence[Path], clip_len: int, input_size: int,
                device: str | torch.device = "cpu") -> dict[str, Any]:
    """Mean CAM share on the person over ``videos`` (each with its part masks), and the person's area share."""
    shares, areas = [], []
    for video in map(Path, videos):
        frames, person = _clip_with_mask(video, clip_len)
        t, h, w = frames.shape[:3]
        small = resize_frames(frames, short_side_size(h, w, input_size))
        heat, _, _ = clip_cam(model, to_tensor(small).to(device), (t, h, w))
        shares.append(focus_share(heat, person))
        areas.append(float(person.mean()))
    if not shares:
        raise ValueError("human_focus: no videos given")
    return {"human_focus": float(np.mean(shares)), "human_focus_std": float(np.std(shares)),
            "person_area": float(np.mean(areas)), "videos": len(shares)}


def cam_comparison(models: dict[str, Any], videos: Sequence[Path], clip_len: int, input_size: int,
                   frames_per_clip: int = 4, device: str | torch.device = "cpu") -> np.ndarray:
    """One BGR image: per video a row of ``frames_per_clip`` frames per model, the models side by side
    (left to right in ``models`` order), each tile labelled with the model's name and its focus share."""
    rows = []
    for video in map(Path, videos):
        frames, person = _clip_with_mask(video, clip_len)
        t, h, w = frames.shape[:3]
        small = resize_frames(frames, short_side_size(h, w, input_size))
        picks = strip_indices(t, frames_per_clip)
        blocks = []
        for name, model in models.items():
            heat, _, _ = clip_cam(model, to_tensor(small).to(device), (t, h, w))
            tiles = overlay(frames[picks], heat[picks])
            block = np.concatenate(list(tiles), axis=1)
            cv2.putText(block, f"{name}: {100 * focus_share(heat, person):.0f}% on person", (2, 11),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
            blocks.append(block)
            blocks.append(np.full((h, 4, 3), 255, np.uint8))
        rows.append(np.concatenate(blocks[:-1], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    if not rows:
        raise ValueError("cam_comparison: no videos given")
    return np.concatenate(rows[:-1], axis=0)


def human_focus_of_split(manifest_dir: Path, classifier_path: Path, split: str = "test",
                         device: str | torch.device = "cpu") -> dict[str, Any] | None:
    """:func:`human_focus` of a finetuned classifier over a manifest's ``split`` videos, or None
    when those videos carry no part masks (real data: nothing to measure against)."""
    from data_manifests.manifest import load_manifest
    from student.artifacts import load_classifier

    manifest = load_manifest(manifest_dir)
    videos = [manifest.abspath(e) for e in manifest.entries if e.split == split]
    if not videos or not all(mask_path_for(v).is_file() for v in videos):
        return None
    model, info = load_classifier(Path(classifier_path), device)
    return human_focus(model, videos, int(info["clip_len"]), int(info["input_size"]), device)
