"""Class-activation maps (Zhou et al. 2016) of a finetuned classifier, as PNG strips (paper Fig. 3).

The classifier is linear over the concatenated GAP features [GAP(z_h) || GAP(z_c)], so for the
predicted class c its weight row splits by branch, and
    CAM_c = Σ_branches Σ_k w_c,k · A_k        (A_k: channel k of that branch's last feature map)
is a (T', H', W') map whose spatial mean (plus the bias) is the logit of c. The map is upsampled
(trilinear) to the clip's frames, min-max normalised over the whole clip (so intensities compare
across frames), coloured with cv2.COLORMAP_JET and blended 50/50 over the frames.

Input: one centred clip (``clip_len`` consecutive frames around the middle). The WHOLE frame is
shown to the network, resized so its short side is ``input_size`` (the network is fully
convolutional up to GAP), so the heatmap covers exactly what the strip shows. The strip holds
``frames_per_strip`` evenly spaced frames of the clip side by side at the video's own resolution:
shape (H, frames_per_strip · W, 3).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from data_manifests.video import count_frames, read_frames
from student.finetune_data import consecutive_frames, resize_frames, short_side_size, to_tensor


def centred_start(num_frames: int, clip_len: int) -> int:
    return max((num_frames - clip_len) // 2, 0)


@torch.no_grad()
def clip_cam(model: Any, clip: torch.Tensor, out_size: tuple[int, int, int]) -> tuple[np.ndarray, int, torch.Tensor]:
    """(heat (T, H, W) in [0, 1], predicted class, softmax) for one clip (3, T, h, w).

    ``model`` provides ``features_and_logits(x) -> ([maps per branch], logits)`` and
    ``cam_weights() -> [(num_classes, C_b) per branch]`` (ClassifierModel does).
    """
    maps, logits = model.features_and_logits(clip[None])
    pred = int(logits[0].argmax())
    weights = model.cam_weights()
    if len(weights) != len(maps):
        raise ValueError(f"{len(weights)} weight blocks for {len(maps)} branch feature maps")
    cam = cast(torch.Tensor, sum(torch.einsum("c,cthw->thw", w[pred].float(), z[0].float())
                                 for w, z in zip(weights, maps)))
    cam = F.interpolate(cam[None, None], size=out_size, mode="trilinear", align_corners=False)[0, 0]
    lo, hi = cam.min(), cam.max()
    heat = (cam - lo) / (hi - lo) if hi > lo else torch.zeros_like(cam)
    return heat.cpu().numpy(), pred, torch.softmax(logits[0].float(), 0).cpu()


def overlay(frames_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """BGR frames (T, H, W, 3): JET-coloured heat blended over the frames."""
    out = []
    for f, h in zip(frames_rgb, heat):
        colour = cv2.applyColorMap(np.round(h * 255).astype(np.uint8), cv2.COLORMAP_JET)
        out.append(cv2.addWeighted(cv2.cvtColor(f, cv2.COLOR_RGB2BGR), 1 - alpha, colour, alpha, 0))
    return np.stack(out)


def strip_indices(clip_len: int, frames_per_strip: int) -> list[int]:
    """Evenly spaced positions within the clip (repeats when the clip is shorter than the strip)."""
    return [int(round(x)) for x in np.linspace(0, clip_len - 1, frames_per_strip)]


def cam_strip(model: Any, frames_rgb: np.ndarray, input_size: int, frames_per_strip: int, device: str,
              classes: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(BGR strip (H, frames_per_strip·W, 3), prediction record) for one clip of RGB frames (T, H, W, 3)."""
    t, h, w = frames_rgb.shape[:3]
    small = resize_frames(frames_rgb, short_side_size(h, w, input_size))
    heat, pred, probs = clip_cam(model, to_tensor(small).to(device), (t, h, w))
    picks = strip_indices(t, frames_per_strip)
    tiles = overlay(frames_rgb[picks], heat[picks])
    strip = np.concatenate(list(tiles), axis=1)
    label = classes[pred] if classes else str(pred)
    cv2.putText(strip, f"{label} {100 * float(probs[pred]):.0f}%", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                (255, 255, 255), 1, cv2.LINE_AA)
    return strip, {"pred": pred, "pred_name": label, "prob": float(probs[pred])}


def class_activation_maps(classifier_path: Path | str, video_paths: Sequence[Path | str], out_dir: Path | str, *,
                          clip_len: int | None = None, input_size: int | None = None, frames_per_strip: int = 8,
                          device: str = "cpu") -> list[Path]:
    """One CAM strip PNG per video in ``out_dir`` (plus ``cam.jsonl`` with each prediction); returns the PNGs.

    ``clip_len`` / ``input_size`` default to the values stored in classifier.pt.
    """
    from student.artifacts import load_classifier

    model, info = load_classifier(Path(classifier_path), device)
    clip_len = int(clip_len or info["clip_len"])
    input_size = int(input_size or info["input_size"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, records, used = [], [], set()
    for video in map(Path, video_paths):
        n = count_frames(video)
        frames = read_frames(video, consecutive_frames(centred_start(n, clip_len), clip_len, n))
        strip, rec = cam_strip(model, frames, input_size, frames_per_strip, device, info.get("classes"))
        name = f"{video.stem}.cam.png"
        k = 1
        while name in used:
            k += 1
            name = f"{video.stem}-{k}.cam.png"
        used.add(name)
        path = out_dir / name
        if not cv2.imwrite(str(path), strip):
            raise OSError(f"could not write the CAM strip {path}")
        paths.append(path)
        records.append({"video": video.name, "png": name, **rec})
    (out_dir / "cam.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths
