"""Which short side should the student's transcoded copies have? What the crops see, and what decoding costs.

RSPNet decodes copies 256 pixels high (its transcode script) and takes random resized crops of 0.4-1.0 of
the frame's area, aspect 3/4-4/3, resized to 112². From copies with a short side of ``s`` a crop's side
is about sqrt(area · W · H): below 112 the crop is UPSCALED (blurred, not what the official pipeline
trains on). For each short side (128, 171, 256; Kinetics frames are 340×256):

- crops: with the project's own crop sampler (``student.transforms.sample_crop``), the fraction of
  crops upscaled in at least one dimension, in both, and the median source pixels per output pixel;
- decode: the real Kinetics clips transcoded by the project's transcoder to that short side, then
  random 32-frame windows read with the project's frame reader on one core (frames/s, interleaved
  A B C C B A so load changes hit every size alike), and the bytes per frame; the originals too.

    python bench/resolution.py            # writes bench/results/resolution.json
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import numpy as np  # noqa: E402

SIDES = (128, 171, 256)
OUT = 112
KINETICS_WH = (340, 256)


def frame_size(short: int) -> tuple[int, int]:
    """(width, height) of a Kinetics frame scaled to ``short`` (as the transcoder does: even width)."""
    w = KINETICS_WH[0] * short / KINETICS_WH[1]
    return 2 * round(w / 2), short


def crop_stats(short: int, samples: int, seed: int = 0) -> dict[str, Any]:
    """What the pretraining crops of a ``short``-pixel frame are resized from."""
    from student.transforms import sample_crop

    w, h = frame_size(short)
    rng = np.random.default_rng(seed)
    boxes = [sample_crop(h, w, (0.4, 1.0), (3 / 4, 4 / 3), rng) for _ in range(samples)]
    ch = np.array([b.height for b in boxes])
    cw = np.array([b.width for b in boxes])
    return {"frame": [w, h], "crops": samples,
            "upscaled_any_dim_pct": round(100 * float(np.mean((ch < OUT) | (cw < OUT))), 2),
            "upscaled_both_dims_pct": round(100 * float(np.mean((ch < OUT) & (cw < OUT))), 2),
            "median_source_px_per_output_px": round(float(np.median(ch * cw / OUT ** 2)), 3),
            "min_crop_side": int(min(ch.min(), cw.min()))}


def copies(videos: list[Path], short: int, work: Path) -> list[Path]:
    """MJPEG copies of ``videos`` at ``short`` (made once, reused)."""
    from data_manifests.transcode import TranscodeSpec, transcode_video

    out = []
    for v in videos:
        dst = work / f"s{short}" / (v.stem + ".avi")
        if not dst.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            transcode_video(v, dst, TranscodeSpec(short_side=short))
        out.append(dst)
    return out


def read_windows(paths: list[Path], windows: int, rng: np.random.Generator) -> float:
    """Seconds to read ``windows`` random 32-frame windows (one core, the loader's reader)."""
    from data_manifests.video import count_frames, read_frames

    counts = {p: count_frames(p) for p in paths}
    t = time.perf_counter()
    for i in range(windows):
        p = paths[i % len(paths)]
        start = int(rng.integers(0, counts[p] - 32))
        read_frames(p, list(range(start, start + 32)), threads=1)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", type=int, default=20000)
    ap.add_argument("--windows", type=int, default=12, help="32-frame windows read per size and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import cv2

    cv2.setNumThreads(1)
    videos = [p for p in common.real_clips() if "kinetics400" in p.parts]
    if not videos:
        print(f"resolution: no Kinetics clips under {common.SHARED / 'videos'} (set PIPELINE_SHARED_DATA)")
        return 2
    bench = common.Bench("resolution", "short side of the student's copies: crop upscaling and decode cost",
                         {"sides": SIDES, "crops": args.crops, "windows": args.windows, "rounds": args.rounds,
                          "videos": [p.name for p in videos]})
    work = common.work_dir("resolution")
    sets = {f"copy_{s}": copies(videos, s, work) for s in SIDES}
    sets["original"] = videos
    rng = np.random.default_rng(0)
    seconds: dict[str, list[float]] = {k: [] for k in sets}
    for name in common.abba(list(sets), args.rounds):
        seconds[name].append(read_windows(sets[name], args.windows, rng))
    figures: dict[str, Any] = {}
    for name, paths in sets.items():
        frames = 32 * args.windows * len(seconds[name])
        row = {"frames_per_s_one_core": round(frames / sum(seconds[name]), 1),
               "bytes_per_frame": round(sum(p.stat().st_size for p in paths) /
                                        sum(int(cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FRAME_COUNT))
                                            for p in paths))}
        if name.startswith("copy_"):
            row.update(crop_stats(int(name.split("_")[1]), args.crops))
        figures[name] = row
    ok = [s for s in SIDES if figures[f"copy_{s}"]["upscaled_both_dims_pct"] == 0.0]
    figures["choice"] = {"rule": "the smallest short side at which no crop is upscaled in both dimensions",
                         "short_side": min(ok) if ok else max(SIDES)}
    rows = [{"input": k, **{c: v.get(c) for c in ("frames_per_s_one_core", "bytes_per_frame", "upscaled_any_dim_pct",
                                                  "upscaled_both_dims_pct", "median_source_px_per_output_px")}}
            for k, v in figures.items() if k != "choice"]
    common.print_table(rows, title="\nShort side of the student's copies (Kinetics 340x256 originals)")
    print(f"choice: short side {figures['choice']['short_side']} ({figures['choice']['rule']})")
    bench.write(figures, args.out, ["frames/s: random 32-frame windows, one decoder thread, "
                                    f"{math.prod((args.windows, args.rounds))} windows per input"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
