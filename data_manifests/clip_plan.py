"""The clip plan: K anchor frames per video, the shared frame contract of teacher and student.

Every training clip is centred on an anchor ("the middle frame of the clip", paper Eq. 2), at
any playback speed, so the teacher parses exactly the anchors and the student's KD target is the
anchor's map. Anchors are evenly spaced over the positions where the longest clip (``span`` =
clip_len × max speed frames, starting at ``anchor - span // 2``) fits inside the video.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from data_manifests.manifest import SPLITS, Manifest


@dataclass(frozen=True)
class Clip:
    """One anchor of one video: ``clip_id = f"{video_id}@{frame}"``, ``video_index`` into manifest.entries."""

    clip_id: str
    video_index: int
    frame: int


def make_clip_id(video_id: str, frame: int) -> str:
    return f"{video_id}@{frame}"


def parse_clip_id(clip_id: str) -> tuple[str, int]:
    """Inverse of :func:`make_clip_id` (video ids may themselves contain '@')."""
    video_id, sep, frame = clip_id.rpartition("@")
    if not sep or not frame.isdigit():
        raise ValueError(f"clip id {clip_id!r} is not '<video_id>@<frame>'")
    return video_id, int(frame)


def anchor_frames(num_frames: int, anchors: int, span: int) -> list[int]:
    """Up to ``anchors`` unique sorted frames, evenly spaced from the first to the last valid anchor.

    Valid anchors a satisfy 0 <= a - span//2 and a - span//2 + span <= num_frames, i.e.
    a in [span//2, num_frames - (span - span//2)]; K of them sit at lo + round(k (hi - lo) / (K - 1))
    (half rounds up), so the first and last clips touch the video's ends. Fewer valid positions
    than K give every valid position; one anchor is the midpoint; videos shorter than ``span``
    get their centre frame ``num_frames // 2`` (their clips are clamped at the ends).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if anchors < 1 or span < 1:
        raise ValueError(f"anchors and span must be >= 1, got anchors={anchors}, span={span}")
    if num_frames < span:
        return [num_frames // 2]
    lo = span // 2
    hi = num_frames - (span - span // 2)
    if anchors == 1 or hi == lo:
        return [(lo + hi) // 2]
    d, k1 = hi - lo, anchors - 1
    # round-half-up of k*d/k1 in integers
    return sorted({lo + (2 * k * d + k1) // (2 * k1) for k in range(anchors)})


def clip_indices(anchor: int, num_frames: int, clip_len: int, speed: int) -> list[int]:
    """Frames of a clip of ``clip_len`` frames at ``speed`` centred on ``anchor``, clamped to the video."""
    if num_frames < 1 or clip_len < 1 or speed < 1:
        raise ValueError(f"num_frames, clip_len and speed must be >= 1, got {num_frames}, {clip_len}, {speed}")
    start = anchor - (clip_len * speed) // 2
    last = num_frames - 1
    return [min(max(start + speed * i, 0), last) for i in range(clip_len)]


def window_indices(start: int, num_frames: int, clip_len: int, speed: int) -> list[int]:
    """Frames of a clip of ``clip_len`` frames at ``speed`` starting at ``start``, clamped to the video.

    RSPNet's key clips: one window per video at a random start; the clip at speed s takes every
    s-th frame from the window's start, so the clips of one window at two speeds share their first frame.
    """
    if num_frames < 1 or clip_len < 1 or speed < 1:
        raise ValueError(f"num_frames, clip_len and speed must be >= 1, got {num_frames}, {clip_len}, {speed}")
    last = num_frames - 1
    return [min(max(start + speed * i, 0), last) for i in range(clip_len)]


def build_clip_plan(manifest: Manifest, anchors: int, span: int, splits: Sequence[str]) -> list[Clip]:
    """Every anchor of every video in ``splits``, in manifest order then frame order."""
    if isinstance(splits, str):
        splits = [splits]
    unknown = set(splits) - set(SPLITS)
    if not splits or unknown:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {list(splits)}")
    wanted = set(splits)
    plan: list[Clip] = []
    for vi, entry in enumerate(manifest.entries):
        if entry.split not in wanted:
            continue
        for f in anchor_frames(entry.frames, anchors, span):
            plan.append(Clip(make_clip_id(entry.id, f), vi, f))
    return plan
