"""Per-core loader cost of ``pretrain.augment_device`` "cpu" vs "gpu" on the real clips, one thread.

What a DataLoader worker core does per pretraining item, measured in this process with one torch
and one OpenCV thread (as ``worker_init`` sets a worker up), on the real Kinetics-400 (340×256,
~300 frames), UCF101 and HMDB51 clips of shared/data/videos:

- ``decode``: decoding the item's frames and nothing else (the decode-only limit),
- ``cpu``: the full item with ``augment_device = "cpu"`` (crop, resize, flip, colour jitter,
  grayscale, normalisation, float32 clips, the teacher target),
- ``gpu``: the full item with ``augment_device = "gpu"`` (crop, resize, flip on uint8 and the
  colour parameters; the colour work runs batched on the training device instead).

The three run interleaved per item (A B C, C B A, ...) so load changes hit them alike. Items vary
the anchors and speeds through (epoch, index). The teacher target comes from a fixed random 64² map
through the real resampler (``bench/gpu_check.FlatCache``), so its cost is included.

    python bench/augment_device.py [--items 24] [--datasets kinetics400 ucf101 hmdb51]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repo on sys.path)

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_manifests.clip_plan import build_clip_plan  # noqa: E402
from data_manifests.manifest import load_manifest  # noqa: E402
from data_manifests.video import read_frames  # noqa: E402
from gpu_check import FlatCache  # noqa: E402
from pipeline.core.config import ClipsConfig, ModelConfig  # noqa: E402
from student.pretrain_data import PretrainClipDataset  # noqa: E402

MODES = ("decode", "cpu", "gpu")


def datasets_of(manifest_dir: Path) -> dict[str, PretrainClipDataset]:
    """The pretraining dataset over ``manifest_dir`` in both augment_device settings (paper sizes)."""
    manifest = load_manifest(manifest_dir)
    clips = ClipsConfig(clip_len=16, speeds=[1, 2], splits=["train"])
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    return {dev: PretrainClipDataset(manifest, plan, FlatCache(), ModelConfig(), clips, seed=0, augment_device=dev)
            for dev in ("cpu", "gpu")}


class RecordingReader:
    """A frame reader that only notes which frames an item asks for (returns black frames of the right size)."""

    def __init__(self, ds: PretrainClipDataset) -> None:
        self.sizes = {str(ds.manifest.abspath(e)): (e.height, e.width) for e in ds.manifest.entries}
        self.calls: list[tuple[str, list[int]]] = []

    def __call__(self, path: Any, frames: Any, **kw: Any) -> np.ndarray:
        self.calls.append((str(path), list(frames)))
        h, w = self.sizes[str(path)]
        return np.zeros((len(frames), h, w, 3), np.uint8)


def wanted_frames(ds: PretrainClipDataset, epoch: int, index: int) -> tuple[str, list[int]]:
    """(video path, frame indices) that item (epoch, index) decodes, whatever the sampling code looks like."""
    spy = RecordingReader(ds)
    original, ds.reader = ds.reader, spy
    try:
        ds[(epoch, index)]
    finally:
        ds.reader = original
    (call,) = spy.calls
    return call


def measure(dss: dict[str, PretrainClipDataset], items: int) -> dict[str, list[float]]:
    """Seconds per item for each mode, interleaved ABC / CBA per item."""
    plan = {(k // len(dss["cpu"]), k % len(dss["cpu"])): None for k in range(items)}
    plan = {key: wanted_frames(dss["cpu"], *key) for key in [(999, 0), *plan]}
    fns: dict[str, Callable[[int, int], Any]] = {
        "decode": lambda e, i: read_frames(*plan[(e, i)]),
        "cpu": lambda e, i: dss["cpu"][(e, i)],
        "gpu": lambda e, i: dss["gpu"][(e, i)],
    }
    n_videos = len(dss["cpu"])
    for mode in MODES:  # warm-up: first-call costs (codec set-up, allocator)
        fns[mode](999, 0)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for k in range(items):
        epoch, index = k // n_videos, k % n_videos
        for mode in (MODES if k % 2 == 0 else tuple(reversed(MODES))):
            t = time.perf_counter()
            fns[mode](epoch, index)
            times[mode].append(time.perf_counter() - t)
    return times


def summarise(times: dict[str, list[float]], sample: dict[str, Any]) -> dict[str, Any]:
    med = {m: statistics.median(v) for m, v in times.items()}
    mean = {m: statistics.fmean(v) for m, v in times.items()}
    per_core = {m: round(1 / mean[m], 2) for m in MODES}
    return {
        "items": len(times["cpu"]),
        "ms_per_item_mean": {m: round(1000 * v, 1) for m, v in mean.items()},
        "ms_per_item_median": {m: round(1000 * v, 1) for m, v in med.items()},
        "samples_per_s_per_core": per_core,
        "fraction_of_decode_limit": {m: common.ratio(mean["decode"], mean[m]) for m in ("cpu", "gpu")},
        "gain_gpu_over_cpu": common.ratio(mean["cpu"], mean["gpu"]),
        "augment_ms_per_item": {m: round(1000 * (mean[m] - mean["decode"]), 1) for m in ("cpu", "gpu")},
        "bytes_per_sample": sample,
    }


def sample_bytes(dss: dict[str, PretrainClipDataset]) -> dict[str, int]:
    """What one sample ships from a worker to the training process, per setting."""
    out = {}
    for dev, ds in dss.items():
        item = ds[(0, 0)]
        out[dev] = int(sum(v.nbytes for v in item.values() if torch.is_tensor(v)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=24, help="items timed per dataset (per mode)")
    ap.add_argument("--datasets", nargs="+", default=list(common.REAL_CLIP_DIRS[::-1]),
                    choices=list(common.REAL_CLIP_DIRS))
    ap.add_argument("--out", type=Path, default=common.RESULTS / "augment_device.json")
    args = ap.parse_args()

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clips = common.real_clips()
    if not clips:
        sys.exit(f"augment_device: no real clips under {common.SHARED / 'videos'} (set PIPELINE_SHARED_DATA)")
    bench = common.Bench("augment_device", "per-core loader cost: augment_device cpu vs gpu, real clips",
                         {"items_per_dataset": args.items, "datasets": args.datasets, "threads": 1,
                          "input_size": 112, "clip_len": 16, "speeds": [1, 2], "teacher_map": "random 64², 20 parts"})
    figures: dict[str, Any] = {}
    rows = []
    for name in args.datasets:
        paths = [p for p in clips if p.relative_to(common.SHARED / "videos").parts[0] == name]
        man = common.manifest_of(paths, common.SHARED / "videos", common.work_dir(f"augment_device/{name}"))
        dss = datasets_of(man)
        fig = summarise(measure(dss, args.items), sample_bytes(dss))
        fig["videos"] = len(paths)
        fig["frame_size"] = f"{dss['cpu'].manifest.entries[0].width}x{dss['cpu'].manifest.entries[0].height}"
        figures[name] = fig
        pc = fig["samples_per_s_per_core"]
        rows.append({"dataset": name, "frame": fig["frame_size"], "decode ms": fig["ms_per_item_mean"]["decode"],
                     "cpu ms": fig["ms_per_item_mean"]["cpu"], "gpu ms": fig["ms_per_item_mean"]["gpu"],
                     "cpu /s/core": pc["cpu"], "gpu /s/core": pc["gpu"], "gain": fig["gain_gpu_over_cpu"],
                     "cpu of limit": fig["fraction_of_decode_limit"]["cpu"],
                     "gpu of limit": fig["fraction_of_decode_limit"]["gpu"]})
        print(f"  {name}: {rows[-1]}", flush=True)
    common.print_table(rows, title="\nper-core loader cost, augment_device cpu vs gpu (1 thread, interleaved)")
    bench.write(figures, args.out, ["per-core rates from one thread in one process; a worker core adds pickling "
                                    "and the transfer of bytes_per_sample"])


if __name__ == "__main__":
    main()
