"""Teacher-cache scaling: wall time and peak memory at two dataset sizes (time linear, memory flat).

Runs ``teacher.cache_stage.build_teacher_cache`` on the first N and on all M videos of one
synthetic dataset (default N = 40, M = 160; the ``rendered`` backend, or ``--backend schp`` at a
small input size), each run in a fresh child process so peak-memory figures belong to that run
alone, in the order small, big, small, big. Memory per run:

- ``main_peak_mb``: the child's own peak RSS (getrusage RUSAGE_SELF ru_maxrss);
- ``worker_peak_mb``: the largest DataLoader worker's peak RSS (getrusage RUSAGE_CHILDREN after the
  workers were reaped, cross-checked with /proc/<pid>/status VmHWM sampled while they ran);
- ``tree_peak_mb``: the peak of the summed RSS of the child and its workers (sampled every 50 ms;
  an upper bound, pages shared copy-on-write are counted once per process);
- ``main_growth_mb``: main peak minus its RSS just before the stage was called.

    .venv/bin/python bench/scaling.py [--quick] [--sizes 40 160] [--backend rendered|schp]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


# ------------------------------------------------------------------------------------------------
# Memory of a process tree, from /proc
# ------------------------------------------------------------------------------------------------

def _status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def descendants(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        for c in _children(p):
            if c not in seen:
                seen.append(c)
                todo.append(c)
    return seen


class TreeMonitor:
    """Samples VmRSS of this process and its descendants; keeps the peak sum and each child's VmHWM."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_sum_kb = 0
        self.child_hwm_kb: dict[int, int] = {}
        self.max_children = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            kids = descendants(me)
            self.max_children = max(self.max_children, len(kids))
            total = _status_kb(me, "VmRSS") or 0
            for k in kids:
                total += _status_kb(k, "VmRSS") or 0
                hwm = _status_kb(k, "VmHWM")
                if hwm:
                    self.child_hwm_kb[k] = max(self.child_hwm_kb.get(k, 0), hwm)
            self.peak_sum_kb = max(self.peak_sum_kb, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeMonitor":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


# ------------------------------------------------------------------------------------------------
# One run (child process)
# ------------------------------------------------------------------------------------------------

def child(manifest: Path, out_dir: Path, backend: str, input_size: int, workers: int, shard_size: int) -> dict:
    from pipeline.core.config import ClipsConfig, TeacherConfig
    from pipeline.core.distributed import DistInfo
    from teacher.cache_stage import build_teacher_cache

    if backend == "schp":
        ckpt = common.random_schp_checkpoint(common.work_dir("schp") / "random_lip20_seed0.pth")
        cfg = TeacherConfig(backend="schp", checkpoint=str(ckpt), labels="lip", input_size=input_size, map_size=64,
                            shard_size=shard_size, workers=workers, device="cpu")
    else:
        cfg = TeacherConfig(backend="rendered", labels="pascal", map_size=64, shard_size=shard_size,
                            workers=workers, device="cpu")
    clips = ClipsConfig()  # 8 anchors per video, clip_len 16, speeds [1, 2]
    rss_before = _status_kb(os.getpid(), "VmRSS") or 0
    with TreeMonitor() as mon:
        t = time.perf_counter()
        summary = build_teacher_cache(manifest, out_dir, cfg, clips, dist=DistInfo(), fingerprint="bench-scaling")
        seconds = time.perf_counter() - t
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert summary["complete"], summary
    return {"clips": summary["clips"], "shards": summary["shards"], "failed": summary["failed"],
            "seconds": round(seconds, 3), "stage_clips_per_s": summary["clips_per_s"],
            "main_rss_before_mb": round(rss_before / 1024, 1), "main_peak_mb": round(self_kb / 1024, 1),
            "main_growth_mb": round((self_kb - rss_before) / 1024, 1),
            "worker_peak_mb": round(kids_kb / 1024, 1),
            "worker_vmhwm_sampled_mb": round(max(mon.child_hwm_kb.values(), default=0) / 1024, 1),
            "workers_seen": mon.max_children, "tree_peak_mb": round(mon.peak_sum_kb / 1024, 1),
            "cache_bytes": sum(p.stat().st_size for p in out_dir.glob("shard-*.h5"))}


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[40, 160], help="videos in the small and the big run")
    ap.add_argument("--backend", default="rendered", choices=("rendered", "schp"))
    ap.add_argument("--input-size", type=int, default=65, help="SCHP input size with --backend schp")
    ap.add_argument("--workers", type=int, default=2, help="teacher.workers")
    ap.add_argument("--shard-size", type=int, default=256, help="teacher.shard_size (the demo config's 256)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per size, alternating small/big")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 and 40 videos, one round")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "scaling.json")
    ap.add_argument("--child", nargs=3, metavar=("MANIFEST", "OUT_DIR", "RESULT_JSON"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        man, out, res = map(Path, args.child)
        Path(res).write_text(json.dumps(child(man, out, args.backend, args.input_size, args.workers,
                                              args.shard_size)))
        return
    if args.quick:
        args.sizes, args.rounds = [10, 40], 1

    small, big = args.sizes
    settings = dict(sizes_videos=[small, big], backend=args.backend, workers=args.workers,
                    shard_size=args.shard_size, anchors_per_video=8, map_size=64, rounds=args.rounds,
                    input_size=args.input_size if args.backend == "schp" else None,
                    data="synthetic Kinetics layout, 48 frames of 112x112 per video", quick=args.quick)
    bench = common.Bench("scaling", "teacher-cache time and peak memory at two dataset sizes", settings)
    if big % 10:
        sys.exit("scaling: the big size must be a multiple of 10 (10 synthetic classes)")
    _, man_all = common.synthetic_kinetics(big // 10)
    work = common.work_dir("scaling")
    from data_manifests.manifest import load_manifest

    if len(load_manifest(man_all).entries) != big:
        sys.exit(f"scaling: {man_all} has {len(load_manifest(man_all).entries)} videos, expected {big}")
    manifests = {big: man_all, small: common.sub_manifest(man_all, small, work / f"manifest-{small}")}

    runs: dict[int, list[dict]] = {small: [], big: []}
    for i, n in enumerate(common.abba([small, big], args.rounds)):
        out = work / f"cache-{n}-{i}"
        shutil.rmtree(out, ignore_errors=True)
        res = work / f"result-{n}-{i}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--backend", args.backend, "--input-size",
               str(args.input_size), "--workers", str(args.workers), "--shard-size", str(args.shard_size),
               "--child", str(manifests[n]), str(out), str(res)]
        subprocess.run(cmd, check=True)
        r = json.loads(res.read_text())
        runs[n].append(r)
        shutil.rmtree(out, ignore_errors=True)
        print(f"  {n:>4} videos: {r['clips']} clips in {r['seconds']:.2f} s; main peak {r['main_peak_mb']} MB "
              f"(+{r['main_growth_mb']}), worker peak {r['worker_peak_mb']} MB, tree peak {r['tree_peak_mb']} MB",
              flush=True)

    def best(n: int, key: str, f=min) -> float:
        return f(r[key] for r in runs[n])

    size_ratio = runs[big][0]["clips"] / runs[small][0]["clips"]
    t_small, t_big = best(small, "seconds"), best(big, "seconds")
    time_ratio = t_big / t_small
    figures = {
        "runs": {str(k): v for k, v in runs.items()},
        "clips": {str(small): runs[small][0]["clips"], str(big): runs[big][0]["clips"]},
        "seconds_min": {str(small): t_small, str(big): t_big},
        "size_ratio": round(size_ratio, 3), "time_ratio": round(time_ratio, 3),
        "time_ratio_over_size_ratio": round(time_ratio / size_ratio, 3),
        "per_clip_ms": {str(small): round(1000 * t_small / runs[small][0]["clips"], 2),
                        str(big): round(1000 * t_big / runs[big][0]["clips"], 2)},
        "peak_mb": {key: {str(small): best(small, key, max), str(big): best(big, key, max)}
                    for key in ("main_peak_mb", "main_growth_mb", "worker_peak_mb", "worker_vmhwm_sampled_mb",
                                "tree_peak_mb")},
    }
    marginal = (t_big - t_small) / (runs[big][0]["clips"] - runs[small][0]["clips"])
    figures["marginal_ms_per_clip"] = round(1000 * marginal, 2)
    figures["fixed_overhead_s"] = round(t_small - marginal * runs[small][0]["clips"], 3)
    growth = {k: round(v[str(big)] - v[str(small)], 1) for k, v in figures["peak_mb"].items()}
    figures["peak_mb_big_minus_small"] = growth
    figures["goal"] = "memory flat (big - small peak within noise), time linear (time ratio ~ size ratio)"
    figures["time_linear"] = time_ratio / size_ratio <= 1.15
    figures["memory_flat"] = abs(growth["main_peak_mb"]) <= 50 and abs(growth["worker_peak_mb"]) <= 50
    rows = [{"videos": n, "clips": runs[n][0]["clips"], "s (min)": best(n, "seconds"),
             "ms/clip": 1000 * best(n, "seconds") / runs[n][0]["clips"], "main peak MB": best(n, "main_peak_mb", max),
             "main growth MB": best(n, "main_growth_mb", max), "worker peak MB": best(n, "worker_peak_mb", max),
             "tree peak MB": best(n, "tree_peak_mb", max)} for n in (small, big)]
    common.print_table(rows, title=f"\nteacher-cache ({args.backend}) at two sizes")
    print(f"  marginal {1000 * marginal:.2f} ms/clip, fixed overhead {figures['fixed_overhead_s']} s per run")
    print(f"  size x{size_ratio:.2f} -> time x{time_ratio:.2f} (ratio {time_ratio / size_ratio:.2f}); "
          f"peak MB big-small: {growth}")
    notes = ["time_ratio_over_size_ratio < 1 means a fixed per-run cost (worker start, shard finalise) "
             "amortised over more clips; marginal_ms_per_clip is the slope between the two sizes",
             "time = wall time of build_teacher_cache in a fresh process (imports excluded), min over rounds; "
             "memory = max over rounds",
             "a flat time-per-clip and equal peaks mean nothing grows with the dataset"]
    bench.write(figures, args.out, notes)


if __name__ == "__main__":
    main()
