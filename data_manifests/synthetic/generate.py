"""Generate the synthetic human-action dataset: videos, part masks and official split files."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import cv2

from pipeline.core.files import atomic_write_text
from pipeline.core.progress import Progress

from .layouts import (PlannedVideo, plan_dataset, write_hmdb51_splits, write_kinetics_annotations,
                      write_ucf101_splits)
from .masks import mask_path_for, save_part_masks
from .parallel import each_video
from .render import render_video, write_video
from .scene_swap import SWAPPED_DIR, write_scene_swapped
from .spec import SyntheticSpec

INDEX_FILE = "synthetic.json"


def _make_one(root: str, pv: PlannedVideo, single_thread: bool) -> dict[str, Any]:
    """Render one video and write its mask file, then the video (the video appears last)."""
    if single_thread:
        cv2.setNumThreads(1)
    path = Path(root) / pv.dataset / pv.relpath
    r = render_video(pv.job)
    save_part_masks(mask_path_for(path), r.masks)
    write_video(path, r.frames, pv.job.fps, pv.fourcc)
    scene = {"scene": pv.scene} if pv.scene else {}
    return {"dataset": pv.dataset, "path": pv.relpath, "class": pv.cls, "frames": int(r.masks.shape[0]), **scene,
            **r.info}


def _clean_stale_temps(root: Path) -> None:
    """Remove temporary files left by an interrupted run (ours are named ``.<name>.tmp-<pid>...``)."""
    for ds in ("kinetics", "ucf101", "hmdb51"):
        if (root / ds).is_dir():
            for p in (root / ds).rglob(".*.tmp-*"):
                if p.is_file():
                    p.unlink()
    frames = root / SWAPPED_DIR / "frames"
    if frames.is_dir():
        for p in frames.glob(".*.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def generate_synthetic(out_dir: str | os.PathLike, cfg: SyntheticSpec | None = None, workers: int = 1,
                       progress: bool = True) -> dict[str, Any]:
    """Write the synthetic Kinetics / UCF101 / HMDB51 datasets under ``out_dir``; return counts.

    Deterministic: the same spec gives byte-identical mask files and identical decoded frames.
    ``out_dir/synthetic.json`` (spec, counts, per-video parameters) is written last.
    """
    spec = cfg if cfg is not None else SyntheticSpec()
    root = Path(out_dir)
    t0 = time.perf_counter()
    plan = plan_dataset(spec)
    for d in sorted({(root / pv.dataset / pv.relpath).parent for pv in plan}):
        d.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(root)

    records: list[dict[str, Any]] = []
    with Progress(len(plan), "synthetic", "video", enabled=progress) as bar:
        in_workers = workers > 1 and len(plan) > 1  # worker processes each use one OpenCV thread
        for rec in each_video(_make_one, [(str(root), pv, in_workers) for pv in plan], workers):
            records.append(rec)
            bar.update(1)

    by = {ds: [pv for pv in plan if pv.dataset == ds] for ds in ("kinetics", "ucf101", "hmdb51")}
    summary: dict[str, Any] = {
        "root": ".",  # the folder holding this file: a work directory can be moved
        "videos": len(plan),
        "frames": sum(r["frames"] for r in records),
        "classes": list(spec.classes),
        "kinetics": write_kinetics_annotations(root / "kinetics", by["kinetics"]),
        "ucf101": {"videos": len(by["ucf101"]), **write_ucf101_splits(root / "ucf101", spec, by["ucf101"])},
        "hmdb51": {"videos": len(by["hmdb51"]), **write_hmdb51_splits(root / "hmdb51", spec, by["hmdb51"])},
    }
    if spec.scene_bias > 0:  # the scene-swapped copies of the HMDB51-style test videos (scene_swap.py)
        summary[SWAPPED_DIR] = write_scene_swapped(root, spec, by["hmdb51"], workers, progress)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    index = {"spec": spec.to_dict(), "summary": summary, "videos": records}
    atomic_write_text(root / INDEX_FILE, json.dumps(index, indent=1, sort_keys=True))
    return summary
