"""Per-clip augmentation for pretraining (RSPNet recipe), with the crop box and flip recorded.

Every random choice is drawn once per clip and applied identically to all of its frames, so a
clip stays a coherent video. The crop box and flip are returned because the teacher's parsing
map must be cut with exactly the same geometry (``TeacherCache.target``): pixels and KD targets
stay aligned under every spatial augmentation.

Crop first on the uint8 frames and resize only the crop (cheap), then colour operations in float.
All randomness comes from a ``numpy.random.Generator`` passed in, so a dataset item is a pure
function of its seed. The colour operations are torchvision's formulas written in plain torch:
importing torchvision costs seconds per process (it pulls in torch._dynamo), paid again by every
spawned DataLoader worker and DDP rank.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class CropBox:
    """A crop in pixels: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int

    def normalised(self, frame_h: int, frame_w: int) -> Box:
        """(x0, y0, x1, y1) in 0..1 frame coordinates, pixel-edge convention (column c spans [c/W, (c+1)/W])."""
        return (self.left / frame_w, self.top / frame_h,
                (self.left + self.width) / frame_w, (self.top + self.height) / frame_h)


@dataclass(frozen=True)
class ClipAugParams:
    """Every random choice of one clip's augmentation (shared by all of its frames)."""

    crop: CropBox
    flip: bool
    jitter_order: tuple[int, ...]  # permutation of (brightness, contrast, saturation, hue); empty: no jitter
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale: bool


@dataclass(frozen=True)
class AugmentedClip:
    """A clip tensor (3, T, size, size), ImageNet-normalised RGB, with the geometry that made it."""

    clip: torch.Tensor
    box: Box
    flip: bool


def sample_crop(height: int, width: int, area: Sequence[float], ratio: Sequence[float],
                rng: np.random.Generator, attempts: int = 10) -> CropBox:
    """torchvision's RandomResizedCrop sampling: area fraction and log-uniform aspect, 10 tries,
    then a centre fallback."""
    frame_area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = frame_area * rng.uniform(area[0], area[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return CropBox(top, left, h, w)
    # Fallback: the whole frame, clipped to the allowed aspect range, centred.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


class ClipAugment:
    """Random resized crop → resize → (flip) → colour jitter → grayscale → normalise, per clip.

    ``jitter`` = (brightness, contrast, saturation, hue) strengths as in torchvision's
    ColorJitter (factors uniform in [1-s, 1+s], hue shift in [-h, h], random order), applied
    with probability ``jitter_p``. Set ``jitter_p=0`` and ``grayscale_p=0`` for geometry-only
    augmentation (tests, or evaluation-like crops).
    """

    def __init__(self, size: int, area: Sequence[float] = (0.4, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.4), jitter_p: float = 1.0,
                 grayscale_p: float = 0.2, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if not 0 < area[0] <= area[1] <= 1:
            raise ValueError(f"crop area must be [min, max] with 0 < min <= max <= 1, got {list(area)}")
        if not 0 <= jitter[3] <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5], got {jitter[3]}")
        self.size = int(size)
        self.area = (float(area[0]), float(area[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.flip_p = flip_p
        self.jitter = tuple(float(j) for j in jitter)
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def sample(self, height: int, width: int, rng: np.random.Generator) -> ClipAugParams:
        """Draw one clip's parameters (always the same number of draws, so streams stay aligned)."""
        crop = sample_crop(height, width, self.area, self.ratio, rng)
        flip = bool(rng.random() < self.flip_p)
        b, c, s, h = self.jitter
        apply_jitter = bool(rng.random() < self.jitter_p)
        order = tuple(int(i) for i in rng.permutation(4))
        factors = (rng.uniform(max(0.0, 1 - b), 1 + b), rng.uniform(max(0.0, 1 - c), 1 + c),
                   rng.uniform(max(0.0, 1 - s), 1 + s), rng.uniform(-h, h))
        grayscale = bool(rng.random() < self.grayscale_p)
        return ClipAugParams(crop=crop, flip=flip, jitter_order=order if apply_jitter else (),
                             brightness=float(factors[0]), contrast=float(factors[1]),
                             saturation=float(factors[2]), hue=float(factors[3]), grayscale=grayscale)

    def apply(self, frames: np.ndarray, params: ClipAugParams) -> AugmentedClip:
        """Apply ``params`` to uint8 RGB frames (T, H, W, 3); returns (3, T, size, size) float32."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
        _, fh, fw, _ = frames.shape
        cb = params.crop
        crop = frames[:, cb.top:cb.top + cb.height, cb.left:cb.left + cb.width]
        x = torch.from_numpy(np.stack([self._resize(f) for f in crop]))  # (T, s, s, 3) uint8
        x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, s, s)
        if params.flip:
            x = x.flip(-1)
        x = self._colour(x, params)
        x = (x - self.mean) / self.std
        return AugmentedClip(clip=x.permute(1, 0, 2, 3).contiguous(), box=cb.normalised(fh, fw), flip=params.flip)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> AugmentedClip:
        return self.apply(frames, self.sample(frames.shape[1], frames.shape[2], rng))

    def geometry(self, frames: np.ndarray, params: ClipAugParams) -> AugmentedClip:
        """Only the crop, resize and flip of :meth:`apply`, on uint8: a (3, T, size, size) uint8 clip.

        For ``pretrain.augment_device = "gpu"``: the worker keeps what the teacher target needs
        (the box and flip) and ships a quarter of the bytes; :func:`student.gpu_augment.colour_batch`
        finishes the clip on the device with :func:`colour_vector` of the same ``params``.
        """
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
        _, fh, fw, _ = frames.shape
        cb = params.crop
        crop = frames[:, cb.top:cb.top + cb.height, cb.left:cb.left + cb.width]
        x = np.stack([self._resize(f) for f in crop])  # (T, s, s, 3) uint8
        if params.flip:
            x = x[:, :, ::-1]
        clip = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))  # (3, T, s, s)
        return AugmentedClip(clip=clip, box=cb.normalised(fh, fw), flip=params.flip)

    def finish(self, geo: AugmentedClip, params: ClipAugParams) -> AugmentedClip:
        """The colour and normalisation of :meth:`apply` on :meth:`geometry`'s uint8 clip, so that one crop
        can take two colour draws (the A-VID key beside key_pos): equal to ``apply(frames, params)``."""
        x = geo.clip.permute(1, 2, 3, 0).contiguous().permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, s, s)
        x = self._colour(x, params)
        x = (x - self.mean) / self.std
        return AugmentedClip(clip=x.permute(1, 0, 2, 3).contiguous(), box=geo.box, flip=geo.flip)

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        if (h, w) == (self.size, self.size):
            return np.ascontiguousarray(frame)
        shrink = h > self.size or w > self.size
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(frame), (self.size, self.size), interpolation=interp)

    @staticmethod
    def _colour(x: torch.Tensor, p: ClipAugParams) -> torch.Tensor:
        for op in p.jitter_order:
            if op == 0:
                x = adjust_brightness(x, p.brightness)
            elif op == 1:
                x = adjust_contrast(x, p.contrast)
            elif op == 2:
                x = adjust_saturation(x, p.saturation)
            else:
                x = adjust_hue(x, p.hue)
        if p.grayscale:
            x = grayscale(x).expand_as(x).contiguous()
        return x


def with_colour_of(params: ClipAugParams, source: ClipAugParams) -> ClipAugParams:
    """``params``' geometry (crop, flip) with ``source``'s colour draw: ``pretrain.shared_colour``, where the
    keys take the query's colour parameters so that colour alone cannot tell a pair apart or together."""
    return dataclasses.replace(params, jitter_order=source.jitter_order, brightness=source.brightness,
                               contrast=source.contrast, saturation=source.saturation, hue=source.hue,
                               grayscale=source.grayscale)


COLOUR_FIELDS = ("jitter", "order0", "order1", "order2", "order3", "brightness", "contrast", "saturation",
                 "hue", "grayscale")


def colour_vector(p: ClipAugParams) -> torch.Tensor:
    """The colour part of ``p`` as a float64 vector (``COLOUR_FIELDS``), batched by the DataLoader.

    ``jitter`` is 1 when the four jitter ops run (in the order ``order0..3``), 0 when they are skipped.
    """
    order = p.jitter_order if p.jitter_order else (0, 1, 2, 3)
    return torch.tensor([1.0 if p.jitter_order else 0.0, *[float(o) for o in order], p.brightness, p.contrast,
                         p.saturation, p.hue, 1.0 if p.grayscale else 0.0], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# Colour operations on float RGB in [0, 1], shape (..., 3, H, W) (torchvision's definitions)
# ------------------------------------------------------------------------------------------------

def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma, (..., 1, H, W)."""
    r, g, b = x.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: float) -> torch.Tensor:
    return (ratio * a + (1.0 - ratio) * b).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    return (x * factor).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean luma of each image (each frame)."""
    mean = grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by ``shift`` turns (in [-0.5, 0.5]) through HSV."""
    if isinstance(shift, (int, float)) and shift == 0:  # a tensor of per-clip shifts is always applied
        return x
    h, s, v = _rgb_to_hsv(x)
    return _hsv_to_rgb(torch.remainder(h + shift, 1.0), s, v)


def _rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue from the largest channel's sector (where two channels tie for largest, both sector
    formulas give the same hue, so which one wins does not matter)."""
    r, g, b = x.unbind(dim=-3)
    maxc, which = x.max(dim=-3)
    cr = maxc - x.amin(dim=-3)
    s = cr / torch.where(cr > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(cr > 0, cr, torch.ones_like(cr))
    h = torch.where(which == 0, (g - b) / safe, torch.where(which == 1, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    return torch.remainder(h / 6.0, 1.0), s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Closed form per channel: c_n = v − v·s·clamp(min(k, 4 − k), 0, 1) with k = (n + 6h) mod 6,
    n = 5, 3, 1 for R, G, B. Equal to the six-sector table, at a fraction of its cost."""
    h6 = h * 6.0
    vs = v * s
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h6 + n, 6.0)
        channels.append(v - vs * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, dim=-3)
