"""Benchmark manifest probing (decode-count every video once) with 1 and 2 joblib workers.

Probes the real clips of shared/data/videos, the list repeated a few times, after a warm-up that
starts the worker pool and fills the page cache (so figures are decode cost, not disk or process
start-up). Writes bench/results/probe.json and prints a table.

    .venv/bin/python bench/probe.py [--repeats 3] [--workers 1 2] [--videos DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import joblib  # noqa: E402
import numpy as np  # noqa: E402

from common import cpu_model  # noqa: E402
from data_manifests.builders import list_video_files  # noqa: E402
from data_manifests.probe import probe_videos  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--videos", type=Path, default=shared / "videos")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "probe.json")
    args = ap.parse_args()

    clips = list_video_files(args.videos)
    if not clips:
        sys.exit(f"no videos under {args.videos}")
    paths = clips * args.repeats
    probe_videos(clips, workers=max(args.workers), progress=False)  # warm-up: pool + page cache
    rows = []
    frames_ref = None
    configs = [(w, None) for w in args.workers]
    if 1 in args.workers:
        configs.insert(args.workers.index(1) + 1, (1, 1))  # in-process, single-threaded decoding
    for w, threads in configs:
        t0 = time.perf_counter()
        res = probe_videos(paths, workers=w, progress=False, threads=threads)
        dt = time.perf_counter() - t0
        frames = sum(r.info.frames for r in res if r.info is not None)
        failed = sum(r.info is None for r in res)
        frames_ref = frames if frames_ref is None else frames_ref
        assert frames == frames_ref, "probe results differ between worker counts"
        rows.append({"workers": w, "decoder_threads": threads or ("ffmpeg default" if w == 1 else 1),
                     "videos": len(paths), "seconds": round(dt, 3),
                     "videos_per_s": round(len(paths) / dt, 2), "frames_per_s": round(frames / dt, 1),
                     "frames": frames, "failed": failed})
    base = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = round(base / r["seconds"], 2)

    record = {
        "benchmark": "manifest probe (decode-count every video once)",
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                    "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
        "versions": {"python": platform.python_version(), "opencv": cv2.__version__, "joblib": joblib.__version__,
                     "numpy": np.__version__},
        "settings": {"videos_dir": str(args.videos), "distinct_clips": len(clips), "repeats": args.repeats,
                     "workers": args.workers, "warm_up": True,
                     "note": "workers=1 probes in-process; the extra workers=1 row caps FFmpeg at 1 thread"},
        "figures": rows,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")

    print(f"probe: {len(clips)} clips x {args.repeats} = {len(paths)} videos, {frames_ref} frames; "
          f"{os.cpu_count()} CPUs, load {record['machine']['load_avg_1_5_15']}")
    print(f"{'workers':>7} {'threads':>14} {'seconds':>8} {'videos/s':>9} {'frames/s':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['workers']:>7} {str(r['decoder_threads']):>14} {r['seconds']:>8.2f} {r['videos_per_s']:>9.2f} "
              f"{r['frames_per_s']:>9.1f} "
              f"{r['speedup']:>8.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
