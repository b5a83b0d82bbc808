"""OpenMP's wait policy: idle intra-op threads sleep instead of spinning (set before torch loads).

torch's CPU kernels run on GNU OpenMP (libgomp, shipped in the torch wheel). Between two parallel
regions libgomp's idle threads spin, by default for 300 000 iterations, before they sleep. In
training that spin runs whenever the main thread is in Python (the optimizer's loop, the metrics,
the next batch's collation), and on a machine whose cores the DataLoader's workers share with the
training process (a laptop, a 2-core CI box) it takes exactly the cycles the workers need.
With ``OMP_WAIT_POLICY=PASSIVE`` the idle threads sleep at once. Measured on the demo's pretraining
(``bench/openmp_wait.py``, 2 cores, three interleaved pairs): 9-15 % less CPU time for the same work,
wall time unchanged within this machine's noise (passive / spin 0.95-1.01), training rate +0-5 %; the
freed cycles are the user's. The same threads run the same kernels on the same data, so every
number is bit-identical (the bench checks the final losses).

libgomp reads its environment once, when it is loaded, so :func:`prefer_passive_wait` must run
before the first ``import torch`` of the process: ``pipeline/cli.py`` calls it before its own
imports (DataLoader workers and torchrun's processes inherit or re-run it). A user's own
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is left as it is.
"""
from __future__ import annotations

from collections.abc import MutableMapping

USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def prefer_passive_wait(environ: MutableMapping[str, str]) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` in ``environ`` unless the user set a wait policy or a spin
    count; True when it did. Has no effect on a libgomp that is already loaded."""
    if any(key in environ for key in USER_KEYS):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


__all__ = ["prefer_passive_wait", "USER_KEYS"]
