"""Finetuning inputs: random training clips and the fixed multi-view test protocol.

Training clip (RSPNet's finetune recipe): ``clip_len`` consecutive frames from a uniformly random
start, one random resized crop (area ``crop_area``, aspect 3/4-4/3) resized to input_size², a
horizontal flip with p 0.5, the same for every frame of the clip, ImageNet normalisation.
Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``: a sample's
augmentation depends only on (seed, epoch, sample), never on worker count, rank or resume point.

Test views: ``clips`` starts ``round(linspace(0, n - clip_len, clips))`` (half rounds up); frames
beyond a short video's end repeat its last frame. Each clip's frames are resized so the SHORT side
equals input_size, then cut into ``crops`` squares: the centre (1) or left/centre/right (3; for a
portrait frame top/centre/bottom, i.e. along the long side). View ``v`` is clip ``v // crops``,
crop ``v % crops``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data_manifests.manifest import Manifest, VideoEntry
from data_manifests.video import read_frames
from pipeline.core.errors import ConfigError
from student.transforms import sample_crop

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
ASPECT = (3 / 4, 4 / 3)


def consecutive_frames(start: int, clip_len: int, num_frames: int) -> list[int]:
    """``clip_len`` consecutive frames from ``start``, clamped to the last frame."""
    last = max(num_frames - 1, 0)
    return [min(start + i, last) for i in range(clip_len)]


def view_starts(num_frames: int, clip_len: int, clips: int) -> list[int]:
    """Evenly spaced clip starts: round(linspace(0, n - clip_len, clips)), half up; 0 if too short."""
    hi = max(num_frames - clip_len, 0)
    return [int(math.floor(x + 0.5)) for x in np.linspace(0.0, float(hi), clips)]


def random_train_start(num_frames: int, clip_len: int, rng: np.random.Generator) -> int:
    return int(rng.integers(0, max(num_frames - clip_len, 0) + 1))


def random_resized_box(height: int, width: int, area: Sequence[float], rng: np.random.Generator,
                       ratio: Sequence[float] = ASPECT) -> tuple[int, int, int, int]:
    """A pixel box (x0, y0, x1, y1) from the same RandomResizedCrop rule as pretraining."""
    c = sample_crop(height, width, area, ratio, rng)
    return c.left, c.top, c.left + c.width, c.top + c.height


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (T, H, W, 3) uint8 frames to (T, size_h, size_w, 3), bilinear."""
    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    interp = cv2.INTER_AREA if h < frames.shape[1] and w < frames.shape[2] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    return resize_frames(np.ascontiguousarray(frames[:, y0:y1, x0:x1]), (size, size))


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) after resizing so the short side equals ``size`` (aspect kept, rounded)."""
    if height <= width:
        return size, max(size, int(round(width * size / height)))
    return max(size, int(round(height * size / width))), size


def view_crop_boxes(height: int, width: int, size: int, crops: int) -> list[tuple[int, int, int, int]]:
    """Square boxes of side ``size`` in a frame of (height, width) whose short side is ``size``."""
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    long_len, horizontal = (width, True) if width >= height else (height, False)
    offsets = [(long_len - size) // 2] if crops == 1 else [0, (long_len - size) // 2, long_len - size]
    return [(o, 0, o + size, size) if horizontal else (0, o, size, o + size) for o in offsets]


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 RGB -> (3, T, H, W) float32, ImageNet-normalised."""
    x = (frames.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(3, 0, 1, 2)))


def train_clip(frames_of: "FrameSource", num_frames: int, clip_len: int, input_size: int,
               crop_area: Sequence[float], rng: np.random.Generator) -> torch.Tensor:
    """One augmented training clip (3, T, S, S)."""
    start = random_train_start(num_frames, clip_len, rng)
    frames = frames_of(consecutive_frames(start, clip_len, num_frames))
    box = random_resized_box(frames.shape[1], frames.shape[2], crop_area, rng)
    clip = crop_resize(frames, box, input_size)
    if rng.random() < 0.5:
        clip = clip[:, :, ::-1]
    return to_tensor(clip)


def multi_views(frames_of: "FrameSource", num_frames: int, clip_len: int, input_size: int,
               clips: int, crops: int, views: Sequence[int] | None = None) -> torch.Tensor:
    """The test views ``views`` (default: all clips × crops) of one video, (V, 3, T, S, S)."""
    starts = view_starts(num_frames, clip_len, clips)
    views = list(range(clips * crops)) if views is None else list(views)
    wanted = sorted({v // crops for v in views})
    needed = sorted({i for c in wanted for i in consecutive_frames(starts[c], clip_len, num_frames)})
    decoded = frames_of(needed)
    pos = {f: i for i, f in enumerate(needed)}
    h, w = short_side_size(decoded.shape[1], decoded.shape[2], input_size)
    boxes = view_crop_boxes(h, w, input_size, crops)
    per_clip: dict[int, np.ndarray] = {}
    for c in wanted:
        idx = [pos[f] for f in consecutive_frames(starts[c], clip_len, num_frames)]
        per_clip[c] = resize_frames(decoded[idx], (h, w))
    out = []
    for v in views:
        x0, y0, x1, y1 = boxes[v % crops]
        out.append(to_tensor(per_clip[v // crops][:, y0:y1, x0:x1]))
    return torch.stack(out)


class FrameSource:
    """Reads frames of one manifest entry by index (the one frame-exact reader)."""

    def __init__(self, manifest: Manifest, entry: VideoEntry) -> None:
        self.path = manifest.abspath(entry)

    def __call__(self, indices: Sequence[int]) -> np.ndarray:
        return read_frames(self.path, list(indices))


class TrainClips(Dataset):
    """Random augmented clips of ``entries``; call ``set_epoch`` so each epoch draws anew."""

    def __init__(self, manifest: Manifest, entries: Sequence[VideoEntry], clip_len: int, input_size: int,
                 crop_area: Sequence[float], seed: int) -> None:
        lo, hi = crop_area
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"finetune.crop_area must be [min, max] with 0 < min <= max <= 1, got {list(crop_area)}")
        self.manifest, self.entries = manifest, list(entries)
        self.clip_len, self.input_size, self.crop_area, self.seed = clip_len, input_size, (lo, hi), seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        e = self.entries[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        clip = train_clip(FrameSource(self.manifest, e), e.frames, self.clip_len, self.input_size,
                          self.crop_area, rng)
        return clip, e.label


@dataclass(frozen=True)
class ViewChunk:
    """Views [start, stop) of the video at ``pos`` in the dataset's entry list."""

    pos: int
    start: int
    stop: int


class ViewChunks(Dataset):
    """Chunks of at most ``chunk`` views per video, so memory stays bounded for long protocols.

    Item: ``(pos, first_view, views (n, 3, T, S, S))``; use with ``batch_size=None``.
    """

    def __init__(self, manifest: Manifest, entries: Sequence[VideoEntry], clip_len: int, input_size: int,
                 clips: int, crops: int, chunk: int) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.manifest, self.entries = manifest, list(entries)
        self.clip_len, self.input_size, self.clips, self.crops = clip_len, input_size, clips, crops
        n = clips * crops
        self.items = [ViewChunk(p, s, min(s + chunk, n)) for p in range(len(self.entries)) for s in range(0, n, chunk)]

    @property
    def views_per_video(self) -> int:
        return self.clips * self.crops

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, int, torch.Tensor]:
        it = self.items[i]
        e = self.entries[it.pos]
        views = multi_views(FrameSource(self.manifest, e), e.frames, self.clip_len, self.input_size,
                           self.clips, self.crops, range(it.start, it.stop))
        return it.pos, it.start, views
