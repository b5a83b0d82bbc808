"""Real-clip mode of bench/loader.py: the pretraining loader's per-core rate on the Kinetics, UCF101 and
HMDB51 clips of shared/data/videos, reading the originals (forward decoding) and the transcoded copies
(data_manifests/transcode.py: 128-pixel MJPEG, seeking), against the decode-only limit of each.

Per core = one process, one torch / OpenCV / FFmpeg thread, items drawn in-process (what one
DataLoader worker does per item, without the inter-process transfer), timed in CPU seconds of the
process (``time.process_time``): on a machine shared with other jobs, wall time would also count the
time the scheduler gave to them (the wall rate is recorded beside it). Every contender runs the same
items (a few hundred per dataset: every video, epoch after epoch, so each item has fresh random
anchors, speeds and crops), interleaved in blocks (A B C, C B A, …) so load drifts hit all alike.
Per item the time splits into decode (the one reader call), augmentation (sample + apply, or
geometry only with ``augment_device = "gpu"``), the teacher target (cut from an HDF5 cache of
smooth random LIP-like maps, 20 classes, 64²) and the rest (indexing, stacking).

Also measured: the transcode itself (videos/s and frames/s on one core, with the stage's function),
disk bytes per video and per hour of video, and the candidate formats the stage chose among.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

import common
from data_manifests.clip_plan import build_clip_plan
from data_manifests.manifest import Manifest, load_manifest
from data_manifests.transcode import (VIDEOS_DIR, TranscodeSpec, copies_manifest, copy_relpath, output_size,
                                      transcode_video)
from data_manifests.video import read_frames
from pipeline.core.config import ClipsConfig, ModelConfig
from student.pretrain_data import PretrainClipDataset
from teacher.cache_format import ShardMeta, shard_name, write_shard
from teacher.cache_reader import TeacherCache

GROUPS = ("kinetics400", "ucf101", "hmdb51")
GOAL_SPEEDUP, GOAL_FRACTION, GOAL_RATE = 3.0, 0.7, 10.0
cpu = time.process_time  # CPU seconds of this (single-threaded) process: a per-core measure on a shared machine
LIP_CLASSES = 20


# ------------------------------------------------------------------------------------------------
# Data: a manifest of the real clips, their copies, a teacher cache
# ------------------------------------------------------------------------------------------------

def real_manifest(work: Path) -> Path:
    """A manifest over the real clips of the three datasets (probed by decoding), kept in ``work``."""
    root = common.SHARED / "videos"
    paths = [p for g in GROUPS for p in sorted((root / g).rglob("*")) if p.suffix.lower() in (".avi", ".mp4")]
    if not paths:
        raise SystemExit(f"no real clips under {root}: the real-clip mode needs shared/data/videos")
    out = work / "manifest"
    if not (out / "meta.json").is_file():
        common.manifest_of(paths, root, out, dataset="real")
    return out


def make_copies(manifest_dir: Path, out: Path, spec: TranscodeSpec) -> tuple[Manifest, list[dict[str, Any]]]:
    """Transcode every clip anew (one process, one thread) with the stage's function; the copies'
    manifest and one record per video (CPU seconds, frames, bytes, source bytes)."""
    manifest = load_manifest(manifest_dir)
    shutil.rmtree(out, ignore_errors=True)
    records = []
    for e in manifest.entries:
        c = cpu()
        rec = transcode_video(manifest.abspath(e), out / VIDEOS_DIR / copy_relpath(e, spec.codec), spec,
                              expected_frames=e.frames, fps=e.fps, threads=1)
        records.append({"group": e.path.split("/", 1)[0], "fps": e.fps, **rec, "seconds": cpu() - c})
    copies, failures = copies_manifest(manifest, out, out, spec)
    if failures:
        raise SystemExit(f"transcode failed on real clips: {failures}")
    return copies, records


def fake_teacher_cache(manifest: Manifest, clips: ClipsConfig, out: Path) -> TeacherCache:
    """One shard of smooth random softmax maps for every clip of the plan (reading cost is what counts)."""
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    out.mkdir(parents=True, exist_ok=True)
    path = out / shard_name(0)
    if not path.is_file():
        g = torch.Generator().manual_seed(0)
        logits = torch.nn.functional.interpolate(torch.randn(len(plan), LIP_CLASSES, 8, 8, generator=g) * 3,
                                                 size=(64, 64), mode="bilinear", align_corners=False)
        maps = torch.softmax(logits, dim=1).numpy().astype(np.float32)
        meta = ShardMeta(fingerprint="bench-loader-real", teacher="schp", label_set="lip",
                         labels=tuple(f"c{k}" for k in range(LIP_CLASSES)), map_size=64, checkpoint_sha256="")
        write_shard(path, meta, [c.clip_id for c in plan], [c.frame for c in plan], maps)
    return TeacherCache(out)


# ------------------------------------------------------------------------------------------------
# Timed datasets
# ------------------------------------------------------------------------------------------------

def _timed(fn: Callable, acc: dict[str, float], key: str) -> Callable:
    @functools.wraps(fn)
    def wrapper(*a: Any, **k: Any) -> Any:
        t = cpu()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += cpu() - t
    return wrapper


class _TimedCache:
    """The teacher cache with ``target`` timed."""

    def __init__(self, cache: TeacherCache, acc: dict[str, float]) -> None:
        self.target = _timed(cache.target, acc, "target")


def timed_dataset(cls: type, manifest: Manifest, plan: list, cache: TeacherCache, model: ModelConfig,
                  clips: ClipsConfig, augment_device: str, seek: bool | None) -> tuple[PretrainClipDataset, dict]:
    """A dataset whose reader, augmentation and target cutting add their seconds to the returned dict."""
    acc: dict[str, float] = defaultdict(float)
    ds = cls(manifest, plan, cache, model, clips, seed=0, augment_device=augment_device,
             reader=_timed(functools.partial(read_frames, threads=1, seek=seek), acc, "decode"))
    for name in ("sample", "apply", "geometry"):
        setattr(ds.augment, name, _timed(getattr(ds.augment, name), acc, "augment"))
    ds.cache = _TimedCache(cache, acc)
    return ds, acc


def contenders(manifests: dict[str, Manifest], plan_of: Callable[[Manifest], list], cache: TeacherCache,
               model: ModelConfig, clips: ClipsConfig, full: bool) -> dict[str, tuple[PretrainClipDataset, dict]]:
    """name -> (dataset, timing dict). ``full`` (Kinetics) adds the forward-decoded copies and the
    worker's share of ``augment_device = "gpu"``."""
    out = {}
    for src, m in manifests.items():
        plan = plan_of(m)
        out[f"{src}: loader"] = timed_dataset(PretrainClipDataset, m, plan, cache, model, clips, "cpu", None)
        out[f"{src}: decode only"] = timed_dataset(common.DecodeOnlyDataset, m, plan, cache, model, clips, "cpu", None)
        if full:
            out[f"{src}: loader, gpu augment"] = timed_dataset(PretrainClipDataset, m, plan, cache, model, clips,
                                                               "gpu", None)
    if full:
        out["copies: decode only, forward"] = timed_dataset(common.DecodeOnlyDataset, manifests["copies"],
                                                            plan_of(manifests["copies"]), cache, model, clips,
                                                            "cpu", False)
    return out


def run_interleaved(sets: dict[str, tuple[PretrainClipDataset, dict]], items: list[tuple[int, int]],
                    block: int) -> tuple[dict[str, float], dict[str, float]]:
    """Every contender over the same ``items`` in blocks, order reversed every other block; CPU and
    wall seconds per contender."""
    busy, wall = {k: 0.0 for k in sets}, {k: 0.0 for k in sets}
    for ds, _ in sets.values():  # warm-up: open files, fill the page cache, allocate
        ds[items[0]]
    for acc in (a for _, a in sets.values()):
        acc.clear()
    blocks = [items[i:i + block] for i in range(0, len(items), block)]
    for r, chunk in enumerate(blocks):
        names = list(sets) if r % 2 == 0 else list(reversed(sets))
        for name in names:
            ds = sets[name][0]
            t, c = time.perf_counter(), cpu()
            for it in chunk:
                ds[it]
            busy[name] += cpu() - c
            wall[name] += time.perf_counter() - t
    return busy, wall


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------

def group_figures(sets: dict, times: tuple[dict[str, float], dict[str, float]], n: int) -> dict[str, Any]:
    """Per contender: samples/s per core (CPU seconds: the machine is shared, so wall time also counts
    other people's processes; the wall rate is kept beside it) and CPU ms per item by component;
    the ratios the goals name."""
    busy, wall = times
    per: dict[str, Any] = {}
    for name, (_, acc) in sets.items():
        ms = {k: round(1000 * acc.get(k, 0.0) / n, 2) for k in ("decode", "augment", "target")}
        ms["other"] = round(1000 * busy[name] / n - sum(ms.values()), 2)
        per[name] = {"samples_per_s_per_core": round(n / busy[name], 2),
                     "samples_per_s_wall": round(n / wall[name], 2),
                     "cpu_ms_per_item": {"total": round(1000 * busy[name] / n, 2), **ms}}
    rate = {k: v["samples_per_s_per_core"] for k, v in per.items()}
    ratios = {
        "copies_vs_originals_loader": common.ratio(rate["copies: loader"], rate["originals: loader"]),
        "fraction_of_decode_limit_originals": common.ratio(rate["originals: loader"], rate["originals: decode only"]),
        "fraction_of_decode_limit_copies": common.ratio(rate["copies: loader"], rate["copies: decode only"]),
        "decode_only_copies_vs_originals": common.ratio(rate["copies: decode only"], rate["originals: decode only"]),
    }
    if "copies: loader, gpu augment" in rate:
        ratios["copies_gpu_augment_vs_originals_loader"] = common.ratio(rate["copies: loader, gpu augment"],
                                                                        rate["originals: loader"])
        ratios["fraction_of_decode_limit_copies_gpu_augment"] = common.ratio(rate["copies: loader, gpu augment"],
                                                                             rate["copies: decode only"])
        ratios["seek_vs_forward_decode_only_copies"] = common.ratio(rate["copies: decode only"],
                                                                    rate["copies: decode only, forward"])
    return {"items": n, "per_contender": per, "ratios": ratios}


def disk_and_transcode(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset: bytes per video and per hour (source and copy), transcode rate on one core."""
    out = {}
    for g in GROUPS:
        rs = [r for r in records if r["group"] == g]
        if not rs:
            continue
        hours = sum(r["frames"] / r["fps"] for r in rs if r["fps"] > 0) / 3600
        secs, frames = sum(r["seconds"] for r in rs), sum(r["frames"] for r in rs)
        out[g] = {"videos": len(rs), "frames": frames, "hours_of_video": round(hours, 5),
                  "source_bytes_per_video": round(sum(r["source_bytes"] for r in rs) / len(rs)),
                  "copy_bytes_per_video": round(sum(r["bytes"] for r in rs) / len(rs)),
                  "source_bytes_per_hour": round(sum(r["source_bytes"] for r in rs) / hours),
                  "copy_bytes_per_hour": round(sum(r["bytes"] for r in rs) / hours),
                  "copy_to_source_bytes": common.ratio(sum(r["bytes"] for r in rs), sum(r["source_bytes"] for r in rs)),
                  "transcode_videos_per_s_per_core": round(len(rs) / secs, 3),
                  "transcode_frames_per_s_per_core": round(frames / secs, 1)}
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0 ** 2 / max(float(((a.astype(np.float32) - b) ** 2).mean()), 1e-9)))


def _seek_reader(path: Path, wanted: Sequence[int]) -> int:
    """What-if for a GOP codec: OpenCV seeking to each run of wanted frames (frames counted, not kept)."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    pos, n = 0, 0
    for t in wanted:
        if t - pos > 24:
            cap.set(cv2.CAP_PROP_POS_FRAMES, t)
            pos = t
        while pos <= t:
            cap.grab()
            pos += 1
        n += cap.retrieve()[0]
    cap.release()
    return n


FORMATS = {  # name -> (OpenCV API, FOURCC, suffix, what it is)
    "mjpeg (FFmpeg; chosen)": (cv2.CAP_FFMPEG, "MJPG", ".avi", "all-intra: every frame a keyframe; read by seeking"),
    "mjpeg (OpenCV's own writer)": (cv2.CAP_OPENCV_MJPEG, "MJPG", ".avi", "all-intra, OpenCV's JPEG encoder"),
    "mpeg4 part 2 (FFmpeg mp4v)": (cv2.CAP_FFMPEG, "mp4v", ".avi", "GOP 12 fixed by OpenCV (KEY_INTERVAL ignored); "
                                   "not intra-only, so the reader decodes it forward"),
}


def compare_formats(manifest: Manifest, wanted_lists: list[tuple[int, list[int]]], out: Path) -> dict[str, Any]:
    """The candidates on the Kinetics clips: bytes, encode ms/frame, PSNR vs INTER_AREA, decode ms/item."""
    res: dict[str, Any] = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, (api, fourcc, suffix, what) in FORMATS.items():
        nbytes, enc, frames, psnrs, files = 0, 0.0, 0, [], {}
        for vi, e in enumerate(manifest.entries):
            if not e.path.startswith("kinetics400/"):
                continue
            src = read_frames(manifest.abspath(e), range(e.frames), bgr=True, threads=1)
            size = output_size(e.width, e.height, 128)
            small = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in src]
            dst = out / f"{vi}-{fourcc}-{api}{suffix}"
            t = cpu()
            w = cv2.VideoWriter(str(dst), api, cv2.VideoWriter_fourcc(*fourcc), e.fps or 25.0, size)
            for f in small:
                w.write(f)
            w.release()
            enc += cpu() - t
            back = read_frames(dst, range(e.frames), bgr=True, threads=1, seek=False)
            psnrs += [_psnr(a, b) for a, b in zip(back, small)]
            nbytes, frames, files[vi] = nbytes + dst.stat().st_size, frames + e.frames, dst
        fwd, seek = [], []
        for vi, wanted in wanted_lists:
            t = cpu()
            read_frames(files[vi], wanted, threads=1)
            fwd.append(cpu() - t)
            t = cpu()
            _seek_reader(files[vi], wanted)
            seek.append(cpu() - t)
        res[name] = {"what": what, "bytes_per_video": round(nbytes / len(files)),
                     "encode_ms_per_frame": round(1000 * enc / frames, 3),
                     "psnr_mean_db": round(float(np.mean(psnrs)), 2), "psnr_min_db": round(float(np.min(psnrs)), 2),
                     "decode_ms_per_item_project_reader": round(1000 * float(np.mean(fwd)), 2),
                     "decode_ms_per_item_opencv_seek": round(1000 * float(np.mean(seek)), 2)}
    return res


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------

def group_plan(m: Manifest, clips: ClipsConfig, group: str) -> list:
    """The clip plan of one dataset's clips (the manifest holds all three)."""
    return [c for c in build_clip_plan(m, clips.anchors_per_video, clips.span, clips.splits)
            if m.entries[c.video_index].path.startswith(group + "/")]


def _items(n_videos: int, n: int) -> list[tuple[int, int]]:
    """``n`` items: every video, epoch after epoch (fresh anchors, speeds and crops each time)."""
    return [(e, i) for e in range(math.ceil(n / n_videos)) for i in range(n_videos)][:n]


def _wanted_lists(manifest: Manifest, plan: list, cache: TeacherCache, model: ModelConfig, clips: ClipsConfig,
                  items: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    """(manifest index, frames read) of each item, from the real item's own sampling code."""
    index = {str(manifest.abspath(e)): k for k, e in enumerate(manifest.entries)}
    seen: list[tuple[int, list[int]]] = []

    def record(path: Path, wanted: Sequence[int]) -> np.ndarray:
        seen.append((index[str(path)], list(wanted)))
        return np.empty((len(wanted), 1, 1, 3), np.uint8)

    ds = common.DecodeOnlyDataset(manifest, plan, cache, model, clips, seed=0, reader=record)
    for it in items:
        ds[it]
    return seen


def _print_group(g: str, fig: dict[str, Any]) -> None:
    rows = [{"contender": k, "samples/s/core": v["samples_per_s_per_core"], "samples/s wall": v["samples_per_s_wall"],
             **{f"{c} ms": x for c, x in v["cpu_ms_per_item"].items()}} for k, v in fig["per_contender"].items()]
    common.print_table(rows, title=f"\n{g}: {fig['items']} items per contender, 1 thread; per core and ms: CPU time")
    print("  " + ", ".join(f"{k} {v}" for k, v in fig["ratios"].items()), flush=True)


def goals(figures: dict[str, Any]) -> dict[str, Any]:
    """The acceptance checks of issues 15 and 14.2 on the Kinetics clips."""
    k = figures["kinetics400"]
    rate = {n: v["samples_per_s_per_core"] for n, v in k["per_contender"].items()}
    r = k["ratios"]
    return {
        "issue15_copies_vs_originals_>=3x": {"value": r["copies_vs_originals_loader"],
                                             "met": r["copies_vs_originals_loader"] >= GOAL_SPEEDUP},
        "issue15_copies_gpu_augment_vs_originals_>=3x": {"value": r.get("copies_gpu_augment_vs_originals_loader"),
                                                         "met": (r.get("copies_gpu_augment_vs_originals_loader") or 0)
                                                         >= GOAL_SPEEDUP},
        "issue14_fraction_of_decode_limit_>=0.7": {
            "originals": r["fraction_of_decode_limit_originals"], "copies": r["fraction_of_decode_limit_copies"],
            "copies_gpu_augment": r.get("fraction_of_decode_limit_copies_gpu_augment")},
        "issue14_samples_per_s_per_core_>=10": {n: rate[n] for n in rate if "decode only" not in n},
    }


def main_real(args: Any) -> None:
    """Run the real-clip mode (``bench/loader.py --real``) and write ``real_clips`` into loader.json."""
    if args.quick:
        args.items_kinetics, args.items_other, args.block = 12, 6, 6
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    load_start, t0 = common.load_avg(), time.perf_counter()
    print(f"[loader --real] {common.cpu_model()}, {os.cpu_count()} CPUs, load {load_start}", flush=True)
    work = common.work_dir("loader-real")
    model = ModelConfig(input_size=args.input_size, parse_size=args.input_size // 4, kd=True)
    clips = ClipsConfig(anchors_per_video=8, clip_len=args.clip_len, speeds=[1, 2], splits=["train"])
    spec = TranscodeSpec(short_side=args.short_side)
    orig = load_manifest(real_manifest(work))
    copies, records = make_copies(work / "manifest", work / "copies", spec)
    cache = fake_teacher_cache(orig, clips, work / "cache")
    figures: dict[str, Any] = {"transcode_and_disk": disk_and_transcode(records)}
    common.print_table([{"dataset": g, **v} for g, v in figures["transcode_and_disk"].items()],
                       title="\ntranscode (one core) and disk")
    for g in GROUPS:
        sets = contenders({"originals": orig, "copies": copies}, functools.partial(group_plan, clips=clips, group=g),
                          cache, model, clips, full=g == "kinetics400")
        n = args.items_kinetics if g == "kinetics400" else args.items_other
        items = _items(len(next(iter(sets.values()))[0]), n)
        figures[g] = group_figures(sets, run_interleaved(sets, items, args.block), n)
        _print_group(g, figures[g])
    plan_k = group_plan(orig, clips, "kinetics400")
    wanted = _wanted_lists(orig, plan_k, cache, model, clips, _items(len({c.video_index for c in plan_k}), 30))
    figures["formats_kinetics"] = compare_formats(orig, wanted, work / "formats")
    common.print_table([{"format": k, **{c: x for c, x in v.items() if c != "what"}}
                        for k, v in figures["formats_kinetics"].items()], title="\ncandidate formats, Kinetics clips")
    figures["goals"] = goals(figures)
    print(json.dumps(figures["goals"], indent=1), flush=True)
    settings = {"input_size": args.input_size, "clip_len": args.clip_len, "speeds": [1, 2], "anchors_per_video": 8,
                "short_side": args.short_side, "codec": spec.codec, "items_kinetics": args.items_kinetics,
                "items_other": args.items_other, "block": args.block, "threads": 1,
                "teacher_cache": "smooth random maps, 20 classes, 64x64, float16 + lzf"}
    section = {"description": __doc__.splitlines()[0], "machine": common.machine(load_start),
               "versions": common.versions(), "settings": settings, "figures": figures,
               "seconds_total": round(time.perf_counter() - t0, 2), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    common.write_merged(args.out, "real_clips", section, "loader --real")
