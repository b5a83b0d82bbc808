"""The Kinetics-400 wall-time table (200 epochs × 240k videos) from measured rates, with each row's limit.

Inputs, each named in the output with where it came from:
- the loader the real configs use (transcoded copies at their ``transcode.short_side``, GPU
  augmentation): items/s per worker core from ``bench/loader.py --real`` (``--loader`` JSON);
- GPU samples/s and teacher frames/s: from ``bench/results/gpu_check.json`` when a GPU has run the
  full check (not ``--smoke``) on the row's kind of GPU; otherwise the assumed rates below, marked so.

    python bench/k400_walltime.py --loader bench/results/loader_real_s171.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SAMPLES = 200 * 240_000  # 200 epochs of Kinetics-400's ~240k training videos
ANCHORS = 8 * 240_000  # teacher frames: 8 anchors per video
CONTENDER = "copies: loader, gpu augment"
# (row, GPU kind, GPUs, CPU cores); one core per GPU runs the training process, the rest feed loaders
SCALES = [("8 x H100, 112 cores", "H100", 8, 112), ("8 x H100, 64 cores", "H100", 8, 64),
          ("4 x V100, 40 cores (RSPNet's scale)", "V100", 4, 40)]
# Assumed until bench/gpu_check.py has run on that GPU: C3D bf16 training samples/s, teacher fp16 frames/s.
ASSUMED = {"H100": {"gpu_samples_per_s": 300.0, "teacher_frames_per_s": 400.0},
           "V100": {"gpu_samples_per_s": 70.0, "teacher_frames_per_s": 100.0}}


def loader_rate(path: Path) -> tuple[float, dict[str, Any]]:
    """Items/s per core of the real configs' loader on Kinetics clips, and the settings it ran with."""
    rec = json.loads(path.read_text())["real_clips"]
    per = rec["figures"]["kinetics400"]["per_contender"]
    return float(per[CONTENDER]["samples_per_s_per_core"]), rec["settings"]


def gpu_rates(path: Path) -> dict[str, dict[str, Any]]:
    """Measured rates per GPU kind from a full (non-smoke) gpu_check run, if any."""
    if not path.is_file():
        return {}
    rec = json.loads(path.read_text())
    if rec.get("settings", {}).get("smoke") or not rec.get("machine", {}).get("gpu"):
        return {}
    fig = rec["figures"]
    kind = next((k for k in ASSUMED if k in str(rec["machine"]["gpu"])), str(rec["machine"]["gpu"]))
    out: dict[str, Any] = {}
    alone = fig.get("pretrain", {}).get("c3d", {}).get("gpu_alone", {}).get("samples_per_s")
    if alone:
        out["gpu_samples_per_s"] = float(alone)
    runs = fig.get("teacher", {}).get("runs", {})
    fp16 = [r["frames_per_s"] for k, r in runs.items() if k.startswith("fp16")]
    if fp16:
        out["teacher_frames_per_s"] = float(max(fp16))
    return {kind: out}


def rows(per_core: float, measured: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name, kind, gpus, cores in SCALES:
        workers = (cores - gpus) // gpus
        supply = workers * per_core
        got = measured.get(kind, {})
        gpu = got.get("gpu_samples_per_s", ASSUMED[kind]["gpu_samples_per_s"])
        teacher = got.get("teacher_frames_per_s", ASSUMED[kind]["teacher_frames_per_s"])
        rate = min(supply, gpu)
        out.append({"scale": name, "workers/GPU": workers, "loader/GPU": round(supply, 1),
                    "GPU samples/s": gpu, "GPU source": "measured" if "gpu_samples_per_s" in got else "assumed",
                    "teacher cache h": round(ANCHORS / (gpus * teacher) / 3600, 2),
                    "teacher source": "measured" if "teacher_frames_per_s" in got else "assumed",
                    "pretrain h": round(SAMPLES / (gpus * rate) / 3600, 1),
                    "limit": "loader (CPU)" if supply < gpu else "GPU"})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loader", type=Path, default=common.RESULTS / "loader_real_s171.json")
    ap.add_argument("--gpu-check", type=Path, default=common.RESULTS / "gpu_check.json")
    args = ap.parse_args(argv)
    per_core, settings = loader_rate(args.loader)
    where = args.loader.resolve()
    shown = where.relative_to(common.REPO) if where.is_relative_to(common.REPO) else where
    print(f"loader: {per_core} items/s per core ({CONTENDER}, copies at short side {settings['short_side']}; {shown})")
    table = rows(per_core, gpu_rates(args.gpu_check))
    common.print_table(table, title=f"\nKinetics-400, 200 epochs ({SAMPLES:,} samples), teacher {ANCHORS:,} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
