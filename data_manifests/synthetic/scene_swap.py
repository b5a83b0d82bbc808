"""The scene-swapped HMDB51-style test set: the same test videos, shot in another class's place.

With the scene-bias knob on (``SyntheticSpec.scene_bias`` = p > 0) every class owns a place and the
HMDB51-style videos are shot in their class's place with probability p. A model can then score on
the ordinary (in-distribution) test split by recognising the place; this set renders each test video
again with the SAME actor, motion, camera, distractors and noise but the place of another class
(drawn uniformly among the others), so only the background changes. The drop from the ordinary
test to this one measures how much a model leaned on the scene (the paper's Fig. 3 claim, as a number).

Layout (SCUBA's released layout, read by the ``rawframes`` dataset kind), under the synthetic root:
``hmdb51_scene_swapped/frames/<video_id>/frame000001.png ...`` (1-based, lossless PNG, every frame)
and ``lists/test_split<N>.txt`` with lines ``<video_id> <num_frames> <label>`` (label: the index of
the class in the HMDB51-style class list, i.e. the sorted class names). The frames are the video
after one round trip through the HMDB51-style codec (DIVX), so the two test sets differ in the
background only, not in compression.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import cv2

from pipeline.core.files import atomic_write_text

from .actions import hmdb_name
from .layouts import PlannedVideo, _rng, class_place, hmdb_split_flags, other_class
from .parallel import each_video
from .render import render_video, write_video
from .spec import SyntheticSpec

SWAPPED_DIR = "hmdb51_scene_swapped"
SPLITS = (1, 2, 3)


def video_id(pv: PlannedVideo) -> str:
    """The HMDB51 file name without its extension."""
    return Path(pv.relpath).stem


def swapped_scene(spec: SyntheticSpec, pv: PlannedVideo) -> str:
    """The class whose place the swapped copy of ``pv`` is shot in (never ``pv``'s own class)."""
    return other_class(spec, pv.cls, _rng(*pv.job.clip_seed, 78))


def split_test_videos(spec: SyntheticSpec, videos: Sequence[PlannedVideo]) -> dict[int, list[PlannedVideo]]:
    """Per split N, the HMDB51-style test videos of split N (as in the split files)."""
    out: dict[int, list[PlannedVideo]] = {}
    for split in SPLITS:
        chosen = []
        for cls in spec.classes:
            mine = [v for v in videos if v.cls == cls]
            flags = hmdb_split_flags(spec, cls, sorted(Path(v.relpath).name for v in mine), split)
            chosen += [v for v in mine if flags[Path(v.relpath).name] == 2]
        out[split] = sorted(chosen, key=lambda v: v.relpath)
    return out


def write_swapped_video(root: str, spec: SyntheticSpec, pv: PlannedVideo) -> tuple[str, int]:
    """Render ``pv`` in another class's place, round-trip it through its codec, write its PNG frames;
    returns (video id, frames written). The frame folder appears whole (written beside, then renamed)."""
    job = dataclasses.replace(pv.job, place_seed=class_place(spec, swapped_scene(spec, pv)))
    frames = render_video(job).frames
    final = Path(root) / SWAPPED_DIR / "frames" / video_id(pv)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.tmp-") as tmp:
        encoded = write_video(Path(tmp) / ("video" + Path(pv.relpath).suffix), frames, pv.job.fps, pv.fourcc)
        decoded = _decode_all(encoded)
        out = Path(tmp) / "frames"
        out.mkdir()
        for t, frame in enumerate(decoded, start=1):
            if not cv2.imwrite(str(out / f"frame{t:06d}.png"), frame):
                raise OSError(f"{final}: cannot write frame {t} as PNG")
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
    return video_id(pv), len(decoded)


def _decode_all(path: Path) -> list[Any]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if not frames:
        raise OSError(f"{path}: the round-trip copy does not decode")
    return frames


def write_scene_swapped(root: Path, spec: SyntheticSpec, videos: Sequence[PlannedVideo], workers: int = 1,
                        progress: bool = True) -> dict[str, Any]:
    """Write the scene-swapped copies of every split's test videos and the three list files; returns counts."""
    from pipeline.core.progress import Progress

    by_split = split_test_videos(spec, videos)
    todo = sorted({v.relpath: v for vs in by_split.values() for v in vs}.values(), key=lambda v: v.relpath)
    (root / SWAPPED_DIR / "frames").mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with Progress(len(todo), "scene-swapped", "video", enabled=progress) as bar:
        for vid, n in each_video(write_swapped_video, [(str(root), spec, pv) for pv in todo], workers):
            counts[vid] = n
            bar.update(1)
    label = {c: i for i, c in enumerate(sorted(hmdb_name(c) for c in spec.classes))}
    for split, vs in by_split.items():
        lines = [f"{video_id(v)} {counts[video_id(v)]} {label[hmdb_name(v.cls)]}\n" for v in vs]
        atomic_write_text(root / SWAPPED_DIR / "lists" / f"test_split{split}.txt", "".join(lines))
    return {"videos": len(todo), "frames": sum(counts.values()),
            **{f"split{s}": {"test": len(vs)} for s, vs in by_split.items()}}
