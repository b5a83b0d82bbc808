"""Two process-wide CPU settings the CLI makes before torch loads; neither changes a single number.

1. **OpenMP's wait policy.** torch's CPU kernels run on GNU OpenMP (libgomp, shipped in the torch
   wheel). Between two parallel regions libgomp's idle threads spin, by default for 300 000
   iterations, before they sleep: whenever the training process is in Python (the optimizer's
   loop, the metrics, the next batch), and on a machine whose cores the DataLoader's workers share
   (a laptop, a 2-core CI box) that spin takes the cycles the workers need. ``OMP_WAIT_POLICY=PASSIVE``
   makes idle threads sleep at once. libgomp reads its environment once, when it loads, so this must
   happen before the first ``import torch`` of the process.
2. **glibc's malloc keeps freed memory.** A training step allocates and frees hundreds of MB of
   activations. By default glibc gives freed memory back to the system (a block above its mmap
   threshold, 128 kB and raised as blocks are freed, is unmapped; the heap's free top beyond twice
   that threshold is trimmed), and the next step faults the same pages in again: 30 000-60 000 page
   faults per demo step, in the training process, on its critical path. ``mallopt`` with an mmap
   threshold of 32 MiB (glibc's maximum) and a trim threshold of 1 GiB keeps them for the next step.

Measured on the demo's pretraining (``bench/cpu_tuning.py``, 2 cores, three interleaved pairs): wall
time 0.82-0.96 of the untuned process's, CPU time 0.75-0.81, page faults 0.47 M against 0.9-3.5 M; the
final losses of every run are equal with and without (docs/performance.md). DataLoader workers are
forked and inherit both; torchrun's processes run the CLI and make them again.

A user's own ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` (or ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``) wins for its part; ``PIPELINE_CPU_TUNING=0`` turns both off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import MutableMapping
from typing import Any

SWITCH = "PIPELINE_CPU_TUNING"
OPENMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
MALLOC_KEYS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
# mallopt(3) parameters and the values set
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1 << 30  # mallopt takes a C int: 4 GiB would wrap to 0 (trim everything) without an error


def tuning_enabled(environ: MutableMapping[str, str]) -> bool:
    """False when ``PIPELINE_CPU_TUNING`` is 0 / off / false / no."""
    return environ.get(SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def prefer_passive_wait(environ: MutableMapping[str, str]) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` unless the user set a wait policy or a spin count
    (or turned the tuning off); True when it did. No effect on a libgomp that is already loaded."""
    if not tuning_enabled(environ) or any(key in environ for key in OPENMP_KEYS):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def _glibc() -> Any | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None  # glibc has mallopt; musl and macOS do not
    except OSError:
        return None


def keep_freed_memory(environ: MutableMapping[str, str], libc: Any | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the workers it forks), unless the
    user set them or turned the tuning off, or the C library is not glibc; True when both were set."""
    if not tuning_enabled(environ) or any(key in environ for key in MALLOC_KEYS):
        return False
    libc = libc if libc is not None else _glibc()
    if libc is None:
        return False
    if hasattr(libc.mallopt, "argtypes"):
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_set = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(mmap_set and trim_set)


def tune_process(environ: MutableMapping[str, str]) -> dict[str, bool]:
    """Both settings; call before torch is imported. Which of them were made."""
    return {"openmp_passive": prefer_passive_wait(environ), "malloc_keep_freed": keep_freed_memory(environ)}


__all__ = ["tune_process", "prefer_passive_wait", "keep_freed_memory", "tuning_enabled", "SWITCH",
           "OPENMP_KEYS", "MALLOC_KEYS", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]
