"""SCHP's pre- and post-processing in torch: batched, on the model's device, frames of any sizes.

SCHP letterboxes each BGR image into an S×S square with one affine map (``letterbox_matrix``),
warps it bilinearly with a zero border (cv2.warpAffine), normalises with ImageNet statistics in
BGR order, and after the network upsamples the fusion logits to S×S and warps them back with the
inverse map. Here both warps are ``grid_sample`` calls whose sampling grids are built in float64
from the affine maps on pixel indices (cv2's convention: integer coordinates are pixel centres),
so they agree with OpenCV to float precision (OpenCV ≥ 4.11 warps 1-4 channel images in float
arithmetic, which is what SCHP's 3-channel image warp and per-channel logit warp use; its older
1/32-pixel fixed-point path, still taken for 5+ channels, is not emulated). Frames of different
sizes share one batch: they are placed in a zero canvas, which changes nothing because the zero
border is the canvas itself.

SCHP warps the uint8 image, so cv2 writes uint8 and the network sees whole grey levels. The
letterboxed pixels are therefore rounded to the nearest integer (half to even, as cv2's
saturate_cast) before normalisation: unrounded values flip about 0.02 % of labels and move
probabilities by up to 2e-3 on a trained checkpoint. ``letterbox_pixels(..., rounded=False)``
gives the bare warp, for geometry checks.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from teacher.labels import LABEL_SETS, flip_permutation

BGR_MEAN = (0.406, 0.456, 0.485)
BGR_STD = (0.225, 0.224, 0.229)

Frames = Sequence[np.ndarray] | np.ndarray | torch.Tensor
OutSize = int | tuple[int, int]


def letterbox_matrix(w: int, h: int, size: int) -> np.ndarray:
    """2×3 affine (frame pixel → S×S pixel) of SCHP's letterbox.

    Centre ((W−1)/2, (H−1)/2) → ((S−1)/2, (S−1)/2), uniform factor (S−1)/max(W−1, H−1): the longer
    side's end pixels land on 0 and S−1, the shorter side is centred.
    """
    if w < 2 or h < 2:
        raise ValueError(f"frame of {w}x{h} pixels is too small to letterbox (need at least 2x2)")
    k = (size - 1) / max(w - 1, h - 1)
    c = (size - 1) / 2
    return np.array([[k, 0.0, c - k * (w - 1) / 2], [0.0, k, c - k * (h - 1) / 2]], dtype=np.float64)


def _as_3x3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def output_to_frame_matrix(w: int, h: int, out_w: int, out_h: int) -> np.ndarray:
    """2×3 affine (output pixel index → frame pixel coordinate) for an out_h×out_w grid covering the frame.

    Pixel-edge convention: output pixel j spans [j·W/out_w, (j+1)·W/out_w) of the frame, so its
    centre sits at (j + 0.5)·W/out_w − 0.5 in cv2 pixel coordinates; out = frame size is the identity.
    """
    sx, sy = w / out_w, h / out_h
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]], dtype=np.float64)


def _out_hw(out_size: OutSize) -> tuple[int, int]:
    if isinstance(out_size, int):
        return out_size, out_size
    oh, ow = out_size
    return int(oh), int(ow)


def sampling_grid(maps: np.ndarray, out_hw: tuple[int, int], src_hw: tuple[int, int],
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``grid_sample`` grid (N, oh, ow, 2) for align_corners=True that reads source pixel ``maps[n] @ (x, y, 1)``.

    ``maps`` (N, 2, 3) maps output pixel indices to source pixel coordinates (cv2's inverse map);
    ``src_hw`` is the size of the tensor that will be sampled.
    """
    oh, ow = out_hw
    sh, sw = src_hw
    m = torch.as_tensor(np.asarray(maps, dtype=np.float64), device=device)
    ys = torch.arange(oh, dtype=torch.float64, device=device).view(1, oh, 1)
    xs = torch.arange(ow, dtype=torch.float64, device=device).view(1, 1, ow)

    def coord(row: int) -> torch.Tensor:
        a, b, c = (m[:, row, i].view(-1, 1, 1) for i in range(3))
        return a * xs + b * ys + c

    gx = coord(0) * (2.0 / max(sw - 1, 1)) - 1.0
    gy = coord(1) * (2.0 / max(sh - 1, 1)) - 1.0
    return torch.stack([gx, gy], dim=-1).to(dtype)


def _to_canvas(frames: Frames, device: torch.device | str | None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(N, 3, Hc, Wc) uint8 tensor on ``device`` holding each frame at the top-left, plus each frame's (h, w)."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frame tensor must be uint8 (N, H, W, 3) BGR, got {frames.dtype} {tuple(frames.shape)}")
        n, h, w, _ = frames.shape
        return frames.to(device or frames.device, non_blocking=True).permute(0, 3, 1, 2), [(h, w)] * n
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)
    if len(frames) == 0:
        raise ValueError("no frames given")
    for i, f in enumerate(frames):
        if not isinstance(f, np.ndarray) or f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
            desc = f"{f.dtype} {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
            raise ValueError(f"frame {i} must be a uint8 (H, W, 3) BGR array, got {desc}")
    sizes = [(f.shape[0], f.shape[1]) for f in frames]
    if len(set(sizes)) == 1:
        batch = np.stack(cast(Sequence[np.ndarray], frames))  # checked above: uint8 (H, W, 3) frames
    else:
        batch = np.zeros((len(frames), max(h for h, _ in sizes), max(w for _, w in sizes), 3), dtype=np.uint8)
        for b, f in zip(batch, frames):
            b[: f.shape[0], : f.shape[1]] = f
    return torch.from_numpy(batch).to(device or "cpu").permute(0, 3, 1, 2), sizes


def _warp_to_square(canvas: torch.Tensor, sizes: list[tuple[int, int]], size: int, dtype: torch.dtype,
                    chunk: int = 16, rounded: bool = True) -> torch.Tensor:
    """Letterbox a uint8 canvas; converted to float ``chunk`` frames at a time to bound memory on big frames.

    ``rounded``: round to whole grey levels, as cv2.warpAffine does on SCHP's uint8 image (values
    stay within 0..255, so no clamp is needed).
    """
    maps = np.stack([np.linalg.inv(_as_3x3(letterbox_matrix(w, h, size)))[:2] for h, w in sizes])
    grid = sampling_grid(maps, (size, size), (canvas.shape[2], canvas.shape[3]), canvas.device, dtype)
    parts = []
    for i in range(0, canvas.shape[0], chunk):
        warped = F.grid_sample(canvas[i : i + chunk].to(dtype), grid[i : i + chunk], mode="bilinear",
                               padding_mode="zeros", align_corners=True)
        parts.append(warped.round_() if rounded else warped)
    return torch.cat(parts)


def letterbox_pixels(frames: Frames, size: int, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32, rounded: bool = True) -> torch.Tensor:
    """(N, 3, S, S) letterboxed BGR frames on the 0..255 scale: cv2.warpAffine's uint8 output (whole grey
    levels, what SCHP's network sees), or the bare bilinear warp with ``rounded=False``."""
    canvas, sizes = _to_canvas(frames, device)
    return _warp_to_square(canvas, sizes, size, dtype, rounded=rounded)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """0..255 BGR → SCHP's network input: /255, then BGR mean/std."""
    mean = torch.tensor(BGR_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(BGR_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels / 255.0 - mean) / std


def letterbox(frames: Frames, size: int, device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, 3, S, S) normalised network input for BGR uint8 frames of any sizes."""
    return normalise(letterbox_pixels(frames, size, device, dtype))


def warp_back(square: torch.Tensor, frame_sizes: Sequence[tuple[int, int]], out_size: OutSize) -> torch.Tensor:
    """Sample S×S maps (N, C, S, S) back onto each frame's grid at ``out_size`` (int or (h, w)), zero outside.

    Output pixel centres are mapped into frame pixel coordinates, then through the letterbox map;
    for out_size = the frame's own size this is SCHP's inverse warp.
    """
    size = square.shape[-1]
    oh, ow = _out_hw(out_size)
    maps = np.stack([
        (_as_3x3(letterbox_matrix(w, h, size)) @ _as_3x3(output_to_frame_matrix(w, h, ow, oh)))[:2]
        for h, w in frame_sizes
    ])
    grid = sampling_grid(maps, (oh, ow), (size, size), square.device, square.dtype)
    return F.grid_sample(square, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def _flip_perm(model: nn.Module) -> list[int]:
    n = int(cast(int, model.num_classes))
    for name, labels in LABEL_SETS.items():
        if len(labels) == n:
            return flip_permutation(name)
    raise ValueError(f"no flip pairs known for a {n}-class model (known: lip 20, atr 18, pascal 7)")


def fusion_logits(model: nn.Module, x: torch.Tensor, flip: bool = False,
                  amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The network's fusion logits (N, C, ≈S/4, ≈S/4), at least float32; ``flip`` averages with the mirrored input."""
    n = x.shape[0]
    if flip:
        x = torch.cat([x, x.flip(-1)])
    first_conv = next((p for p in model.parameters() if p.ndim == 4), None)
    if first_conv is not None and first_conv.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=x.device.type, dtype=amp_dtype or torch.float16, enabled=amp_dtype is not None):
        logits = model(x)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if flip:
        mirrored = logits[n:].flip(-1)[:, _flip_perm(model)]
        logits = (logits[:n] + mirrored) * 0.5
    return logits


def _square_logits(model: nn.Module, frames: Frames, input_size: int, flip: bool,
                   amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    device, dtype = _model_device_dtype(model)
    canvas, sizes = _to_canvas(frames, device)
    warp_dtype = torch.promote_types(dtype, torch.float32)  # pixels stay exact even for a half model
    x = normalise(_warp_to_square(canvas, sizes, input_size, warp_dtype)).to(dtype)
    logits = fusion_logits(model, x, flip, amp_dtype)
    square = F.interpolate(logits, size=(input_size, input_size), mode="bilinear", align_corners=True)
    return square, sizes


@torch.inference_mode()
def parse_frames(model: nn.Module, frames: Frames, input_size: int, out_size: OutSize = 64,
                 flip: bool = False, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Softmax parsing maps (N, C, oh, ow) covering each whole frame, float32 (float64 for a float64 model).

    ``frames``: BGR uint8 (H, W, 3) arrays of any sizes, an (N, H, W, 3) array, or a uint8 tensor.
    ``out_size``: int for a square map or (h, w). ``amp_dtype``: torch.float16 / bfloat16 autocast.
    """
    square, sizes = _square_logits(model, frames, input_size, flip, amp_dtype)
    return torch.softmax(warp_back(square, sizes, out_size), dim=1)


@torch.inference_mode()
def parse_to_labels(model: nn.Module, frames: Frames, input_size: int, flip: bool = False,
                    amp_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """SCHP's label maps: argmax of the logits warped back at each frame's own resolution, (H, W) uint8 each."""
    square, sizes = _square_logits(model, frames, input_size, flip, amp_dtype)
    return [warp_back(square[i : i + 1], [hw], hw)[0].argmax(0).to(torch.uint8) for i, hw in enumerate(sizes)]
