"""Pretraining loader throughput (samples/s) against the decode-only limit, same workers.

Real: ``student.pretrain_data.PretrainClipDataset`` + ``build_pretrain_loader`` (one item = query,
positive key and negative key clips, each augmented, plus the teacher target cut from the HDF5
cache with the query's crop box and flip). Limit: the same loader over the same items that only
decodes the same frames with ``read_frames`` (one call per item, as the real dataset does) and
returns nothing else. Data: the synthetic Kinetics-layout dataset (~60 videos), its manifest and
a teacher cache built with ``teacher.cache_stage`` and the ``rendered`` backend.

Epochs of the two loaders alternate (A B B A …) after one untimed warm-up epoch each. If the
ratio misses the goal (>= 0.7 of the limit), the per-item cost is profiled in-process (cProfile,
one thread, like a DataLoader worker) and broken down by component.

    .venv/bin/python bench/loader.py [--quick] [--workers 2] [--batch 8] [--epochs 3]
    .venv/bin/python bench/loader.py --real [--quick]     # real clips, originals vs transcoded copies

``--real`` (bench/loader_real.py) writes its figures under ``real_clips`` in the same JSON; each mode
keeps the other's.
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import torch  # noqa: E402

from data_manifests.clip_plan import build_clip_plan  # noqa: E402
from data_manifests.manifest import load_manifest  # noqa: E402
from data_manifests.video import read_frames  # noqa: E402
from pipeline.core.config import ClipsConfig, ModelConfig, TeacherConfig  # noqa: E402
from pipeline.core.distributed import DistInfo  # noqa: E402
from student.pretrain_data import PretrainClipDataset, build_pretrain_loader  # noqa: E402
from teacher.cache_reader import TeacherCache  # noqa: E402
from teacher.cache_stage import build_teacher_cache  # noqa: E402

GOAL = 0.7


def epoch_time(loader, sampler, epoch: int) -> tuple[float, int]:
    """Seconds to draw every batch of one epoch (persistent workers), and the samples drawn."""
    sampler.set_epoch(epoch)
    n = 0
    t = time.perf_counter()
    for batch in loader:
        n += len(next(iter(batch.values())))
    return time.perf_counter() - t, n


def time_loaders(loaders: dict, epochs: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per timed epoch and samples drawn, per loader: one warm-up epoch each, then ABBA."""
    times: dict[str, list[float]] = {k: [] for k in loaders}
    samples: dict[str, int] = {k: 0 for k in loaders}
    for loader, sampler in loaders.values():  # warm-up: start the persistent workers, fill caches
        epoch_time(loader, sampler, 0)
    for i, name in enumerate(common.abba(list(loaders), epochs)):
        loader, sampler = loaders[name]
        dt, n = epoch_time(loader, sampler, 1 + i)
        times[name].append(dt)
        samples[name] += n
        print(f"  {name:>11}: {n} samples in {dt:.2f} s ({n / dt:.1f}/s)", flush=True)
    for loader, _ in loaders.values():
        loader._iterator = None  # shut the persistent workers down before profiling
    return times, samples


def profile_items(ds: PretrainClipDataset, items: int) -> dict:
    """cProfile of ``items`` dataset items in-process with one torch thread and one decoder thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds.reader = functools.partial(read_frames, threads=1)
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    for i in range(items):
        ds[(100, i % len(ds))]
    prof.disable()
    wall = time.perf_counter() - t
    torch.set_num_threads(threads)
    ds.reader = read_frames
    st = pstats.Stats(prof)
    cum: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        key = f"{Path(file).name}:{func}"
        cum[key] = cum.get(key, 0.0) + ct
    per_item_ms = lambda s: round(1000 * s / items, 2)  # noqa: E731
    components = {
        "read_frames (decode)": cum.get("video.py:read_frames", 0.0),
        "augment: crop + cv2.resize": cum.get("transforms.py:_resize", 0.0),
        "augment: colour jitter + grayscale": cum.get("transforms.py:_colour", 0.0),
        "augment: total ClipAugment.apply": cum.get("transforms.py:apply", 0.0),
        "augment: other (to float, flip, normalise, permute)": cum.get("transforms.py:apply", 0.0)
        - cum.get("transforms.py:_resize", 0.0) - cum.get("transforms.py:_colour", 0.0),
        "teacher target (TeacherCache.target)": cum.get("cache_reader.py:target", 0.0),
        "  of which HDF5 read (TeacherCache.map)": cum.get("cache_reader.py:map", 0.0),
        "colour: adjust_hue": cum.get("transforms.py:adjust_hue", 0.0),
        "colour: adjust_saturation": cum.get("transforms.py:adjust_saturation", 0.0),
        "colour: adjust_contrast": cum.get("transforms.py:adjust_contrast", 0.0),
        "colour: adjust_brightness": cum.get("transforms.py:adjust_brightness", 0.0),
    }
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    top = [ln for ln in buf.getvalue().splitlines() if ln.strip()][-13:]
    return {"items": items, "wall_ms_per_item": per_item_ms(wall),
            "components_ms_per_item": {k: per_item_ms(v) for k, v in components.items()},
            "components_share_of_item": {k: round(v / wall, 3) for k, v in components.items()},
            "top_tottime": top}


def cv2_adjust_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """What-if for the report: the same hue rotation through OpenCV's float32 HSV (per frame)."""
    import cv2
    import numpy as np

    if shift == 0:
        return x
    arr = x.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty_like(arr)
    for k in range(arr.shape[0]):
        hsv = cv2.cvtColor(arr[k], cv2.COLOR_RGB2HSV)  # H in degrees [0, 360)
        hsv[..., 0] = np.mod(hsv[..., 0] + shift * 360.0, 360.0)
        out[k] = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def whatif_cv2_hue(ds: PretrainClipDataset, items: int) -> dict:
    """Per-item time (no profiler, one thread, interleaved) of the current dataset and of the same dataset
    with adjust_hue swapped for :func:`cv2_adjust_hue` (patched here only), and the max difference of
    the items' clips between the two."""
    import student.transforms as T

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ds.reader = functools.partial(read_frames, threads=1)
    original = T.adjust_hue
    times = {"current": 0.0, "cv2_hue": 0.0}
    try:
        ref = [ds[(100, i)] for i in range(min(items, 4))]
        T.adjust_hue = cv2_adjust_hue
        diff = max(float((ds[(100, i)][k] - r[k]).abs().max())
                   for i, r in enumerate(ref) for k in ("query", "key_pos", "key_neg"))
        for name in common.abba(list(times), 2):
            T.adjust_hue = original if name == "current" else cv2_adjust_hue
            t = time.perf_counter()
            for i in range(items // 2):
                ds[(200, i % len(ds))]
            times[name] += time.perf_counter() - t
    finally:
        T.adjust_hue = original
        torch.set_num_threads(threads)
        ds.reader = read_frames
    n = 2 * (items // 2)
    return {"current_ms_per_item": round(1000 * times["current"] / n, 2),
            "cv2_hue_ms_per_item": round(1000 * times["cv2_hue"] / n, 2),
            "speedup": round(times["current"] / times["cv2_hue"], 2), "max_abs_diff_vs_current": diff}


def _real_mode_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of the real-clip mode (bench/loader_real.py); ``--quick`` shrinks it to a smoke run."""
    ap.add_argument("--real", action="store_true", help="real-clip mode: Kinetics/UCF101/HMDB51 clips of "
                    "shared/data/videos, originals vs transcoded copies, per core (bench/loader_real.py)")
    ap.add_argument("--items-kinetics", type=int, default=150, help="--real: items per contender, Kinetics")
    ap.add_argument("--items-other", type=int, default=75, help="--real: items per contender, UCF101 / HMDB51")
    ap.add_argument("--block", type=int, default=15, help="--real: items per contender per interleaved block")
    ap.add_argument("--short-side", type=int, default=128, help="--real: transcode.short_side of the copies")
    return ap


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos-per-class", type=int, default=6, help="synthetic videos per class (10 classes)")
    ap.add_argument("--video-size", type=int, default=112, help="synthetic frame size (square, the project's 112)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per loader (after one warm-up epoch)")
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--clip-len", type=int, default=16)
    ap.add_argument("--profile-items", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 videos per class, 1 epoch, batch 4")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "loader.json")
    return _real_mode_args(ap).parse_args()


def main() -> None:
    args = parse_args()
    if args.real:
        from loader_real import main_real

        return main_real(args)
    if args.quick:
        args.videos_per_class, args.epochs, args.batch, args.profile_items = 2, 1, 4, 6

    model_cfg = ModelConfig(input_size=args.input_size, parse_size=args.input_size // 4, kd=True)
    clips = ClipsConfig(anchors_per_video=8, clip_len=args.clip_len, speeds=[1, 2], splits=["train"])
    settings = dict(videos=args.videos_per_class * 10, video_size=args.video_size, frames_per_video=48,
                    workers=args.workers, batch_size=args.batch, timed_epochs=args.epochs,
                    input_size=args.input_size, parse_size=model_cfg.parse_size, clip_len=args.clip_len,
                    speeds=[1, 2], anchors_per_video=8, teacher="rendered (pascal, 7 classes), map 64",
                    torch_threads_main=torch.get_num_threads(), quick=args.quick)
    bench = common.Bench("loader", "pretraining loader samples/s vs decode-only limit", settings)

    root, man_dir = common.synthetic_kinetics(args.videos_per_class, size=args.video_size)
    # kept beside the (deterministic) dataset; a rerun finds the shards current and skips them
    cache_dir = man_dir.parent / f"bench-teacher-cache-c{args.clip_len}"
    t = time.perf_counter()
    s = build_teacher_cache(man_dir, cache_dir, TeacherConfig(backend="rendered", labels="pascal", map_size=64,
                                                              workers=args.workers, device="cpu"),
                            clips, dist=DistInfo(), fingerprint="bench-loader")
    print(f"  teacher cache: {s['clips']} clips ({s['clips_computed']} computed) in {time.perf_counter() - t:.1f} s",
          flush=True)
    manifest = load_manifest(man_dir)
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    cache = TeacherCache(cache_dir)

    real_ds = PretrainClipDataset(manifest, plan, cache, model_cfg, clips, seed=0)
    limit_ds = common.DecodeOnlyDataset(manifest, plan, cache, model_cfg, clips, seed=0)
    loaders = {"real": build_pretrain_loader(real_ds, args.batch, args.workers, seed=0),
               "decode_only": build_pretrain_loader(limit_ds, args.batch, args.workers, seed=0)}
    times, samples = time_loaders(loaders, args.epochs)
    del loaders

    rate = {k: samples[k] / sum(times[k]) for k in times}
    frac = rate["real"] / rate["decode_only"]
    figures = {
        "samples_per_s": {k: round(v, 2) for k, v in rate.items()},
        "epoch_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "fraction_of_limit": round(frac, 3), "goal": f">= {GOAL} of the decode-only limit", "met": frac >= GOAL,
        "bytes_per_sample_returned": 3 * 3 * args.clip_len * args.input_size ** 2 * 4
        + 7 * model_cfg.parse_size ** 2 * 4,
    }
    figures["profile_in_process"] = profile_items(real_ds, args.profile_items)
    lim = common.DecodeOnlyDataset(manifest, plan, cache, model_cfg, clips, seed=0,
                            reader=functools.partial(read_frames, threads=1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = time.perf_counter()
    for i in range(args.profile_items):
        lim[(100, i % len(lim))]
    figures["profile_in_process"]["decode_only_ms_per_item"] = round(1000 * (time.perf_counter() - t)
                                                                     / args.profile_items, 2)
    torch.set_num_threads(threads)
    w = figures["whatif_cv2_hue"] = whatif_cv2_hue(real_ds, args.profile_items)
    dec = figures["profile_in_process"]["decode_only_ms_per_item"]
    w["fraction_of_limit_in_process_current"] = round(dec / w["current_ms_per_item"], 3)
    w["fraction_of_limit_in_process_cv2_hue"] = round(dec / w["cv2_hue_ms_per_item"], 3)
    cache.close()

    _print_report(figures, samples, times, rate, args)
    notes = [f"fraction_of_limit = real samples/s / decode-only samples/s = {frac:.3f} (goal {GOAL})"]
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    bench.write(figures, args.out, notes)
    if "real_clips" in previous:  # keep the real-clip mode's figures (bench/loader.py --real)
        common.write_merged(args.out, "real_clips", previous["real_clips"], "loader")


def _print_report(figures: dict, samples: dict, times: dict, rate: dict, args: argparse.Namespace) -> None:
    """The synthetic mode's tables: loader vs limit, the per-item profile, the hue what-if."""
    w = figures["whatif_cv2_hue"]
    rows = [{"loader": k, "samples": samples[k], "seconds": sum(times[k]), "samples/s": rate[k],
             "of limit": rate[k] / rate["decode_only"]} for k in times]
    common.print_table(rows, title=f"\npretraining loader, {args.workers} workers, batch {args.batch}")
    prof = figures["profile_in_process"]
    common.print_table([{"component": k, "ms/item": v, "share": prof["components_share_of_item"][k]}
                        for k, v in prof["components_ms_per_item"].items()],
                       title=f"\nin-process cost per item (1 thread): {prof['wall_ms_per_item']} ms; "
                             f"decode-only item {prof['decode_only_ms_per_item']} ms")
    print(f"  what-if hue via cv2 float32 HSV (no profiler, 1 thread): {w['cv2_hue_ms_per_item']} ms/item vs "
          f"{w['current_ms_per_item']} now (x{w['speedup']}), max |diff| {w['max_abs_diff_vs_current']:.2g}; "
          f"in-process fraction of the decode-only limit {w['fraction_of_limit_in_process_current']} -> "
          f"{w['fraction_of_limit_in_process_cv2_hue']}")


if __name__ == "__main__":
    main()
