"""The `rendered` teacher: soft part maps from the synthetic generator's exact part masks.

The synthetic dataset knows every pixel's body part, so no network is needed; but a student
distilled from one-hot masks would learn from targets unlike a real teacher's. The masks are
therefore softened to look like a parsing network's softmax: one-hot -> area resize to the map
size (soft edges where parts meet) -> Gaussian blur -> label smoothing -> renormalise. Maps are in
frame coordinates covering the whole frame (the frame stretched to out_size x out_size), in the
Pascal-Person-Part label set, exactly like the `schp` backend's maps.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

RENDERED_LABELS: tuple[str, ...] = ("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs",
                                    "Lower Legs")


def rendered_maps(masks: np.ndarray, num_classes: int = 7, out_size: int = 64, softness: float = 0.5) -> torch.Tensor:
    """Softmax-like maps (N, num_classes, out_size, out_size) float32 from part masks (N, H, W) uint8.

    ``softness`` in [0, 1]: 0 keeps the area-resized one-hot maps (already soft at part borders);
    larger values blur more (sigma = 1.5 * softness map pixels) and smooth labels more
    (epsilon = 0.1 * softness spread uniformly over the classes). Per-pixel sums are 1 (to float
    rounding) and the argmax equals the mask's part except near borders and on parts thinner than
    a map pixel.
    """
    m = np.asarray(masks)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise ValueError(f"rendered_maps: masks must be (N, H, W) part ids, got shape {m.shape}")
    if not np.issubdtype(m.dtype, np.integer):
        raise ValueError(f"rendered_maps: masks must be integer part ids, got dtype {m.dtype}")
    if not 0.0 <= softness <= 1.0:
        raise ValueError(f"rendered_maps: softness must be in [0, 1], got {softness}")
    if num_classes < 2 or out_size < 1:
        raise ValueError(f"rendered_maps: need num_classes >= 2 and out_size >= 1, got {num_classes}, {out_size}")
    if m.size and (int(m.max()) >= num_classes or int(m.min()) < 0):
        raise ValueError(f"rendered_maps: part ids must be in [0, {num_classes}), got range "
                         f"[{int(m.min())}, {int(m.max())}]")
    n, h, w = m.shape
    if n == 0:
        return torch.zeros((0, num_classes, out_size, out_size), dtype=torch.float32)
    maps = np.empty((n, out_size, out_size, num_classes), dtype=np.float32)
    if h >= out_size and w >= out_size:
        # Area resize of each class's indicator, all frames at once: stacking the frames vertically
        # keeps every output row's source window inside one frame (the scale is the same per frame).
        flat = np.ascontiguousarray(m.reshape(n * h, w))
        for k in range(num_classes):
            ind = (flat == k).view(np.uint8).astype(np.float32)
            maps[..., k] = cv2.resize(ind, (out_size, n * out_size), interpolation=cv2.INTER_AREA).reshape(
                n, out_size, out_size)
    else:  # upsampling (a map larger than the frame): per frame, so nothing blends across frames
        for i in range(n):
            for k in range(num_classes):
                ind = (m[i] == k).view(np.uint8).astype(np.float32)
                maps[i, ..., k] = cv2.resize(ind, (out_size, out_size), interpolation=cv2.INTER_AREA)
    if softness > 0:
        sigma = 1.5 * softness
        for i in range(n):
            blurred = cv2.GaussianBlur(maps[i], (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
            maps[i] = blurred.reshape(out_size, out_size, num_classes)
        eps = 0.1 * softness
        maps = maps * np.float32(1.0 - eps) + np.float32(eps / num_classes)
    np.maximum(maps, 0.0, out=maps)
    maps /= maps.sum(axis=-1, keepdims=True)
    return torch.from_numpy(maps).permute(0, 3, 1, 2).contiguous()
