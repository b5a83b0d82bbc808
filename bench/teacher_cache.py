"""Teacher-cache throughput (clips/s): our `teacher-cache` stage against SCHP's own usage pattern.

Ours: ``teacher.cache_stage.build_teacher_cache`` with the ``schp`` backend on a manifest over
the real clips of shared/data/videos (DataLoader workers decode only the anchor frames, torch
letterbox, batched forward, logits warped back to a 64² frame map, sharded HDF5 float16+lzf).

Baseline, SCHP's usage pattern written out here faithfully: per video, decode EVERY frame with
cv2 (as SCHP-based video pipelines do) and pick the anchor frames; per image, OpenCV letterbox
(cv2.warpAffine) + numpy normalisation, batch-1 forward (torch.no_grad), fusion logits upsampled
to S² (align_corners=True) and warped back to the full frame with cv2.warpAffine per channel,
softmax, one HDF5 write of the full-resolution map per image.

Same weights (a random SCHP checkpoint in the released LIP layout), same torch threads, same
clips (the anchor frames of the clip plan). The clips are split into rounds and the contenders
run interleaved (A B C, C B A) so changes in machine load hit all of them alike. Besides the
default configuration (on CPU ``teacher.amp=auto`` means fp32) it measures ``teacher.amp=bf16``
and, as a what-if that this script patches in, the model in channels_last memory format.

    .venv/bin/python bench/teacher_cache.py [--quick] [--input-size 473] [--anchors 2] [--videos 6]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts the repo on sys.path)

import cv2  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from data_manifests.clip_plan import build_clip_plan  # noqa: E402
from data_manifests.manifest import load_manifest  # noqa: E402
from pipeline.core.config import ClipsConfig, TeacherConfig  # noqa: E402
from pipeline.core.distributed import DistInfo  # noqa: E402
from teacher import cache_stage  # noqa: E402
from pipeline.core.fingerprint import sha256_file  # noqa: E402
from teacher.backends import cpu_has_native_bf16, resolve_amp  # noqa: E402
from teacher.checkpoint import read_state_dict  # noqa: E402
from teacher.schp import build_schp  # noqa: E402

BGR_MEAN = np.array([0.406, 0.456, 0.485], np.float32)
BGR_STD = np.array([0.225, 0.224, 0.229], np.float32)
VARIANTS = {
    "schp_baseline": "SCHP usage pattern: decode all frames, cv2 letterbox, batch 1 fp32, full-res warp back, "
                     "softmax, one HDF5 write per image",
    "ours": "teacher-cache stage, default config (teacher.amp=auto: bf16 + channels-last on a CPU with native "
            "bf16, else fp32; fp16 on GPU)",
    "ours_fp32": "teacher-cache stage, teacher.amp=off (fp32)",
    "ours_bf16": "teacher-cache stage, teacher.amp=bf16",
    "ours_bf16_cl": "what-if: teacher.amp=bf16 + model in channels_last (patched in by this script)",
}


# ------------------------------------------------------------------------------------------------
# Baseline: SCHP's own usage pattern
# ------------------------------------------------------------------------------------------------

def letterbox_affine(w: int, h: int, size: int) -> np.ndarray:
    """SCHP's get_affine_transform for the whole image (centre, aspect-padded scale), written out."""
    k = (size - 1) / max(w - 1, h - 1)
    c = (size - 1) / 2
    return np.array([[k, 0.0, c - k * (w - 1) / 2], [0.0, k, c - k * (h - 1) / 2]], np.float64)


def load_model_schp_style(checkpoint: Path, num_classes: int, device: str) -> torch.nn.Module:
    """torch.load + load_state_dict, as SCHP's scripts load a model (no hashing, no checks)."""
    with torch.device("meta"):
        model = build_schp(num_classes)
    model.load_state_dict(read_state_dict(checkpoint), strict=True, assign=True)
    return model.to(device).eval()


def schp_baseline(checkpoint: Path, manifest_dir: Path, clips: ClipsConfig, input_size: int, out: Path,
                  device: str) -> dict:
    """Run the baseline on every clip of the plan; returns times (total, load, per stage) and bytes."""
    t_all = time.perf_counter()
    model = load_model_schp_style(checkpoint, 20, device)
    t_load = time.perf_counter() - t_all
    manifest = load_manifest(manifest_dir)
    plan = build_clip_plan(manifest, clips.anchors_per_video, clips.span, clips.splits)
    by_video: dict[int, list] = {}
    for c in plan:
        by_video.setdefault(c.video_index, []).append(c)
    parts = {"decode_all": 0.0, "preprocess": 0.0, "forward": 0.0, "warp_back": 0.0, "softmax": 0.0, "write": 0.0}
    n = 0
    with h5py.File(out, "w") as f:
        for vi, vclips in by_video.items():
            t = time.perf_counter()
            cap = cv2.VideoCapture(str(manifest.abspath(manifest.entries[vi])))
            frames = []
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(frame)
            cap.release()
            parts["decode_all"] += time.perf_counter() - t
            for c in vclips:
                img = frames[c.frame]
                h, w = img.shape[:2]
                t = time.perf_counter()
                m = letterbox_affine(w, h, input_size)
                inp = cv2.warpAffine(img, m, (input_size, input_size), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
                x = (inp.astype(np.float32) / 255.0 - BGR_MEAN) / BGR_STD
                x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)
                t2 = time.perf_counter()
                parts["preprocess"] += t2 - t
                with torch.no_grad():
                    logits = model(x)
                    up = F.interpolate(logits, size=(input_size, input_size), mode="bilinear", align_corners=True)
                    up = up[0].permute(1, 2, 0).cpu().numpy()  # (S, S, C), as SCHP's transform_logits takes it
                t3 = time.perf_counter()
                parts["forward"] += t3 - t2
                inv = cv2.invertAffineTransform(m)
                full = np.stack([cv2.warpAffine(up[:, :, k], inv, (w, h), flags=cv2.INTER_LINEAR,
                                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
                                 for k in range(up.shape[2])], axis=2)
                t4 = time.perf_counter()
                parts["warp_back"] += t4 - t3
                e = np.exp(full - full.max(axis=2, keepdims=True))
                probs = e / e.sum(axis=2, keepdims=True)
                t5 = time.perf_counter()
                parts["softmax"] += t5 - t4
                f.create_dataset(c.clip_id, data=probs)  # (H, W, C) float32, one write per image
                f.flush()
                parts["write"] += time.perf_counter() - t5
                n += 1
    total = time.perf_counter() - t_all
    return {"clips": n, "videos": len(by_video), "seconds": total, "load_s": t_load,
            "steady_clips_per_s": n / (total - t_load), "parts_s": parts, "bytes": out.stat().st_size}


# ------------------------------------------------------------------------------------------------
# Ours: the teacher-cache stage
# ------------------------------------------------------------------------------------------------

def run_ours(checkpoint: Path, manifest_dir: Path, clips: ClipsConfig, input_size: int, out: Path,
             amp: str, channels_last: bool, workers: int, batch: int, device: str, digest: str) -> dict:
    """The stage as the pipeline calls it (the checkpoint digest comes from the pipeline's digest cache)."""
    cfg = TeacherConfig(backend="schp", checkpoint=str(checkpoint), labels="lip", input_size=input_size, map_size=64,
                        batch_size=batch, workers=workers, device=device, amp=amp)
    original = cache_stage.make_backend
    if channels_last:
        def patched(*a, **kw):
            b = original(*a, **kw)
            b.model = b.model.to(memory_format=torch.channels_last)
            return b
        cache_stage.make_backend = patched
    try:
        t = time.perf_counter()
        summary = cache_stage.build_teacher_cache(manifest_dir, out, cfg, clips, dist=DistInfo(device=device),
                                                  fingerprint="bench", checkpoint_sha256=digest)
        total = time.perf_counter() - t
    finally:
        cache_stage.make_backend = original
    assert summary["complete"] and summary["failed"] == 0, summary
    return {"clips": summary["clips"], "seconds": total, "steady_clips_per_s": summary["clips_per_s"],
            "bytes": sum(p.stat().st_size for p in out.glob("shard-*.h5"))}


def warmup(checkpoint: Path, input_size: int, device: str, variants: list[str]) -> None:
    """One untimed forward per numeric mode, so no contender pays first-call kernel selection."""
    model = load_model_schp_style(checkpoint, 20, device)
    x = torch.randn(1, 3, input_size, input_size, device=device)
    amp = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    with torch.inference_mode():
        model(x)
        if any(v.startswith("ours_bf16") for v in variants) or device != "cpu":
            with torch.autocast(torch.device(device).type, dtype=amp):
                model(x)
        if any(v.endswith("_cl") for v in variants):
            model = model.to(memory_format=torch.channels_last)
            with torch.autocast(torch.device(device).type, dtype=amp):
                model(x.contiguous(memory_format=torch.channels_last))
    common.sync()


def attribute_batching(checkpoint: Path, input_size: int, device: str, batch: int, rounds: int = 2) -> dict:
    """Forward only, fp32: ``batch`` images one at a time vs as one batch (interleaved); s/image each."""
    model = load_model_schp_style(checkpoint, 20, device)
    x = torch.randn(batch, 3, input_size, input_size, device=device)

    def one_by_one() -> None:
        with torch.no_grad():
            for i in range(batch):
                model(x[i:i + 1])

    def batched() -> None:
        with torch.inference_mode():
            model(x)

    t = common.interleave({"batch_1": one_by_one, f"batch_{batch}": batched}, rounds=rounds, warmup=0)
    per_image = {k: round(sum(v) / (len(v) * batch), 3) for k, v in t.items()}
    return {"seconds_per_image": per_image,
            "batching_speedup": common.ratio(per_image["batch_1"], per_image[f"batch_{batch}"]),
            "load_avg_after": common.load_avg()}


def agreement(ours_dir: Path, base_file: Path) -> dict:
    """Argmax agreement and max |Δp| between our 64² maps and the baseline's full-res maps area-resized to 64²."""
    from teacher.cache_reader import TeacherCache

    cache = TeacherCache(ours_dir)
    agree, dmax = [], 0.0
    with h5py.File(base_file) as f:
        for cid in f:
            full = f[cid][...]
            small = F.adaptive_avg_pool2d(torch.from_numpy(full).permute(2, 0, 1), cache.map_size).numpy()
            mine = cache.map(cid)
            agree.append(float((small.argmax(0) == mine.argmax(0)).mean()))
            dmax = max(dmax, float(np.abs(small - mine).max()))
    cache.close()
    return {"argmax_agreement_mean": round(float(np.mean(agree)), 4), "max_abs_prob_diff": round(dmax, 4),
            "clips_compared": len(agree)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=None, help="SCHP input size for both (default 473, quick 129)")
    ap.add_argument("--videos", type=int, default=None, help="real clips to use (default 6 on CPU, all on GPU)")
    ap.add_argument("--anchors", type=int, default=None, help="anchors per video (default 2 on CPU, 8 on GPU)")
    ap.add_argument("--rounds", type=int, default=2, help="the videos are split into this many interleaved rounds")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    ap.add_argument("--workers", type=int, default=TeacherConfig.workers, help="teacher.workers (decode workers)")
    ap.add_argument("--batch", type=int, default=TeacherConfig.batch_size, help="teacher.batch_size")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (both)")
    ap.add_argument("--attribute", action="store_true",
                    help="also time the forward alone, batch 1 vs one round's batch (where ours gains on CPU)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 129² input, 4 videos × 1 anchor, 1 round")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "teacher_cache.json")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    device = "cuda:0" if cuda else "cpu"
    torch.set_num_threads(args.threads)
    input_size = args.input_size or (129 if args.quick else 473)
    n_videos = args.videos or (4 if args.quick else (None if cuda else 6))
    anchors = args.anchors or (1 if args.quick else (8 if cuda else 2))
    rounds = 1 if args.quick else args.rounds
    variants = args.variants or ["schp_baseline", "ours", "ours_fp32"]

    videos = common.real_clips()
    if not videos:
        sys.exit(f"teacher_cache: no real clips under {common.SHARED / 'videos'}; this benchmark needs them "
                 f"(set PIPELINE_SHARED_DATA to the shared data folder)")
    if n_videos:  # an even mix of the datasets: round-robin over ucf101 / hmdb51 / kinetics400
        by_ds = [[p for p in videos if p.relative_to(common.SHARED / "videos").parts[0] == d]
                 for d in common.REAL_CLIP_DIRS]
        mixed = [p for group in zip(*by_ds) for p in group] + [p for g in by_ds for p in g[min(map(len, by_ds)):]]
        videos = mixed[:n_videos]
    clips = ClipsConfig(anchors_per_video=anchors, clip_len=16, speeds=[1, 2], splits=["train"])
    settings = dict(device=device, input_size=input_size, map_size=64, videos=[str(p.relative_to(common.SHARED))
                    for p in videos], anchors_per_video=anchors, span=clips.span, rounds=rounds, variants=variants,
                    teacher_workers=args.workers, teacher_batch_size=args.batch, torch_threads=args.threads,
                    labels="lip (20 classes)", weights="random SCHP checkpoint in the released LIP layout",
                    quick=args.quick, cpu_native_bf16=cpu_has_native_bf16(),
                    teacher_amp_auto_resolves_to=str(resolve_amp("auto", device)))
    bench = common.Bench("teacher_cache", "teacher-cache clips/s: our stage vs SCHP's usage pattern", settings)

    work = common.work_dir("teacher_cache")
    ckpt = common.random_schp_checkpoint(common.work_dir("schp") / "random_lip20_seed0.pth")
    t = time.perf_counter()
    digest = sha256_file(ckpt)
    sha_s = time.perf_counter() - t

    # one manifest per round (videos split evenly), probed once
    per_round = [videos[r::rounds] for r in range(rounds)]
    manifests = []
    for r, vids in enumerate(per_round):
        d = work / f"manifest-r{r}"
        shutil.rmtree(d, ignore_errors=True)
        manifests.append(common.manifest_of(vids, common.SHARED / "videos", d))
    n_clips = sum(len(build_clip_plan(load_manifest(m), anchors, clips.span, ["train"])) for m in manifests)
    print(f"  {len(videos)} videos, {n_clips} clips in {rounds} round(s), input {input_size}², device {device}, "
          f"variants {variants}", flush=True)

    t = time.perf_counter()
    warmup(ckpt, input_size, device, variants)
    print(f"  warm-up forwards (oneDNN/cuDNN kernel selection) {time.perf_counter() - t:.1f} s", flush=True)
    results: dict[str, list[dict]] = {v: [] for v in variants}
    gpu_util: dict[str, common.GpuSampler] = {}
    for r, man in enumerate(manifests):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for v in order:
            out = work / f"out-{v}-r{r}"
            shutil.rmtree(out, ignore_errors=True)
            sampler = gpu_util.setdefault(v, common.GpuSampler())
            with sampler:
                if v == "schp_baseline":
                    out.mkdir(parents=True)
                    res = schp_baseline(ckpt, man, clips, input_size, out / "maps.h5", device)
                else:
                    amp = {"ours": "auto", "ours_fp32": "off"}.get(v, "bf16")
                    res = run_ours(ckpt, man, clips, input_size, out, amp, v.endswith("_cl"), args.workers,
                                   args.batch, device, digest)
            res["round"] = r
            results[v].append(res)
            print(f"  round {r} {v:>14}: {res['clips']} clips in {res['seconds']:.1f} s "
                  f"(steady {res['steady_clips_per_s']:.3f} clips/s)", flush=True)

    figures: dict = {"variants": {}}
    base = results.get("schp_baseline")
    base_total = sum(x["seconds"] for x in base) if base else None
    base_steady = (sum(x["clips"] for x in base) / sum(x["seconds"] - x["load_s"] for x in base)) if base else None
    rows = []
    for v, rs in results.items():
        clips_n = sum(x["clips"] for x in rs)
        total = sum(x["seconds"] for x in rs)
        steady = (clips_n / sum(x["seconds"] - x["load_s"] for x in rs) if v == "schp_baseline"
                  else clips_n / sum(x["clips"] / x["steady_clips_per_s"] for x in rs))
        fig = {"description": VARIANTS[v], "clips": clips_n, "seconds": round(total, 2),
               "clips_per_s": round(clips_n / total, 4), "steady_clips_per_s": round(steady, 4),
               "bytes_per_clip": round(sum(x["bytes"] for x in rs) / clips_n),
               "per_round": rs}
        if base:
            fig["speedup_vs_baseline"] = common.ratio(base_total, total)
            fig["steady_speedup_vs_baseline"] = common.ratio(steady, base_steady)
        util = gpu_util[v].summary()
        if util:
            fig["gpu_utilisation"] = util
        figures["variants"][v] = fig
        rows.append({"variant": v, "clips": clips_n, "s": total, "clips/s": clips_n / total, "steady clips/s": steady,
                     "speedup": fig.get("speedup_vs_baseline"), "steady speedup": fig.get("steady_speedup_vs_baseline"),
                     "KB/clip": fig["bytes_per_clip"] / 1024, "gpu %": (util or {}).get("mean_pct")})
    if base:
        parts = {k: sum(x["parts_s"][k] for x in base) for k in base[0]["parts_s"]}
        figures["baseline_breakdown_s"] = {k: round(v, 3) for k, v in parts.items()}
        figures["baseline_breakdown_share"] = {k: round(v / sum(parts.values()), 3) for k, v in parts.items()}
        figures["baseline_model_load_s"] = round(sum(x["load_s"] for x in base), 3)
        # what the ratio becomes at other anchors per video: the decode-all cost is per video
        per_video_decode = parts["decode_all"] / sum(x["videos"] for x in base)
        per_clip_rest = sum(v for k, v in parts.items() if k != "decode_all") / sum(x["clips"] for x in base)
        if "ours" in results:
            ours_per_clip = 1 / figures["variants"]["ours"]["steady_clips_per_s"]
            figures["modelled_steady_speedup_at_anchors"] = {
                k: round((per_video_decode / k + per_clip_rest) / ours_per_clip, 3) for k in (1, 2, 8)}
        r0 = results["schp_baseline"][0]["round"]
        if "ours" in results:
            figures["agreement_ours_vs_baseline"] = agreement(work / f"out-ours-r{r0}",
                                                              work / f"out-schp_baseline-r{r0}" / "maps.h5")
        if "ours_bf16" in results and "ours" in results:
            figures["agreement_bf16_vs_fp32_ours"] = _agree_caches(work / "out-ours-r0", work / "out-ours_bf16-r0")
        if "ours_fp32" in results and "ours" in results:
            figures["agreement_default_vs_fp32_ours"] = _agree_caches(work / "out-ours_fp32-r0", work / "out-ours-r0")
    if args.attribute:
        per_round_clips = max(x["clips"] for rs in results.values() for x in rs)
        figures["forward_batching"] = attribute_batching(ckpt, input_size, device, min(per_round_clips, args.batch))
        print(f"  forward only, s/image: {figures['forward_batching']['seconds_per_image']}", flush=True)
    figures["checkpoint_sha256_s"] = round(sha_s, 3)
    figures["headline"] = {
        "goal": ">= 1.5x clips/s vs SCHP usage pattern on CPU" if not cuda else "absolute clips/s and GPU utilisation",
        "speedup_default_config": figures["variants"].get("ours", {}).get("speedup_vs_baseline"),
        "speedup_fp32": figures["variants"].get("ours_fp32", {}).get("speedup_vs_baseline"),
        "speedup_bf16": figures["variants"].get("ours_bf16", {}).get("speedup_vs_baseline"),
        "cpu": common.cpu_model(), "teacher_amp_auto_resolves_to": str(resolve_amp("auto", device)),
        "speedup_bf16_channels_last_whatif": figures["variants"].get("ours_bf16_cl", {}).get("speedup_vs_baseline"),
    }
    notes = []
    if input_size != 473:
        notes.append(f"input size {input_size} (not SCHP's 473 for LIP): chosen with --input-size/--quick")
    notes.append("on CPU the fp32 gain of 'ours' is in the forward (the baseline's non-forward work is "
                 "baseline_breakdown_share): one batched forward instead of batch-1 forwards, which matters most "
                 "when other processes share the cores; --attribute times batch 1 vs batched forwards alone")
    notes.append("speedup = baseline wall time / variant wall time for the same clips, each including one model "
                 "load per round; steady = excluding model load")
    print_rows(rows)
    bench.write(figures, args.out, notes)


def _agree_caches(a: Path, b: Path) -> dict:
    from teacher.cache_reader import TeacherCache

    ca, cb = TeacherCache(a), TeacherCache(b)
    agree, dmax = [], 0.0
    for cid in ca.clip_ids():
        x, y = ca.map(cid), cb.map(cid)
        agree.append(float((x.argmax(0) == y.argmax(0)).mean()))
        dmax = max(dmax, float(np.abs(x - y).max()))
    return {"argmax_agreement_mean": round(float(np.mean(agree)), 4), "max_abs_prob_diff": round(dmax, 4),
            "clips_compared": len(agree)}


def print_rows(rows: list[dict]) -> None:
    common.print_table(rows, title="\nteacher-cache throughput (same clips, interleaved rounds)")


if __name__ == "__main__":
    main()
