"""SCHP's input path: our batched torch letterbox against the official cv2.warpAffine on the uint8 image.

The official extractor letterboxes the uint8 BGR image with cv2.warpAffine, so its network sees
whole grey levels. This measures, for the SCHP demo photo (three variants) and synthetic
photo-like frames:

1. pixels: how many letterboxed values differ from cv2's, with our rounding (the default) and
   without it (``rounded=False``, the bare bilinear warp);
2. labels: how many parsing labels of a random-weight SCHP (LIP layout, 20 classes; fusion bias
   centred on the frames so the parsing is not one class) differ between the cv2 input and ours,
   over all pixels and over the pixels whose top-2 logit margin is at least 0.01 (random weights
   put about 1 % of pixels on such near-ties; a trained checkpoint has few).

No external code: ``python bench/fidelity_schp_input.py`` (about a minute on one CPU core).
Writes bench/results/fidelity_schp_input.json. tests/test_fidelity.py asserts the same bounds.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from common import SHARED, Bench, print_table  # noqa: I001  (bench/common puts the repo on sys.path)

from teacher.preprocess import (fusion_logits, letterbox, letterbox_matrix, letterbox_pixels, normalise,
                                parse_to_labels, warp_back)
from teacher.schp import build_schp

NEAR_TIE = 0.01


def cv2_letterbox(img: np.ndarray, size: int) -> np.ndarray:
    m = letterbox_matrix(img.shape[1], img.shape[0], size)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Blurred noise with sharp-edged rectangles (as tests/test_fidelity.py)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(np.float32), (0, 0), 3) * 3 - 250
    for _ in range(6):
        y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
        img[y0:y0 + rng.integers(4, h // 2), x0:x0 + rng.integers(4, w // 2)] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def frame_sets() -> dict[str, list[np.ndarray]]:
    sets = {"synthetic": [photo_like(h, w, s) for h, w, s in [(90, 120, 0), (121, 77, 1), (64, 64, 2), (47, 150, 3)]]}
    path = SHARED / "images" / "schp_demo.jpg"
    if path.is_file():
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        sets["demo photo crops"] = [cv2.resize(img, (150, 100), interpolation=cv2.INTER_AREA),
                                    cv2.resize(np.ascontiguousarray(img[:, 500:1300]), (80, 133),
                                               interpolation=cv2.INTER_AREA),
                                    np.ascontiguousarray(img[200:300, 800:900])]
        sets["demo photo (full, transposed, 301x200)"] = [
            img, np.ascontiguousarray(img.transpose(1, 0, 2)),
            cv2.resize(img, (301, 200), interpolation=cv2.INTER_AREA)]
    return sets


def pixel_rows(sets: dict[str, list[np.ndarray]]) -> list[dict[str, Any]]:
    rows = []
    for name, frames in sets.items():
        for size in (65, 129, 473):
            n = diff = 0
            bare_max = bare_sum = 0.0
            for f in frames:
                ref = cv2_letterbox(f, size).astype(np.float64)
                ours = letterbox_pixels([f], size)[0].permute(1, 2, 0).double().numpy()
                bare = letterbox_pixels([f], size, rounded=False)[0].permute(1, 2, 0).double().numpy()
                d = np.abs(ours - ref)
                assert d.max() <= 1.0
                n += d.size
                diff += int((d > 0).sum())
                bare_max = max(bare_max, float(np.abs(bare - ref).max()))
                bare_sum += float(np.abs(bare - ref).sum())
            rows.append({"frames": name, "size": size, "values": n, "rounded: differ": diff,
                         "rounded: differ %": round(100 * diff / n, 4), "rounded: max diff": 1 if diff else 0,
                         "unrounded: max diff": round(bare_max, 3), "unrounded: mean diff": round(bare_sum / n, 4)})
    return rows


def tame_schp(num_classes: int = 20) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_schp(num_classes)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                sign = torch.where(torch.rand(p.shape, generator=g) < 0.3, -1.0, 1.0)
                p.copy_(sign * (torch.rand(p.shape, generator=g) + 0.5) * (0.2 if ".bn3." in name else 1.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def cv2_path_logits(model: torch.nn.Module, frame: np.ndarray, size: int) -> torch.Tensor:
    x = normalise(torch.from_numpy(cv2_letterbox(frame, size)).permute(2, 0, 1)[None].float())
    square = F.interpolate(fusion_logits(model, x), size=(size, size), mode="bilinear", align_corners=True)
    return warp_back(square, [frame.shape[:2]], frame.shape[:2])[0]


@torch.inference_mode()
def label_rows(sets: dict[str, list[np.ndarray]], size: int) -> list[dict[str, Any]]:
    import teacher.preprocess as pre

    rows = []
    for name in ("synthetic", "demo photo crops"):
        if name not in sets:
            continue
        frames = sets[name]
        model = tame_schp()
        model.fushion[-1].bias -= fusion_logits(model, letterbox(frames, size)).mean((0, 2, 3))
        refs = [cv2_path_logits(model, f, size) for f in frames]
        warp = pre._warp_to_square
        for rounded in (True, False):
            pre._warp_to_square = lambda *a, _w=warp, _r=rounded, **k: _w(*a, **{**k, "rounded": _r})
            try:
                ours = parse_to_labels(model, frames, size)
            finally:
                pre._warp_to_square = warp
            total = differ = clear_total = clear_differ = 0
            for lab, lg in zip(ours, refs):
                top2 = lg.topk(2, dim=0).values
                clear = (top2[0] - top2[1]) >= NEAR_TIE
                bad = lab != lg.argmax(0).to(torch.uint8)
                total += lab.numel()
                differ += int(bad.sum())
                clear_total += int(clear.sum())
                clear_differ += int(bad[clear].sum())
            rows.append({"frames": name, "input": "rounded (ours)" if rounded else "unrounded", "labels": total,
                         "differ": differ, "agree %": round(100 * (1 - differ / total), 4),
                         "clear labels": clear_total, "clear differ": clear_differ,
                         "clear agree %": round(100 * (1 - clear_differ / clear_total), 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=65, help="network input size for the label comparison")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bench = Bench("fidelity_schp_input", "SCHP input: torch letterbox vs cv2.warpAffine on uint8",
                  {"label_input_size": args.size, "near_tie_logits": NEAR_TIE,
                   "weights": "random (seed 0), centred bias"})
    sets = frame_sets()
    pixels = pixel_rows(sets)
    print_table(pixels, title="letterboxed values vs cv2.warpAffine (uint8)")
    labels = label_rows(sets, args.size)
    print_table(labels, title=f"parsing labels vs the cv2 input path (random-weight SCHP, input {args.size})")
    bench.write({"pixels": pixels, "labels": labels}, args.out)


if __name__ == "__main__":
    main()
