"""What content hashes and the video checks cost on a Kinetics-sized tree (240k videos), by sampling.

Three costs are added by issue 24 and extrapolated here from a sample of real files (no 240k files
are written): the sha256 of every input video (``sources.jsonl``, written with the manifest and
re-checked by ``status --verify``) and of every transcoded copy (``stage.json``), the check at
"mark done" (each video opened and its first frame decoded), and the ``--verify`` decode (every
frame of each copy). The sample: the Kinetics clips of the shared data and their MJPEG copies
(short side 128, as the transcode stage writes them). Sizes per video for the extrapolation are
the sample's own means; hashing is measured on files in the page cache, so it is the CPU cost, and
a cold disk adds its read time (``bytes / disk bandwidth``), printed for 500 MB/s.

    python bench/input_hash.py [--videos 240000] [--repeats 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from data_manifests.transcode import TranscodeSpec, transcode_video  # noqa: E402
from data_manifests.video import count_frames  # noqa: E402
from pipeline.completeness import container_frames  # noqa: E402
from pipeline.core.fingerprint import sha256_file  # noqa: E402


def _per_file(fn, paths: list[Path], repeats: int) -> float:
    """Best-of-``repeats`` seconds for ``fn`` over every path once (warm page cache)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t0)
    return best


def _costs(paths: list[Path], repeats: int) -> dict[str, float]:
    nbytes = sum(p.stat().st_size for p in paths)
    for p in paths:  # into the page cache
        p.read_bytes()
    t_hash = _per_file(sha256_file, paths, repeats)
    t_open = _per_file(container_frames, paths, repeats)
    t_decode = _per_file(lambda p: count_frames(p, threads=1), paths, max(1, repeats // 2))
    return {"files": len(paths), "bytes_per_video": nbytes / len(paths), "sha256_MB_per_s": nbytes / t_hash / 1e6,
            "mark_done_s_per_video": t_open / len(paths), "verify_decode_s_per_video": t_decode / len(paths)}


def _extrapolate(c: dict[str, float], videos: int, disk_mb_s: float) -> dict[str, float]:
    total = c["bytes_per_video"] * videos
    return {"total_GB": total / 1e9, "sha256_cpu_min": total / (c["sha256_MB_per_s"] * 1e6) / 60,
            "cold_read_min_at_disk": total / (disk_mb_s * 1e6) / 60,
            "mark_done_check_min_1_thread": c["mark_done_s_per_video"] * videos / 60,
            "verify_decode_min_1_thread": c["verify_decode_s_per_video"] * videos / 60}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=240_000, help="Videos in the extrapolated tree (Kinetics-400).")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--disk-mb-s", type=float, default=500.0, help="Disk bandwidth for the cold-read estimate.")
    args = ap.parse_args()
    bench = common.Bench("input_hash", "content hash and video-check costs, extrapolated to a Kinetics-sized tree",
                         settings=vars(args))
    sources = sorted((common.SHARED / "videos" / "kinetics400").rglob("*.mp4"))
    if not sources:
        raise SystemExit(f"no Kinetics clips under {common.SHARED / 'videos' / 'kinetics400'}")
    with tempfile.TemporaryDirectory() as tmp:
        copies = []
        for i, src in enumerate(sources):
            dst = Path(tmp) / f"{i}.avi"
            transcode_video(src, dst, TranscodeSpec(short_side=128))
            copies.append(dst)
        rows, figures = [], {}
        for name, paths in (("kinetics sources", sources), ("mjpeg copies (128)", copies)):
            c = _costs(paths, args.repeats)
            e = _extrapolate(c, args.videos, args.disk_mb_s)
            figures[name] = {"sample": c, f"extrapolated_{args.videos}": e}
            rows.append({"files": name, "MB/video": round(c["bytes_per_video"] / 1e6, 3),
                         "sha256 MB/s": round(c["sha256_MB_per_s"]), "total GB": round(e["total_GB"], 1),
                         "sha256 min": round(e["sha256_cpu_min"], 1),
                         "cold read min": round(e["cold_read_min_at_disk"], 1),
                         "mark-done min": round(e["mark_done_check_min_1_thread"], 1),
                         "verify decode min": round(e["verify_decode_min_1_thread"], 1)})
    common.print_table(rows, title=f"per {args.videos} videos, one core (sample: {len(sources)} Kinetics clips)")
    bench.write(figures, notes=["hashing measured on cached files: CPU cost; a cold disk adds 'cold read min'",
                                "mark-done check: open + first frame per video (threads overlap it in the stage)",
                                "verify decode: every frame of each video, one thread"])


if __name__ == "__main__":
    main()
