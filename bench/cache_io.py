"""Teacher-cache storage: bytes per map and random-read maps/s for float16 / uint8 × none / lzf / gzip.

Maps are realistic soft parsing maps: the ``rendered`` teacher's maps (``teacher.rendered.rendered_maps``)
of the synthetic dataset's part masks at 64×64, with C = 7 (Pascal-Person-Part) and C = 20 (the LIP
class count; the 13 extra classes get only label-smoothing mass, as unused classes of a real
teacher get little). Each layout is an HDF5 dataset (N, C, 64, 64), one map per chunk, fletcher32
on, as the cache stores them. uint8 stores round(p·255) and is renormalised on read (q / Σ_c q).

A read is what the loader does per item: one row ``maps[r]`` → float32 probabilities. Reads are
random rows, the layouts interleaved (A B … B A) over rounds, from freshly written files (page
cache warm: the figures are HDF5 + decompression cost, not disk).

    .venv/bin/python bench/cache_io.py [--quick] [--maps 1024] [--reads 1500] [--rounds 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from data_manifests.manifest import load_manifest  # noqa: E402
from data_manifests.synthetic import load_part_masks  # noqa: E402
from teacher.rendered import rendered_maps  # noqa: E402

DTYPES = ("float16", "uint8")
COMPRESSIONS = ("none", "lzf", "gzip")
PROJECT_DEFAULT = ("float16", "lzf")


def encode(p: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float16":
        return p.astype(np.float16)
    return np.rint(p * 255.0).astype(np.uint8)


def decode(x: np.ndarray, dtype: str) -> np.ndarray:
    """One stored map → float32 probabilities (uint8: renormalised so every pixel sums to 1)."""
    if dtype == "float16":
        return x.astype(np.float32)
    q = x.astype(np.float32)
    return q / np.maximum(q.sum(axis=0, keepdims=True), 1.0)


def write(path: Path, maps: np.ndarray, dtype: str, compression: str, block: int = 64) -> float:
    """Write all maps in blocks of ``block`` rows (as the cache stage streams them); returns seconds."""
    n, c, h, w = maps.shape
    t = time.perf_counter()
    with h5py.File(path, "w") as f:
        d = f.create_dataset("maps", shape=maps.shape, dtype=np.dtype(dtype), chunks=(1, c, h, w),
                             compression=None if compression == "none" else compression, fletcher32=True)
        for s in range(0, n, block):
            d[s:s + block] = encode(maps[s:s + block], dtype)
    return time.perf_counter() - t


def read_random(path: Path, rows: np.ndarray, dtype: str) -> float:
    """Seconds to read ``rows`` one map at a time and decode each to float32 probabilities."""
    with h5py.File(path, "r") as f:
        d = f["maps"]
        t = time.perf_counter()
        for r in rows:
            decode(d[int(r)], dtype)
        return time.perf_counter() - t


def errors(path: Path, maps: np.ndarray, dtype: str) -> dict:
    with h5py.File(path, "r") as f:
        stored = f["maps"][...]
    back = np.stack([decode(x, dtype) for x in stored])
    err = np.abs(back - maps)
    sums = np.abs(back.sum(axis=1) - 1.0)
    return {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
            "max_pixel_sum_error": float(sums.max()),
            "argmax_agreement": float((back.argmax(1) == maps.argmax(1)).mean())}


def load_maps(n: int, classes: int, videos_per_class: int) -> np.ndarray:
    """``n`` rendered 64² maps of synthetic part masks (frames of successive videos), float32."""
    _, man_dir = common.synthetic_kinetics(videos_per_class)
    man = load_manifest(man_dir)
    masks = []
    total = 0
    for e in man.entries:
        m = load_part_masks(man.abspath(e), list(range(e.frames)))
        masks.append(m)
        total += len(m)
        if total >= n:
            break
    masks_arr = np.concatenate(masks)[:n]
    if len(masks_arr) < n:
        raise ValueError(f"only {len(masks_arr)} masks available, asked for {n}")
    return rendered_maps(masks_arr, classes, 64, 0.5).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maps", type=int, default=1024, help="maps per file")
    ap.add_argument("--reads", type=int, default=1500, help="random single-map reads per layout per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--classes", type=int, nargs="+", default=[7, 20])
    ap.add_argument("--quick", action="store_true", help="smoke run: 256 maps, 200 reads, 1 round")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "cache_io.json")
    args = ap.parse_args()
    if args.quick:
        args.maps, args.reads, args.rounds = 256, 200, 1

    settings = dict(maps_per_file=args.maps, map_size=64, classes=args.classes, reads_per_round=args.reads,
                    rounds=args.rounds, chunk="one map (1, C, 64, 64)", fletcher32=True, gzip_level=4,
                    maps_source="teacher.rendered.rendered_maps of synthetic part masks, softness 0.5",
                    page_cache="warm (files just written)", quick=args.quick)
    bench = common.Bench("cache_io", "teacher-cache storage: bytes/map, random reads/s, uint8 error", settings)
    work = common.work_dir("cache_io")
    rng = np.random.default_rng(0)
    figures: dict = {"layouts": {}}
    rows = []
    for c in args.classes:
        maps = load_maps(args.maps, c, 6)
        layouts = [(d, z) for d in DTYPES for z in COMPRESSIONS]
        paths, write_s = {}, {}
        for d, z in layouts:
            p = work / f"maps-c{c}-{d}-{z}.h5"
            write_s[(d, z)] = write(p, maps, d, z)
            paths[(d, z)] = p
        read_s: dict = {k: [] for k in layouts}
        for r in range(args.rounds):
            idx = rng.integers(0, args.maps, args.reads)
            for k in (layouts if r % 2 == 0 else list(reversed(layouts))):
                read_s[k].append(read_random(paths[k], idx, k[0]))
        raw = maps[0].astype(np.float32).nbytes
        for d, z in layouts:
            with h5py.File(paths[(d, z)]) as f:
                storage = f["maps"].id.get_storage_size()
            file_bytes = paths[(d, z)].stat().st_size
            rate = args.reads * len(read_s[(d, z)]) / sum(read_s[(d, z)])
            err = errors(paths[(d, z)], maps, d)
            key = f"C{c}/{d}/{z}"
            figures["layouts"][key] = {
                "classes": c, "dtype": d, "compression": z, "bytes_per_map": round(file_bytes / args.maps),
                "storage_bytes_per_map": round(storage / args.maps), "float32_bytes_per_map": raw,
                "random_read_maps_per_s": round(rate, 1),
                "read_seconds_per_round": [round(x, 4) for x in read_s[(d, z)]],
                "write_maps_per_s": round(args.maps / write_s[(d, z)], 1),
                **{k: float(f"{v:.3g}") for k, v in err.items()},
            }
            rows.append({"C": c, "dtype": d, "compr": z, "bytes/map": round(file_bytes / args.maps),
                         "x float32": raw / (file_bytes / args.maps), "reads/s": rate,
                         "writes/s": args.maps / write_s[(d, z)], "max|err|": err["max_abs_error"],
                         "mean|err|": err["mean_abs_error"], "argmax ok": err["argmax_agreement"]})
    common.print_table(rows, title="\nteacher-cache layouts (64x64 maps, one map per chunk, fletcher32)")

    # The choice, from the numbers
    notes = []
    for c in args.classes:
        L = figures["layouts"]
        fl, fn, fg = L[f"C{c}/float16/lzf"], L[f"C{c}/float16/none"], L[f"C{c}/float16/gzip"]
        ul, ug = L[f"C{c}/uint8/lzf"], L[f"C{c}/uint8/gzip"]
        notes.append(
            f"C={c}: float16+lzf {fl['bytes_per_map']} B/map at {fl['random_read_maps_per_s']} reads/s "
            f"(none: {fn['bytes_per_map']} B, {fn['random_read_maps_per_s']}/s; gzip: {fg['bytes_per_map']} B, "
            f"{fg['random_read_maps_per_s']}/s); uint8+lzf {ul['bytes_per_map']} B at "
            f"{ul['random_read_maps_per_s']}/s, "
            f"uint8+gzip {ug['bytes_per_map']} B at {ug['random_read_maps_per_s']}/s, uint8 max error "
            f"{ul['max_abs_error']:.2g} vs float16 {fl['max_abs_error']:.2g}")
    L20 = figures["layouts"].get("C20/float16/lzf") and {k.split("/", 1)[1]: v for k, v in figures["layouts"].items()
                                                          if k.startswith("C20/")}
    Lc = L20 or {k.split("/", 1)[1]: v for k, v in figures["layouts"].items()
                 if k.startswith(f"C{args.classes[-1]}/")}
    fl, fn, fg, ul = Lc["float16/lzf"], Lc["float16/none"], Lc["float16/gzip"], Lc["uint8/lzf"]
    figures["default"] = {
        "chosen": "float16 + lzf (project default)",
        "lzf_vs_none": {"size_ratio": round(fl["bytes_per_map"] / fn["bytes_per_map"], 3),
                        "read_speed_ratio": round(fl["random_read_maps_per_s"] / fn["random_read_maps_per_s"], 3)},
        "gzip_vs_lzf": {"size_ratio": round(fg["bytes_per_map"] / fl["bytes_per_map"], 3),
                        "read_speed_ratio": round(fg["random_read_maps_per_s"] / fl["random_read_maps_per_s"], 3),
                        "write_speed_ratio": round(fg["write_maps_per_s"] / fl["write_maps_per_s"], 3)},
        "uint8_vs_float16_lzf": {"size_ratio": round(ul["bytes_per_map"] / fl["bytes_per_map"], 3),
                                 "max_abs_error": ul["max_abs_error"], "float16_max_abs_error": fl["max_abs_error"]},
        "loader_need": "one map read per pretraining sample: compare random_read_maps_per_s with the "
                       "loader's samples/s (bench/loader.py)",
    }
    n_k400 = 240_000 * 8
    figures["kinetics400_cache_GB"] = {k: round(v["bytes_per_map"] * n_k400 / 1e9, 1)
                                      for k, v in figures["layouts"].items() if v["classes"] == 20}
    for n in notes:
        print(" ", n)
    bench.write(figures, args.out, notes)


if __name__ == "__main__":
    main()
