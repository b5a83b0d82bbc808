"""Shared benchmark helpers: machine description, JSON results, tables, interleaved timing, test data.

Every benchmark compares things measured in the SAME run, interleaved (A B B A …) so that a
shared, loaded machine slows every contender alike, and reports ratios next to absolute figures.
Results go to ``bench/results/<name>.json`` with the machine (CPU model, cores, load average at
start and end), library versions, the settings and the figures.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results"
SHARED = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
REFERENCE = SHARED.parent / "reference"
SCHP_KEY_LIST = REFERENCE / "schp_lip20_checkpoint_state_dict.txt"
# The real action-dataset clips (UCF101, HMDB51, Kinetics), in a fixed order. videos/other/ holds
# odd cases (1080p, VFR) that are not what an action dataset looks like, so they are left out.
REAL_CLIP_DIRS = ("ucf101", "hmdb51", "kinetics400")


# ------------------------------------------------------------------------------------------------
# Machine and versions
# ------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def versions() -> dict[str, str]:
    import cv2
    import h5py
    import numpy as np
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cv2": cv2.__version__,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "numpy": np.__version__}


def machine(load_start: list[float] | None) -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpu": gpu_name(),
            "load_avg_1_5_15_start": load_start, "load_avg_1_5_15_end": load_avg()}


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------

class Bench:
    """One benchmark run: records the load at start, writes the JSON and prints the table at the end."""

    def __init__(self, name: str, description: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.description = description
        self.settings = settings
        self.load_start = load_avg()
        self.t0 = time.perf_counter()
        print(f"[{name}] {description}", flush=True)
        print(f"[{name}] {cpu_model()}, {os.cpu_count()} CPUs, load {self.load_start}, "
              f"gpu {gpu_name() or 'none'}", flush=True)

    def write(self, figures: dict[str, Any], out: Path | None = None, notes: Sequence[str] = ()) -> Path:
        machine_end = machine(self.load_start)
        record: OrderedDict[str, Any] = OrderedDict(
            benchmark=self.name, description=self.description, machine=machine_end,
            versions=versions(), settings=self.settings, figures=figures, notes=list(notes),
            seconds_total=round(time.perf_counter() - self.t0, 2), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        path = out or RESULTS / f"{self.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
        print(f"[{self.name}] load at end {machine_end['load_avg_1_5_15_end']}; "
              f"{record['seconds_total']} s; wrote {path}", flush=True)
        return path


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, title: str = "") -> None:
    """A plain fixed-width table of ``rows`` (dicts); floats get 4 significant digits."""
    if not rows:
        return
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    if title:
        print(title)
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
    sys.stdout.flush()


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def timer(out: list[float]) -> Iterator[None]:
    """Append the wall time of the block (after a CUDA sync) to ``out``."""
    sync()
    t = time.perf_counter()
    try:
        yield
    finally:
        sync()
        out.append(time.perf_counter() - t)


def stats(xs: Sequence[float]) -> dict[str, float]:
    """median / min / mean / max / n of a list of seconds."""
    xs = list(xs)
    if not xs:
        return {"n": 0}
    return {"median": statistics.median(xs), "min": min(xs), "mean": statistics.fmean(xs), "max": max(xs),
            "n": len(xs)}


def abba(names: Sequence[str], rounds: int) -> list[str]:
    """Interleaved run order: A B C, C B A, A B C, … so drifts in machine load hit every contender alike."""
    order: list[str] = []
    for r in range(rounds):
        order += list(names) if r % 2 == 0 else list(reversed(names))
    return order


def interleave(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each callable ``warmup`` times (untimed), then ``rounds`` times in ABBA order; seconds per name."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for name in abba(list(fns), rounds):
        with timer(times[name]):
            fns[name]()
    return times


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


# ------------------------------------------------------------------------------------------------
# GPU utilisation (sampled while a benchmark runs)
# ------------------------------------------------------------------------------------------------

class GpuSampler:
    """Samples GPU utilisation (%) every ``interval`` s in a thread: torch.cuda.utilization() or nvidia-smi."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> float | None:
        import torch

        if self.source in (None, "torch"):
            try:
                v = float(torch.cuda.utilization())
                self.source = "torch.cuda.utilization"
                return v
            except Exception:  # noqa: BLE001 - needs pynvml; fall back to nvidia-smi
                self.source = "nvidia-smi"
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except Exception:  # noqa: BLE001
            self.source = "unavailable"
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            v = self._read()
            if v is None and self.source == "unavailable":
                return
            if v is not None:
                self.samples.append(v)

    def __enter__(self) -> "GpuSampler":
        import torch

        if torch.cuda.is_available():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {"mean_pct": round(statistics.fmean(self.samples), 1), "median_pct": statistics.median(self.samples),
                "samples": len(self.samples), "source": self.source}


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------

def work_dir(sub: str) -> Path:
    """A scratch folder reused across benchmark runs (generated data is deterministic)."""
    base = Path(os.environ.get("PIPELINE_BENCH_WORK", Path(tempfile.gettempdir()) / "pipeline-bench"))
    d = base / sub
    d.mkdir(parents=True, exist_ok=True)
    return d


def real_clips(limit: int | None = None) -> list[Path]:
    """The real UCF101 / HMDB51 / Kinetics clips of shared/data/videos (sorted), or [] when absent."""
    root = SHARED / "videos"
    if not root.is_dir():
        return []
    from data_manifests.video import VIDEO_EXTENSIONS

    out = [p for d in REAL_CLIP_DIRS for p in sorted((root / d).rglob("*"))
           if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS]
    return out[:limit] if limit else out


def manifest_of(paths: Sequence[Path], root: Path, out_dir: Path, dataset: str = "bench") -> Path:
    """Write a manifest over ``paths`` (relative to ``root``, probed by decoding) into ``out_dir``."""
    from data_manifests.manifest import Manifest, VideoEntry, write_manifest
    from data_manifests.video import probe_video

    entries = []
    for i, p in enumerate(paths):
        info = probe_video(p)
        rel = p.relative_to(root).as_posix()
        entries.append(VideoEntry(id=f"v{i:03d}_{p.stem}", path=rel, label=0, split="train", frames=info.frames,
                                  fps=info.fps, width=info.width, height=info.height))
    write_manifest(out_dir, Manifest(dataset, root, ["any"], entries), [])
    return out_dir


def synthetic_kinetics(videos_per_class: int, classes: int = 10, seed: int = 0, frames: int = 48,
                       size: int = 112) -> tuple[Path, Path]:
    """A synthetic Kinetics-layout dataset (generated once, then reused) and its manifest folder.

    Returns (videos root, manifest dir): ``videos_per_class × classes`` videos in split train.
    """
    from data_manifests.synthetic import DEFAULT_CLASSES, SyntheticSpec, generate_synthetic

    # The generator holds out max(1, round(n * val_fraction)) Kinetics videos per class for val
    # (one even at fraction 0), so ask for one more per class to get videos_per_class train videos.
    spec = SyntheticSpec(seed=seed, classes=tuple(DEFAULT_CLASSES[:classes]), kinetics_per_class=videos_per_class + 1,
                         kinetics_val_fraction=0.0, ucf_per_class=0, hmdb_per_class=0, frames=frames,
                         size=(size, size))
    d = work_dir(f"synthetic-train{videos_per_class}x{classes}-f{frames}-s{size}-seed{seed}")
    if not (d / "synthetic.json").is_file():
        t = time.perf_counter()
        generate_synthetic(d, spec, workers=os.cpu_count() or 1, progress=False)
        print(f"  generated {(videos_per_class + 1) * classes} synthetic videos in {time.perf_counter() - t:.1f} s "
              f"under {d}", flush=True)
    root = d / "kinetics" / "videos"
    man = d / "manifest"
    if not (man / "meta.json").is_file():
        from data_manifests.builders import build_manifest
        from data_manifests.manifest import write_manifest

        manifest, rejected = build_manifest("kinetics400", root, [d / "kinetics" / "annotations" / "train.csv"],
                                            workers=os.cpu_count() or 1, progress=False)
        write_manifest(man, manifest, rejected)
    return root, man


def sub_manifest(manifest_dir: Path, n: int, out_dir: Path) -> Path:
    """The first ``n`` entries of a manifest, written to ``out_dir`` (same root)."""
    from data_manifests.manifest import Manifest, load_manifest, write_manifest

    m = load_manifest(manifest_dir)
    if n > len(m.entries):
        raise ValueError(f"{manifest_dir}: asked for {n} videos, the manifest has {len(m.entries)}")
    write_manifest(out_dir, Manifest(m.dataset, m.root, m.classes, m.entries[:n]), [])
    return out_dir


# ------------------------------------------------------------------------------------------------
# A random-weight SCHP checkpoint in the released layout
# ------------------------------------------------------------------------------------------------

_KEY_RE = re.compile(r"(module\.\S+) \(([\d, ]*)\) float32$")


def schp_reference_shapes() -> dict[str, tuple[int, ...]]:
    """Keys (with ``module.``) and shapes of the released LIP checkpoint, from the reference key list."""
    if not SCHP_KEY_LIST.is_file():
        raise FileNotFoundError(f"SCHP reference key list not found at {SCHP_KEY_LIST}")
    shapes = {}
    for line in SCHP_KEY_LIST.read_text().splitlines():
        m = _KEY_RE.match(line)
        if m:
            shapes[m[1]] = tuple(int(s) for s in m[2].split(",") if s.strip())
    return shapes


def random_schp_checkpoint(path: Path, num_classes: int = 20, seed: int = 0) -> Path:
    """Random SCHP weights in the released layout (as tests/test_schp.py builds them): He-scaled
    convs, norms with ~30 % negative weights, residual-branch (bn3) norms scaled by 0.2 so deep
    activations stay finite. Written once per (classes, seed) and reused."""
    import torch

    if path.is_file():
        return path
    class_keys = ("decoder.conv4.weight", "decoder.conv4.bias", "fushion.3.weight", "fushion.3.bias")
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in schp_reference_shapes().items():
        if key[len("module."):] in class_keys:
            shape = (num_classes,) + shape[1:]
        n = shape[0]
        if len(shape) == 4:
            t = torch.randn(shape, generator=g) * (2.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
        elif key.endswith("running_var"):
            t = torch.rand(n, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            t = torch.randn(n, generator=g) * 0.1
        else:
            sign = torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0)
            t = sign * (torch.rand(n, generator=g) + 0.5) * (0.2 if key.endswith(".bn3.weight") else 1.0)
        state[key] = t
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save({"state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


def write_merged(out: Path, key: str, section: dict[str, Any], benchmark: str) -> None:
    """Put ``section`` under ``key`` of the results file ``out``, keeping the figures already there
    (bench/loader.py's synthetic run and its ``--real`` run share loader.json)."""
    record: dict[str, Any] = {}
    if out.is_file():
        try:
            record = json.loads(out.read_text())
        except json.JSONDecodeError:
            record = {}
    record.setdefault("benchmark", benchmark)
    record[key] = section
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    os.replace(tmp, out)
    print(f"[{benchmark}] wrote {out} (key {key})", flush=True)


# ------------------------------------------------------------------------------------------------
# Decode-only items (bench/loader.py and bench/loader_real.py: the decoding share of an item)
# ------------------------------------------------------------------------------------------------

from student.pretrain_data import PretrainClipDataset  # noqa: E402 - after the sys.path set-up above


class _Decoded(Exception):
    """Raised by DecodeOnlyDataset's reader right after decoding: the rest of the item is skipped."""


class DecodeOnlyDataset(PretrainClipDataset):
    """The real item's frames (chosen by the real item's own sampling code, so the two can never
    drift apart), decoded with the same one reader call, and nothing else."""

    def __getitem__(self, item):  # type: ignore[override]
        import torch

        reader, got = self.reader, []

        def decode_and_stop(path, indices):
            got.append(len(reader(path, indices)))
            raise _Decoded

        self.reader = decode_and_stop
        try:
            super().__getitem__(item)
        except _Decoded:
            pass
        finally:
            self.reader = reader
        return {"frames": torch.tensor(got[0])}
